"""Two detectors on what a reversed trigger does inside the model (statistics in :mod:`.latent`).

Both run after a trigger-finding detector: they stamp the clean inputs with each trigger in ``context.triggers`` and
compare the penultimate representation with and without it. The l_inf activation bias (Cheng et al.) asks whether
the trigger concentrates that representation on a few units; the latent entropy (the vine-copula fingerprint) asks
whether it changes the representation's entropy. A trigger reversed from a clean model is an adversarial patch,
which moves the representation too, so each statistic only counts as evidence through the calibrated verdict.
"""

import math

import torch

from schemas.report import Finding
from worker.engine.detect.base import DetectionContext
from worker.engine.detect.latent import bias_shift, entropy_shift, last_dense, penultimate
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.detect.verdict import calibrated_score
from worker.engine.preprocess import model_input

MIN_CLEAN = 20  # the vine's 8 principal components need a few times as many samples
MAX_CLEAN = 300  # enough for the statistics; more only costs time


NO_TRIGGER = "it needs a reversed trigger, and no trigger-finding detector flagged one in this scan."


def _missing(context: DetectionContext) -> str | None:
    """What the model or the data lack. (Triggers are checked when detecting: the scan's pre-flight asks before
    any trigger detector has run, and clean data is the runner's check, through ``needs_clean_data``.)"""
    if context.clean is not None and len(context.clean) < MIN_CLEAN:
        return f"it needs at least {MIN_CLEAN} clean samples."
    try:
        last_dense(context.model)
    except LookupError as error:
        return str(error) + "."
    return None


def _representations(context: DetectionContext, trigger: ReversedTrigger) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate representations of the clean images and of the same images stamped with ``trigger``."""
    images = context.clean_images()[:MAX_CLEAN]
    layout = context.model.signature.input_layout

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return context.model(model_input(batch.to(context.device), context.preprocessing, layout))

    clean = penultimate(context.model, forward, torch.as_tensor(images))
    stamped = penultimate(context.model, forward, torch.as_tensor(trigger.stamp(images)))
    return clean, stamped


def _scored(name: str, key: str, value: float, fallback_scale: float) -> tuple[float, float | None]:
    """The detector's own calibrated probability for ``value`` when the calibration has one, else a squashed
    value with no threshold (then only the verdict weighs it)."""
    calibrated = calibrated_score(name, key, value)
    if calibrated is not None:
        return calibrated
    return 1.0 / (1.0 + math.exp(-value / fallback_scale)), None


class _OnReversedTriggers:
    """What the two statistics on reversed triggers share: clean data, a last dense layer, enough samples."""

    needs_clean_data = True

    def applicable(self, context: DetectionContext) -> str | None:
        return _missing(context)


class LinfBiasDetector(_OnReversedTriggers):
    name = "linf"

    def detect(self, context: DetectionContext) -> Finding:
        if not context.triggers:
            return Finding(detector=self.name, applicable=False, reason=NO_TRIGGER)
        shifts = []
        for trigger in context.triggers:
            clean, stamped = _representations(context, trigger)
            shifts.append((bias_shift(clean, stamped), trigger, len(clean)))
        shift, trigger, used = max(shifts, key=lambda item: item[0])
        score, threshold = _scored(self.name, "bias_shift", shift, 0.25)
        reason = (f"Stamping the reversed trigger for class {trigger.target} makes the penultimate layer's activation "
                  f"{math.exp(shift):.2f} times as concentrated (l_inf / l_2, Cheng et al.) as on clean inputs; "
                  "backdoor triggers concentrate it on the few units that carry them.")
        return Finding(detector=self.name, applicable=True, score=score, threshold=threshold, reason=reason,
                       suspected_targets=[trigger.target],
                       evidence={"bias_shift": shift, "bias_ratio": math.exp(shift), "trigger_target": trigger.target,
                                 "per_trigger": [{"target": t.target, "bias_shift": s} for s, t, _ in shifts]},
                       diagnostics={"samples_used": used, "triggers": len(shifts)})


class LatentEntropyDetector(_OnReversedTriggers):
    name = "latent"

    def detect(self, context: DetectionContext) -> Finding:
        if not context.triggers:
            return Finding(detector=self.name, applicable=False, reason=NO_TRIGGER)
        results = []
        for trigger in context.triggers:
            clean, stamped = _representations(context, trigger)
            results.append((*entropy_shift(clean, stamped, seed=context.seed), trigger, len(clean)))
        shift, clean_h, stamped_h, trigger, used = max(results, key=lambda item: abs(item[0]))
        # Uncalibrated, a drop counts as suspicious: with the zoo's own triggers, backdoored models' entropy fell
        # further than clean models' did (bench.detect --oracle-triggers), against the seed's "entropy rises".
        score, threshold = _scored(self.name, "entropy_shift", shift, -2.0)
        reason = (f"With the reversed trigger for class {trigger.target} stamped, the entropy of the penultimate "
                  f"representation (8 principal components, vine copula with kernel margins) goes from "
                  f"{clean_h:.2f} to {stamped_h:.2f} nats.")
        return Finding(detector=self.name, applicable=True, score=score, threshold=threshold, reason=reason,
                       suspected_targets=[trigger.target],
                       evidence={"entropy_shift": shift, "clean_entropy": clean_h, "stamped_entropy": stamped_h,
                                 "trigger_target": trigger.target,
                                 "per_trigger": [{"target": r[3].target, "entropy_shift": r[0]} for r in results]},
                       diagnostics={"samples_used": used, "triggers": len(results), "components": 8,
                                    "vine_families": "indep, gaussian, clayton, gumbel, frank; truncated at 3"})

