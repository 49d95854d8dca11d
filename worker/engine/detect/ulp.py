"""The ULP detector: choose the litmus bank that fits the model, run its patterns once, report a :class:`Finding`.

A bank fits when its patterns have the model's input size (H x W x C, whatever the model's layout) and its
classifier the model's number of classes. When none fits, the finding says so and why; it never guesses. Where the
bank records its zoo's architectures, the finding also says whether the model is like one of them
(:mod:`worker.engine.architecture`), and a bank learned on architectures like the model's is preferred. Banks are
found by :func:`worker.core.bankfiles.find_banks` (the same rule the gateway lists them by). Scanning imports no
training code: bank training lives in :mod:`worker.zoo.ulp_training`.
"""

import math

import numpy as np
import torch
from torch import Tensor, nn

from schemas.models import InputLayout, ModelSignature
from schemas.report import Finding
from worker.core.bankfiles import LitmusBank, find_banks
from worker.core.errors import OptionError
from worker.engine.architecture import architecture_of, unlike
from worker.engine.detect.base import DetectionContext
from worker.engine.preprocess import Preprocessing, image_shape_of, model_input


def litmus_logits(patterns: Tensor, module: nn.Module, layout: InputLayout, preprocessing: Preprocessing) -> Tensor:
    """``module``'s logits (M x K) on the raw-pixel ``patterns``, through the model's own preprocessing and layout."""
    return module(model_input(patterns, preprocessing, layout))


def litmus_features(patterns: Tensor, module: nn.Module, layout: InputLayout, preprocessing: Preprocessing,
                    temperature: float = 1.0, spread: float | None = None) -> Tensor:
    """The concatenated softmax outputs (M * K) at ``temperature`` of ``module`` (returning logits) on ``patterns``;
    with ``spread``, the logits are first scaled so that their standard deviation over all patterns and classes is
    ``spread`` (see :attr:`LitmusBank.logit_spread`)."""
    logits = litmus_logits(patterns, module, layout, preprocessing)
    if spread is not None:
        logits = logits * (spread / logits.std().clamp_min(1e-6))
    return torch.softmax(logits / temperature, dim=1).reshape(-1)


def bank_tensors(bank: LitmusBank, device: torch.device) -> tuple[Tensor, nn.Linear]:
    """The bank's patterns and its linear classifier as tensors on ``device``."""
    classifier = nn.Linear(bank.weight.shape[1], 2).to(device)
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(bank.weight))
        classifier.bias.copy_(torch.from_numpy(bank.bias))
    return torch.from_numpy(bank.patterns).to(device), classifier


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.logits(x)  # type: ignore[operator]


@torch.no_grad()
def ulp_score(bank: LitmusBank, model: nn.Module, preprocessing: Preprocessing) -> float:
    """The bank's probability that ``model`` (a canonical model) is backdoored: one forward pass of the M patterns."""
    signature: ModelSignature = model.signature  # type: ignore[assignment]
    why = misfit(bank, signature)
    if why is not None:
        raise OptionError(f"litmus bank {bank.name} does not fit the model: {why}.")
    device = next(model.parameters(), torch.empty(0)).device
    patterns, classifier = bank_tensors(bank, device)
    features = litmus_features(patterns, _Logits(model), signature.input_layout, preprocessing, bank.temperature,
                               bank.logit_spread)
    return float(torch.softmax(classifier(features[None]), 1)[0, 1])


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


def architecture_fit(bank: LitmusBank, architecture: dict) -> tuple[bool | None, str | None]:
    """Whether a model of ``architecture`` (:func:`~worker.engine.architecture.architecture_of`) is like one of the
    architectures ``bank``'s zoo records (None: the bank records none), and if not, why."""
    recorded = bank.provenance.get("architectures")
    if not recorded:
        return None, None
    why = unlike(architecture, recorded)
    return why is None, why


#: How a bank's architecture fit ranks when several banks fit a model: like it, then not recorded, then unlike it.
_FIT_RANK = {True: 2, None: 1, False: 0}


