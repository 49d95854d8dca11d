"""The scan report: what ``bdscreen scan --json`` prints and ``GET /v1/scans/{id}`` returns when done.

Accuracies and rates are fractions in [0, 1]. Attack success is the fraction of poisoned inputs
classified as their poisoned label; a GoodNet's detection rate is the fraction of poisoned inputs it
sends to its extra class N, its false-alarm rate the fraction of clean inputs it sends there.
"""

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from schemas.models import ModelSignature


class Verdict(StrEnum):
    """The answer to "does this model carry a backdoor?"."""

    #: The calibrated combination of the applicable detectors reached its threshold.
    backdoored = "backdoored"
    #: It stayed below its threshold.
    clean = "clean"
    #: No detector was applicable (or none was asked for): no claim either way.
    inconclusive = "inconclusive"


class Finding(BaseModel):
    """One detector's evidence; ``applicable`` is false (with the reason) when it could not judge this model."""

    detector: str
    applicable: bool
    score: float | None = Field(default=None, description="Probability-like score in [0, 1]; higher is worse.")
    threshold: float | None = Field(default=None, description="Score at or above which the model is flagged.")
    bank: str | None = Field(default=None, description="The litmus bank (or other reference) used.")
    reason: str = Field(description="What was found, or why the detector does not apply.")
    suspected_targets: list[int] = Field(default_factory=list, description="Classes a trigger seems to send to.")
    evidence: dict[str, Any] = Field(default_factory=dict, description="The figures behind the score.")
    diagnostics: dict[str, Any] = Field(default_factory=dict,
                                        description="How the detector ran: samples used, iterations, seconds.")
    artifacts: list[str] = Field(default_factory=list, description="Evidence files (pictures) among the artifacts.")


class StageError(BaseModel):
    """A detector or stage that crashed: an error of bdscreen or of the model, never a "not applicable"."""

    stage: str = Field(description="'detect:<detector>' or the stage's name.")
    message: str


class Artifact(BaseModel):
    name: str
    bytes: int
    sha256: str
    media_type: str = "application/octet-stream"


class Metrics(BaseModel):
    clean_accuracy: float | None = None
    attack_success_rate: float | None = Field(default=None, description="None when no poisoned data was given.")
    estimated_attack_success_rate: float | None = Field(
        default=None, description="An ESTIMATE made without poisoned data: the share of held-out clean inputs that "
                                  "the reversed trigger(s) send to their target. None when no trigger was found.")


class CurvePoint(Metrics):
    channels_pruned: int
    decision_accuracy: float = Field(description="Clean accuracy on the data that drove the decisions.")


class RepairedModel(Metrics):
    name: str = Field(default="", description="'drop2' (pruned at the 2-point threshold), 'unlearn', "
                                              "'adversarial', 'drop2+unlearn', ...: names the artifacts too.")
    method: str = Field(default="prune", description="prune, fine-prune, unlearn (reversed trigger), adversarial "
                                                     "(label-agnostic), or a pruned model unlearned.")
    threshold: float | None = Field(default=None, description="Accuracy drop in percentage points that this model "
                                                              "answers to; None for a repair without pruning.")
    reached: bool = Field(default=True, description="False when no pruning step dropped accuracy that far.")
    channels_pruned: int | None = None
    shares_repair_with: str | None = Field(default=None, description="Thresholds that prune the same channels share "
                                                                     "one repair: the model whose artifacts these are.")
    fine_tuned: bool = False
    fine_tune_epochs: int | None = None
    fine_tune_best_epoch: int | None = Field(default=None, description="The fine-tuned epoch kept (1-based).")
    fine_tune_heldout_accuracy: float | None = Field(
        default=None, description="Accuracy of the kept epoch on the part of the decision data held out of tuning.")
    learning_rate: float | None = Field(default=None, description="Peak learning rate, found for the model.")
    kept_epoch: int | None = Field(default=None, description="The fine-tuned epoch handed back.")
    rejected_epochs: list[int] = Field(default_factory=list,
                                       description="Epochs below the held-out accuracy floor (the guard).")
    failed_learning_rates: list[float] = Field(
        default_factory=list, description="Rates tried before learning_rate: no epoch of theirs passed the guard, so "
                                          "the next lower rate was tried.")
    decision_accuracy: float | None = Field(default=None, description="Clean accuracy on the validation part of the "
                                                                      "decision data: what the choice saw.")
    decision_estimated_attack_success_rate: float | None = Field(
        default=None, description="The estimate the choice saw, on the validation part of the decision data: the "
                                  "higher of the reversed triggers' success and the trigger searched for again on "
                                  "this repaired model.")
    fresh_search_estimated_attack_success_rate: float | None = Field(
        default=None, description="An ESTIMATE without poisoned data: the success on held-out clean inputs of the "
                                  "trigger searched for AGAIN on this repaired model (suspected targets, a mask no "
                                  "larger than a set multiple of the smallest reversed trigger's). "
                                  "estimated_attack_success_rate is the higher of this and the reversed triggers' own "
                                  "success.")
    unlearning_rounds: int | None = Field(
        default=None, description="Fine-tunings this repair took: 1, plus one per round that unlearned a trigger "
                                  "found again on the repaired model.")
    recommended: bool = False
    warning: str | None = Field(default=None, description="Why this repair failed and is not offered.")
    artifact: str | None = Field(default=None, description="Repaired model in the uploaded format.")
    onnx_artifact: str | None = None


