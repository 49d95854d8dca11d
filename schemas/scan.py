"""Options of a scan: the same for ``bdscreen scan --local``, the CI client and ``POST /v1/scans``."""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


class DetectorName(StrEnum):
    """The detectors a scan can run, in the order it runs them (see the README's Detection section)."""

    #: Trigger reverse-engineering (Neural Cleanse's objective, batched, pre-screened); needs clean data.
    reverse = "reverse"
    #: MM-BD's maximum achievable margin per class: data-free.
    mmbd = "mmbd"
    #: Integrated Gradients maps of the reversed trigger (evidence only; runs after reverse).
    ig = "ig"
    #: Cheng et al.'s l_inf activation bias with a reversed trigger stamped (needs clean data and a trigger).
    linf = "linf"
    #: The latent-entropy fingerprint: a vine copula on the penultimate layer, clean vs stamped.
    latent = "latent"
    #: Universal Litmus Patterns, where a litmus bank fits the task.
    ulp = "ulp"


class PruneCriterion(StrEnum):
    """How channels are ranked for pruning (see worker.engine.repair.ranking for the precise definitions)."""

    mean = "mean"
    linf = "linf"
    random = "random"


class RepairMethod(StrEnum):
    """Which repairs to build (see worker.engine.repair.pipeline); ``auto`` builds several and picks on clean data."""

    auto = "auto"
    prune = "prune"
    unlearn = "unlearn"
    adversarial = "adversarial"


class GoodNetRule(StrEnum):
    """When the GoodNet answers class N ("poisoned")."""

    targets = "targets"
    disagree = "disagree"


class StrictOptions(BaseModel):
    """An unknown key is an error, never silently ignored: a typo such as ``preprocesing`` must not run a scan
    with default scaling."""

    model_config = ConfigDict(extra="forbid")


class PreprocessingOptions(StrictOptions):
    """The model's own input scaling, declared by the user: x -> (x / divide_by - mean) / std."""

    divide_by: float = Field(default=1.0, gt=0)
    mean: list[float] = Field(default_factory=lambda: [0.0], min_length=1)
    std: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    bgr: bool = Field(default=False, description="Reverse the channel order (RGB data, BGR model).")

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: list[float]) -> list[float]:
        if any(s <= 0 for s in value):
            raise ValueError("every std must be positive")
        return value


class RepairOptions(StrictOptions):
    enabled: bool = True
    layer: str | None = Field(default=None, description="Conv layer to prune; default: see the README.")
    criterion: PruneCriterion = PruneCriterion.mean
    thresholds: list[float] = Field(default_factory=lambda: [2.0, 4.0, 10.0], min_length=1,
                                    description="Clean-accuracy drops, in percentage points.")
    method: RepairMethod = Field(default=RepairMethod.auto,
                                 description="auto: unlearning the reversed triggers and pruning + unlearning are "
                                             "tried (adversarial unlearning instead when no trigger was reversed) "
                                             "and the best on clean decision data wins; "
                                             "prune: the seed's pruning alone (with fine_tune: fine-pruning).")
    fine_tune: bool = Field(default=False, description="Also fine-tune every pruned model (fine-pruning; with a "
                                                       "reversed trigger, trigger unlearning too).")
    fine_tune_epochs: int = Field(default=10, ge=1, le=500)
    fine_tune_learning_rate: float | None = Field(default=None, gt=0, le=1,
                                                  description="Peak Adam learning rate, annealed to 0 (cosine); "
                                                              "default: found for the model by short trials.")
    max_accuracy_drop: float = Field(default=1.0, ge=0, le=100,
                                     description="Clean-accuracy budget, in points, a recommended repair may lose.")
    goodnet_rule: GoodNetRule = GoodNetRule.targets
    holdout_fraction: float = Field(default=0.3, gt=0, lt=1,
                                    description="Part of the clean data kept for the reported figures "
                                                "when no separate eval data is given.")
    max_false_alarm: float = Field(default=0.02, ge=0, le=1,
                                   description="False-alarm budget for recommending a GoodNet.")
    seed: int = 0

    @field_validator("thresholds")
    @classmethod
    def _thresholds_valid(cls, value: list[float]) -> list[float]:
        if any(not 0 < t <= 100 for t in value):
            raise ValueError("thresholds are accuracy drops in percentage points, in (0, 100]")
        return sorted(set(value))


class ScanOptions(StrictOptions):
    preprocessing: PreprocessingOptions = Field(default_factory=PreprocessingOptions)
    detectors: list[DetectorName] = Field(default_factory=lambda: list(DetectorName),
                                          description="Detectors to run (default: all; each runs where it applies).")
    repair: RepairOptions = Field(default_factory=RepairOptions)
    goodnet: bool = True
    batch_size: int = Field(default=512, ge=1, le=65536)
