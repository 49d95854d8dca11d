"""Closed vocabulary of the ways an input can be rejected.

Each value is stable: it becomes the last part of the RFC 9457 ``type`` URI that the gateway
returns and the ``category`` the CLI prints, so clients may branch on it.
"""

from enum import StrEnum


class ErrorCategory(StrEnum):
    """Why an input was not accepted."""

    #: The file could execute code when loaded (pickle, Keras Lambda, custom ONNX op, ...).
    refused_model = "refused-model"
    #: The file is empty, truncated, of an unknown format or internally inconsistent.
    unreadable_model = "unreadable-model"
    #: The model reads, but uses a layer or operator bdscreen does not implement.
    unsupported_layer = "unsupported-layer"
    #: The model or data declares sizes past bdscreen's limits (checked before allocating).
    too_large = "too-large"
    #: The data file cannot be read or does not fit the model.
    bad_data = "bad-data"
    #: An option (preprocessing, layer name, threshold, ...) is invalid.
    bad_option = "bad-option"


class ScanFailure(StrEnum):
    """Why an accepted scan ended without a report, when its input was not the cause."""

    #: bdscreen itself failed (a bug): the message says where.
    internal = "internal"
    #: The scan ran past BDSCREEN_SCAN_TIME_LIMIT.
    time_limit = "time-limit"
    #: The scan was started BDSCREEN_MAX_ATTEMPTS times and never finished (its workers died).
    interrupted = "interrupted"


#: Every category a failed scan's error may carry.
FailureCategory = ErrorCategory | ScanFailure
