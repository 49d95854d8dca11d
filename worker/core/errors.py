"""Domain exceptions of the engine.

Every exception the engine raises on bad input is an :class:`InputError`: it carries a stable
:class:`~schemas.problems.ErrorCategory` and a message that says what was found and what to do next.
The CLI prints the message and exits 2; the gateway maps the category to a problem+json response.
Anything else escaping the engine is a bug.
"""

from schemas.problems import ErrorCategory

EXPORT_HINT = (
    "Export the model to ONNX instead (for example torch.onnx.export(model, example, 'model.onnx') "
    "or tf2onnx for Keras) and upload the .onnx file."
)


class InputError(Exception):
    """An input (model, data or option) that the engine refuses, with the reason."""

    category: ErrorCategory = ErrorCategory.unreadable_model

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RefusedModelError(InputError):
    """The file could run code when loaded; it was not loaded."""

    category = ErrorCategory.refused_model


class UnreadableModelError(InputError):
    """The file is empty, truncated, of an unknown format or inconsistent."""

    category = ErrorCategory.unreadable_model


class UnsupportedLayerError(InputError):
    """The model uses a layer or operator that has no canonical counterpart."""

    category = ErrorCategory.unsupported_layer


class TooLargeError(InputError):
    """Declared sizes exceed the limits; detected before any large allocation."""

    category = ErrorCategory.too_large


class DataError(InputError):
    """A data file that cannot be read or does not fit the model."""

    category = ErrorCategory.bad_data


class OptionError(InputError):
    """An invalid option."""

    category = ErrorCategory.bad_option


def refuse_inapplicable(not_applicable: dict[str, str], field: str = "--detectors") -> None:
    """Raise an OptionError naming each requested detector that cannot judge the model, if there is one.

    For detectors the user named (``field``): asked-for work that cannot run is refused, not dropped."""
    if not_applicable:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in not_applicable.items())
        raise OptionError(f"{field} names detectors that cannot judge this model ({reasons}). Leave them out, "
                          "or leave the detectors unset to get a not-applicable finding instead.")
