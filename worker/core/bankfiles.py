"""Litmus banks: learned patterns, their classifier, the task they fit and how they were made, in one HDF5 file.

A bank file holds three float datasets (``patterns`` M x H x W x C in raw pixels 0-255, ``weight`` 2 x M*K and
``bias`` 2 of the linear classifier on the patterns' concatenated softmax outputs) and scalar attributes;
provenance is a JSON string, whose ``architectures`` (the zoo's, see :mod:`worker.engine.architecture`) say which
models the bank was learned on. No pickles: a bank from a user folder is data, and loading one validates every
shape, type, range and name, refusing anything else (extra datasets, links, external storage, odd attributes).
"""

import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from worker.core.errors import DataError

BANK_FORMAT = "bdscreen-litmus-bank"
BANK_VERSION = 1
MAX_BANK_BYTES = 64 * 1024 * 1024
MAX_PATTERNS = 256
MAX_PATTERN_ELEMENTS = 4_000_000
MAX_CLASSES = 100_000
MAX_PROVENANCE_BYTES = 1_000_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_DATASETS = ("patterns", "weight", "bias")
_SCORES = ("threshold", "target_fpr", "validation_auc", "validation_fpr")
_ATTRIBUTES = frozenset({"format", "version", "name", "num_classes", "features", "test_auc", "provenance", *_SCORES})


class BankError(DataError):
    """A litmus bank file that bdscreen refuses to use."""


def features_name(temperature: float) -> str:
    """How a bank names its features: ``softmax`` at temperature 1, else ``softmax/T``."""
    return "softmax" if temperature == 1 else f"softmax/{temperature:g}"


def feature_temperature(features: str) -> float | None:
    """The softmax temperature a ``features`` name stands for; None where it names nothing bdscreen computes."""
    kind, _, temperature = features.partition("/")
    if kind != "softmax":
        return None
    try:
        value = float(temperature or 1)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


@dataclass
class LitmusBank:
    """M patterns, the classifier on their outputs, the decision threshold and what the bank is worth.

    ``threshold`` flags a model whose score (the classifier's probability of "backdoored") is at or above it; it
    was calibrated on validation models so that at most ``target_fpr`` of the clean ones reach it (measured:
    ``validation_fpr``). ``test_auc`` is measured on zoo models never used in training or calibration.
    """

    name: str
    patterns: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    num_classes: int
    threshold: float
    target_fpr: float
    validation_auc: float
    validation_fpr: float
    test_auc: float | None = None
    provenance: dict = field(default_factory=dict)
    features: str = "softmax"

    @property
    def temperature(self) -> float:
        """The softmax temperature its classifier reads the patterns' outputs at (checked on load and save)."""
        temperature = feature_temperature(self.features)
        assert temperature is not None, "checked on load and save"
        return temperature

    @property
    def logit_spread(self) -> float | None:
        """The spread (standard deviation) the bank's zoo models' logits on its patterns typically have, when recorded
        (``provenance['logit_spread']``): a model's logits are scaled to it before scoring, so that an architecture
        whose logits are smaller or larger by nature (tanh networks answer with small, bounded ones) is read on the
        zoo's scale rather than mistaken for an odd model. Checked on load and save."""
        spread = self.provenance.get("logit_spread")
        return None if spread is None else float(spread)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """H x W x C of the images the bank's patterns are."""
        height, width, channels = (int(d) for d in self.patterns.shape[1:])
        return height, width, channels

    def describe(self) -> str:
        height, width, channels = self.input_shape
        test = "n/a" if self.test_auc is None else f"{self.test_auc:.3f}"
        return (f"{self.name}: {height}x{width}x{channels} inputs, {self.num_classes} classes, "
                f"{len(self.patterns)} patterns, test AUC {test}, threshold {self.threshold:.3f} "
                f"(validation false positives {self.validation_fpr:.1%} for a target of {self.target_fpr:.0%})")


