"""The ULP detector: choose the litmus bank that fits the model, run its patterns once, report a :class:`Finding`.

A bank fits when its patterns have the model's input size (H x W x C, whatever the model's layout) and its
classifier the model's number of classes. When none fits, the finding says so and why; it never guesses.
Banks come from the shipped folder next to this module and from the folders in ``$BDSCREEN_BANKS``
(separated by ``os.pathsep``).
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from schemas.models import InputLayout, ModelSignature
from schemas.report import Finding
from worker.canonical import CanonicalModel
from worker.data import Preprocessing
from worker.detect.bank import BankError, LitmusBank, load_bank
from worker.detect.inputs import image_shape_of
from worker.detect.ulp import ulp_score

DETECTOR = "ulp"
SHIPPED_BANKS = Path(__file__).resolve().parent / "banks"
BANK_SUFFIX = ".h5"


def banks_dir() -> list[Path]:
    """Folders searched for banks: the shipped one, then any named in ``$BDSCREEN_BANKS``."""
    extra = os.environ.get("BDSCREEN_BANKS", "")
    return [SHIPPED_BANKS, *(Path(folder) for folder in extra.split(os.pathsep) if folder)]


@dataclass
class BankListing:
    """Banks found, with their files, and the files refused with the reason."""

    banks: list[tuple[Path, LitmusBank]] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)


def find_banks(folders: list[Path] | None = None) -> BankListing:
    """Load every ``*.h5`` bank of ``folders`` (default :func:`banks_dir`); a bad file is refused, not fatal."""
    listing = BankListing()
    for folder in banks_dir() if folders is None else folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{BANK_SUFFIX}")):
            try:
                listing.banks.append((path, load_bank(path)))
            except BankError as error:
                listing.refused.append((path, error.message))
    return listing


def misfit(bank: LitmusBank, signature: ModelSignature) -> str | None:
    """Why ``bank`` does not fit a model with ``signature``, or None when it does."""
    shape = image_shape_of(signature.input_shape, signature.input_layout)
    flat_fit = (signature.input_layout == InputLayout.flat and bank.input_shape[2] == 1
                and shape == (int(np.prod(bank.input_shape)),))
    if shape != bank.input_shape and not flat_fit:
        return f"it is for {_shape(bank.input_shape)} inputs"
    if signature.num_classes != bank.num_classes:
        return f"it is for {bank.num_classes} classes"
    return None


def detect_ulp(model: CanonicalModel, preprocessing: Preprocessing,
               banks: list[LitmusBank] | None = None) -> Finding:
    """Score ``model`` with the best fitting bank (default: all banks found); not applicable when none fits."""
    refused: list[tuple[Path, str]] = []
    if banks is None:
        listing = find_banks()
        banks, refused = [bank for _, bank in listing.banks], listing.refused
    signature = model.signature
    fitting = [bank for bank in banks if misfit(bank, signature) is None]
    if not fitting:
        return Finding(detector=DETECTOR, applicable=False, reason=_no_bank_reason(signature, banks, refused))
    # Several may fit (a shipped and a user bank): the one measured best on its held-out test models wins.
    bank = max(fitting, key=lambda b: (b.test_auc or 0.0, b.validation_auc, b.name))
    score = ulp_score(bank, model, preprocessing)
    flagged = score >= bank.threshold
    families = ", ".join(bank.provenance.get("zoo", {}).get("families", [])) or "unrecorded"
    test = "not measured" if bank.test_auc is None else f"{bank.test_auc:.3f}"
    reason = (f"ULP score {score:.3f} is {'at or above' if flagged else 'below'} the bank's threshold "
              f"{bank.threshold:.3f}: on its {len(bank.patterns)} litmus patterns the model responds like the "
              f"{'backdoored' if flagged else 'clean'} models of bank {bank.name}'s zoo (test AUC {test}, "
              f"architecture families {families}). ULP is reliable only for architectures like its zoo's; for "
              f"another architecture, train a bank with `bdscreen banks train --families own --model MODEL`.")
    return Finding(detector=DETECTOR, applicable=True, score=score, threshold=bank.threshold, bank=bank.name,
                   reason=reason)


def _no_bank_reason(signature: ModelSignature, banks: list[LitmusBank], refused: list[tuple[Path, str]]) -> str:
    shape = image_shape_of(signature.input_shape, signature.input_layout)
    wanted = f"{_shape(shape)} inputs with {signature.num_classes} classes"
    if banks:
        available = "; ".join(f"{b.name} ({_shape(b.input_shape)}, {b.num_classes} classes)" for b in banks)
        reason = f"No litmus bank fits this model ({wanted}); available banks: {available}."
    else:
        reason = f"No litmus bank fits this model ({wanted}); no banks were found."
    if refused:
        reason += f" Refused bank files: {'; '.join(f'{path.name}: {why}' for path, why in refused)}."
    return reason + (" Train one for this task with `bdscreen banks train` and put it in a folder named by "
                     "BDSCREEN_BANKS.")


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)