class GoodNetResult(Metrics):
    name: str = Field(default="", description="The repaired model this GoodNet wraps.")
    threshold: float | None = None
    rule: str = Field(default="disagree", description="'disagree': class N where original and repaired disagree "
                                                      "(the seed's rule); 'targets': only where they disagree and "
                                                      "the original predicts a suspected target class.")
    targets: list[int] = Field(default_factory=list, description="Suspected target classes the 'targets' rule uses.")
    min_confidence: float | None = Field(
        default=None, description="The 'targets' rule counts a disagreement only where the original gives its answer "
                                  "at least this probability: the floor that keeps 99 % of the alarms on clean "
                                  "decision inputs stamped with the reversed triggers (no poisoned data).")
    detection_rate: float | None = None
    estimated_detection_rate: float | None = Field(
        default=None, description="An ESTIMATE without poisoned data: the share of held-out clean inputs stamped "
                                  "with a reversed trigger that the GoodNet sends to class N.")
    false_alarm_rate: float | None = None
    recommended: bool = False
    artifact: str | None = Field(default=None, description="ONNX file holding both networks; class N = poisoned.")


class TriggerSummary(BaseModel):
    """A reversed trigger the repair used (pictures of it are among the detector's artifacts)."""

    target: int
    source: int | None = None
    mask_l1: float = Field(description="Sum of the mask: how many pixels the trigger covers.")
    attack_success: float = Field(description="Its success on held-out clean inputs, as found.")
    found_by: str = Field(description="'detector' (the scan's detectors) or 'repair' (the repair's own search).")


class DataSplit(BaseModel):
    decision_samples: int = Field(description="Clean samples that drove ranking, thresholds and fine-tuning.")
    evaluation_samples: int = Field(description="Clean samples behind the reported clean accuracies.")
    evaluation_source: str = Field(description="'held-out' part of the clean data, or the separate 'eval-data'.")
    poisoned_samples: int = 0


class RepairReport(BaseModel):
    layer: str
    criterion: str
    order: list[int] = Field(description="Channels in pruning order.")
    split: DataSplit
    baseline: Metrics
    curve: list[CurvePoint]
    models: list[RepairedModel]
    triggers: list[TriggerSummary] = Field(default_factory=list)
    recommended: str | None = Field(default=None, description="Name of the recommended repair; None: none worked.")
    recommendation: str | None = Field(default=None, description="Which repair won and why, or why none did.")
    nothing_worked: bool = Field(default=False, description="True when no repair removed the backdoor within the "
                                                            "accuracy budget: use neither repair nor GoodNet.")
    warnings: list[str] = Field(default_factory=list, description="Steps that failed (e.g. fine-tuning rejected).")


class ScanReport(BaseModel):
    """Everything a scan found and made."""

    bdscreen_version: str
    model: ModelSignature
    verdict: Verdict
    score: float | None = Field(default=None, description="Calibrated probability that the model is backdoored, "
                                                          "from every applicable detector; None when inconclusive.")
    threshold: float | None = Field(default=None, description="Score at or above which the verdict is backdoored.")
    suspected_targets: list[int] = Field(default_factory=list,
                                         description="Classes a backdoor seems to send inputs to (when backdoored).")
    explanation: str = Field(default="", description="Why the verdict came out as it did, in words.")
    findings: list[Finding] = Field(default_factory=list)
    repair: RepairReport | None = None
    goodnets: list[GoodNetResult] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    errors: list[StageError] = Field(default_factory=list, description="Crashed detectors or stages; the scan exits 2.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage.")
    device: str = "cpu"


def verdict_of(findings: list[Finding]) -> tuple[Verdict, float | None]:
    """Backdoored if any applicable finding reaches its threshold; clean if all fall below; else inconclusive."""
    judged = [(f.score, f.threshold) for f in findings
              if f.applicable and f.score is not None and f.threshold is not None]
    if not judged:
        return Verdict.inconclusive, None
    score = max(s for s, _ in judged)
    if any(s >= t for s, t in judged):
        return Verdict.backdoored, score
    return Verdict.clean, score