def save_bank(bank: LitmusBank, path: Path) -> None:
    """Write ``bank`` to ``path`` (validated first, so that what is written also loads)."""
    _check(bank, str(path))
    with h5py.File(path, "w") as file:
        file.create_dataset("patterns", data=bank.patterns.astype(np.float32), compression="gzip")
        file.create_dataset("weight", data=bank.weight.astype(np.float32))
        file.create_dataset("bias", data=bank.bias.astype(np.float32))
        file.attrs.update({"format": BANK_FORMAT, "version": BANK_VERSION, "name": bank.name,
                           "num_classes": bank.num_classes, "features": bank.features,
                           "test_auc": math.nan if bank.test_auc is None else bank.test_auc,
                           "provenance": json.dumps(bank.provenance, sort_keys=True)})
        file.attrs.update({key: float(getattr(bank, key)) for key in _SCORES})


def load_bank(path: Path) -> LitmusBank:
    """Read and validate a bank file; raises :class:`BankError` saying what is wrong."""
    where = path.name
    try:
        size = path.stat().st_size
    except OSError as error:
        raise BankError(f"litmus bank {where} cannot be read: {error.strerror or error}.") from error
    if size > MAX_BANK_BYTES:
        raise BankError(f"litmus bank {where} is {size:,} bytes, above the limit of {MAX_BANK_BYTES:,}.")
    try:
        with h5py.File(path, "r") as file:
            arrays = {name: _dataset(file, name, where) for name in _DATASETS}
            extra = sorted(set(file) - set(_DATASETS))
            attrs = dict(file.attrs)
    except OSError as error:
        raise BankError(f"litmus bank {where} is not a readable HDF5 file ({error}).") from error
    if extra:
        raise BankError(f"litmus bank {where} holds unexpected entries {extra}; a bank holds only {_DATASETS}.")
    bank = _from_attributes(attrs, arrays, where)
    _check(bank, where)
    return bank


def _dataset(file: h5py.File, name: str, where: str) -> np.ndarray:
    link = file.get(name, getlink=True)
    if link is None:
        raise BankError(f"litmus bank {where} has no '{name}' dataset.")
    dataset = file[name] if isinstance(link, h5py.HardLink) else None
    if not isinstance(dataset, h5py.Dataset) or dataset.external or dataset.is_virtual:
        raise BankError(f"in litmus bank {where}, '{name}' must be a dataset stored in the file itself.")
    if dataset.dtype.kind != "f" or dataset.ndim > 4 or math.prod(dataset.shape) > MAX_PATTERN_ELEMENTS:
        raise BankError(f"in litmus bank {where}, '{name}' is {dataset.dtype} {dataset.shape}; expected a float "
                        f"array of at most 4 dimensions and {MAX_PATTERN_ELEMENTS:,} values.")
    return np.asarray(dataset[()], dtype=np.float32)