class UlpDetector:
    """Universal Litmus Patterns with the best fitting bank; needs no data."""

    name = "ulp"
    needs_clean_data = False

    def __init__(self, banks: list[LitmusBank] | None = None) -> None:
        self._banks = banks

    def _listing(self) -> tuple[list[LitmusBank], list[str]]:
        if self._banks is not None:
            return self._banks, []
        listing = find_banks()
        return [bank for _, bank in listing.banks], [f"{path.name}: {why}" for path, why in listing.refused]

    def applicable(self, context: DetectionContext) -> str | None:
        banks, refused = self._listing()
        if any(misfit(bank, context.model.signature) is None for bank in banks):
            return None
        return _no_bank_reason(context.model.signature, banks, refused)

    def detect(self, context: DetectionContext) -> Finding:
        banks, _ = self._listing()
        architecture = architecture_of(context.model)
        fits = [(bank, *architecture_fit(bank, architecture)) for bank in banks
                if misfit(bank, context.model.signature) is None]
        # Several may fit (a shipped and a user bank): the one most like the model, then the one measured best on its
        # held-out test models, wins.
        bank, like_zoo, unlike_zoo = max(fits, key=lambda fit: (_FIT_RANK[fit[1]], fit[0].test_auc or 0.0,
                                                                fit[0].validation_auc, fit[0].name))
        score = ulp_score(bank, context.model, context.preprocessing)
        flagged = score >= bank.threshold
        families = ", ".join(bank.provenance.get("zoo", {}).get("families", [])) or "unrecorded"
        test = "not measured" if bank.test_auc is None else f"{bank.test_auc:.3f}"
        reason = (f"ULP score {score:.3f} is {'at or above' if flagged else 'below'} the bank's threshold "
                  f"{bank.threshold:.3f}: on its {len(bank.patterns)} litmus patterns the model responds like the "
                  f"{'backdoored' if flagged else 'clean'} models of bank {bank.name}'s zoo (test AUC {test}, "
                  f"architecture families {families}). ")
        if unlike_zoo is None:
            reason += "ULP is reliable only for architectures like its zoo's. "
        else:
            # Said, not acted on: run as a gate (ULP not applicable to such models) it lost as much as it won on fresh
            # zoos, where ULP still ranked such models well but scored clean tanh LeNets up to 0.96.
            reason += (f"This model's architecture is unlike the zoo's: {unlike_zoo}. The score is less reliable "
                       "here: litmus patterns are learned for the architectures of their zoo. ")
        reason += ("For another architecture, train a bank with `bdscreen banks train --families own --model "
                   "MODEL`.")
        return Finding(detector=self.name, applicable=True, score=score, threshold=bank.threshold, bank=bank.name,
                       reason=reason, evidence={"bank_test_auc": bank.test_auc, "patterns": len(bank.patterns),
                                                # the score on the log-odds scale, for the calibrated verdict
                                                "log_odds": math.log(max(score, 1e-9) / max(1 - score, 1e-9)),
                                                # None: the bank records no architectures
                                                "architecture_like_zoo": like_zoo})


def _no_bank_reason(signature: ModelSignature, banks: list[LitmusBank], refused: list[str]) -> str:
    shape = image_shape_of(signature.input_shape, signature.input_layout)
    wanted = f"{_shape(shape)} inputs with {signature.num_classes} classes"
    if banks:
        available = "; ".join(f"{b.name} ({_shape(b.input_shape)}, {b.num_classes} classes)" for b in banks)
        reason = f"No litmus bank fits this model ({wanted}); available banks: {available}."
    else:
        reason = f"No litmus bank fits this model ({wanted}); no banks were found."
    if refused:
        reason += f" Refused bank files: {'; '.join(refused)}."
    return reason + (" Train one for this task with `bdscreen banks train` and put it in a folder named by "
                     "BDSCREEN_BANKS.")


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def detect_ulp(model: nn.Module, preprocessing: Preprocessing, banks: list[LitmusBank] | None = None) -> Finding:
    """The ULP finding for ``model`` alone (no data, no evidence files): for benches and tests."""
    from pathlib import Path

    context = DetectionContext(model=model, preprocessing=preprocessing, clean=None,  # type: ignore[arg-type]
                               device=next(model.parameters()).device, out_dir=Path("."))
    detector = UlpDetector(banks)
    why_not = detector.applicable(context)
    return detector.detect(context) if why_not is None else Finding(detector="ulp", applicable=False, reason=why_not)