def _from_attributes(attrs: dict, arrays: dict[str, np.ndarray], where: str) -> LitmusBank:
    odd = sorted(set(attrs) ^ _ATTRIBUTES)
    if odd:
        raise BankError(f"litmus bank {where} has missing or unexpected attributes {odd}.")
    if attrs["format"] != BANK_FORMAT or not _is_int(attrs["version"]) or attrs["version"] != BANK_VERSION:
        raise BankError(f"litmus bank {where} is not a version {BANK_VERSION} {BANK_FORMAT} file.")
    for key in ("name", "features", "provenance"):
        if not isinstance(attrs[key], str):
            raise BankError(f"in litmus bank {where}, attribute '{key}' must be a string.")
    if not _is_int(attrs["num_classes"]):
        raise BankError(f"in litmus bank {where}, num_classes must be an integer.")
    if len(attrs["provenance"]) > MAX_PROVENANCE_BYTES:
        raise BankError(f"in litmus bank {where}, the provenance is longer than {MAX_PROVENANCE_BYTES:,} bytes.")
    try:
        provenance = json.loads(attrs["provenance"])
        scores = {key: float(attrs[key]) for key in _SCORES}
        test_auc = float(attrs["test_auc"])
    except (ValueError, TypeError) as error:
        raise BankError(f"in litmus bank {where}, provenance or scores are malformed ({error}).") from error
    return LitmusBank(attrs["name"], arrays["patterns"], arrays["weight"], arrays["bias"], int(attrs["num_classes"]),
                      test_auc=None if math.isnan(test_auc) else test_auc, provenance=provenance,
                      features=attrs["features"], **scores)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check(bank: LitmusBank, where: str) -> None:
    """Refuse a bank whose parts do not fit together or lie outside their ranges."""
    problems = []
    if not isinstance(bank.name, str) or not _NAME.fullmatch(bank.name):
        problems.append("its name must be 1-100 letters, digits, '.', '_' or '-'")
    if not isinstance(bank.features, str) or feature_temperature(bank.features) is None:
        problems.append(f"features '{bank.features}' are not 'softmax' or 'softmax/T' with a temperature T > 0")
    if not isinstance(bank.provenance, dict):
        problems.append("its provenance must be a JSON object")
    else:  # each malformed field is named, not only the first
        if not _architectures_valid(bank.provenance.get("architectures", [])):
            problems.append("provenance 'architectures' must be a list of {'convolutional': true/false, "
                            "'activations': [names]}")
        if not _spread_valid(bank.provenance.get("logit_spread")):
            problems.append("provenance 'logit_spread' must be a finite number above 0")
    if not 2 <= bank.num_classes <= MAX_CLASSES:
        problems.append(f"num_classes {bank.num_classes} is outside [2, {MAX_CLASSES:,}]")
    patterns = bank.patterns
    if patterns.ndim != 4 or not 1 <= len(patterns) <= MAX_PATTERNS or min(patterns.shape[1:3], default=0) < 1 \
            or patterns.shape[3] not in (1, 3):
        problems.append(f"patterns have shape {patterns.shape}; expected M x H x W x C with 1 <= M <= "
                        f"{MAX_PATTERNS} and C 1 or 3")
    elif not np.isfinite(patterns).all() or patterns.min() < 0 or patterns.max() > 255:
        problems.append("patterns must be finite raw pixel values in [0, 255]")
    features = len(patterns) * bank.num_classes if patterns.ndim == 4 else -1
    if bank.weight.shape != (2, features) or bank.bias.shape != (2,):
        problems.append(f"the classifier has weight {bank.weight.shape} and bias {bank.bias.shape}; "
                        f"{len(patterns)} patterns x {bank.num_classes} classes need (2, {features}) and (2,)")
    elif not (np.isfinite(bank.weight).all() and np.isfinite(bank.bias).all()):
        problems.append("the classifier holds NaN or infinite values")
    scores = [bank.threshold, bank.target_fpr, bank.validation_auc, bank.validation_fpr]
    if bank.test_auc is not None:
        scores.append(bank.test_auc)
    if not all(isinstance(s, numbers.Real) and 0 <= s <= 1 for s in scores):
        problems.append("threshold, target false-positive rate and AUCs must lie in [0, 1]")
    if problems:
        raise BankError(f"litmus bank {where} is refused: {'; '.join(problems)}.")


def _spread_valid(spread: object) -> bool:
    return spread is None or (isinstance(spread, (int, float)) and not isinstance(spread, bool)
                              and math.isfinite(spread) and spread > 0)


def _architectures_valid(architectures: object) -> bool:
    """Whether a bank's recorded zoo architectures (see :mod:`worker.engine.architecture`) are well formed."""
    return isinstance(architectures, list) and all(
        isinstance(a, dict) and set(a) == {"convolutional", "activations"} and isinstance(a["convolutional"], bool)
        and isinstance(a["activations"], list) and all(isinstance(n, str) for n in a["activations"])
        for a in architectures)


# --- where banks are found: one rule for the gateway (listing) and the engine (scanning) ---

#: The banks shipped with bdscreen (plain data files, no Python).
SHIPPED_BANKS = Path(__file__).resolve().parent.parent / "banks"
BANK_SUFFIX = ".h5"


def bank_folders() -> list[Path]:
    """Folders searched for banks: the shipped one, then any named in ``$BDSCREEN_BANKS`` (``os.pathsep``-separated)."""
    extra = os.environ.get("BDSCREEN_BANKS", "")
    return [SHIPPED_BANKS, *(Path(folder) for folder in extra.split(os.pathsep) if folder)]


@dataclass
class BankListing:
    """Banks found, with their files, and the files refused with the reason."""

    banks: list[tuple[Path, LitmusBank]] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)


def find_banks(folders: list[Path] | None = None) -> BankListing:
    """Load every ``*.h5`` bank of ``folders`` (default :func:`bank_folders`); a bad file is refused, not fatal."""
    listing = BankListing()
    for folder in bank_folders() if folders is None else folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{BANK_SUFFIX}")):
            try:
                listing.banks.append((path, load_bank(path)))
            except BankError as error:
                listing.refused.append((path, error.message))
    return listing
