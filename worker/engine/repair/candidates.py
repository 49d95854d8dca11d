"""The repairs a scan builds and scores, before one is chosen (:mod:`worker.engine.repair.choose`).

- ``drop{X}``: the channels pruned at the X-point threshold (the seed's repair); with ``fine_tune`` also
  fine-tuned (fine-pruning; with a reversed trigger, trigger unlearning as well). Thresholds that prune the same
  channels share one repair.
- ``unlearn``: the whole model fine-tuned with the reversed triggers stamped on a share of clean inputs kept at
  their true labels (Neural Cleanse's unlearning). Needs a reversed trigger.
- ``adversarial``: label-agnostic unlearning of a universal perturbation (after I-BAU); no trigger needed. By
  default only when there is no reversed trigger.
- ``drop{X}-unlearn``: pruned at the first threshold reached, then unlearned: pruning where it helps.
- ``unlearn-smallest``: with several reversed triggers, unlearning only the one with the smallest mask (the likeliest
  backdoor), which ``unlearn`` gives a share of each batch and of the moving trigger's turns to every suspect: where
  the others are clean classes that dilutes the real one's unlearning (held-out seed-4 cnn1-bn sparse BadNet: the
  repair reached 0.39 % attack success when given the smallest trigger alone, 4.05 % beside a clean runner-up; this
  candidate itself kept 2.2 % there, its extra rounds unlearning fresh triggers towards both). Its search after repair
  and its estimate still cover every suspect, so the choice rule sees what it left of the others.

Every fine-tuning runs under the guard of :func:`~worker.engine.repair.unlearn.guarded_fine_tune`; the floor is the
starting model's held-out accuracy, or the original's minus the accuracy budget when nothing was pruned. A failed
fine-tuning yields a candidate with a warning and no model: it is reported, never offered. With a reversed
trigger, every candidate is then searched again for a trigger (:func:`recheck`), and unlearning candidates unlearn
what that search finds for a few more rounds.
"""

from dataclasses import dataclass, field

from schemas.scan import RepairMethod, RepairOptions
from worker.engine.canonical import CanonicalModel
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.preprocess import Preprocessing
from worker.engine.repair.choose import Candidate
from worker.engine.repair.layers import pruned_copy
from worker.engine.repair.raw import RawSet, clean_accuracy, trigger_success
from worker.engine.repair.recheck import search_within_budget
from worker.engine.repair.sweep import SweepResult
from worker.engine.repair.unlearn import TuneSettings, guarded_fine_tune

#: L2 radius of the adversarial perturbation, as a fraction of the largest possible image difference. 0.15 cost
#: MNIST models 3-4 points of clean accuracy; 0.08 is still several times a 4x4 patch trigger's norm.
ADVERSARIAL_RADIUS = 0.08
#: Re-unlearning rounds after the first, while the fresh search finds a trigger sending more than RESIDUAL of the
#: validation inputs to a suspected target; each round is shorter than the first (it starts from a repaired model).
RECHECK_ROUNDS = 3
RECHECK_EPOCHS = 5
#: Half the 1 % goal: the fresh search sees less of a residue than the real trigger does (chosen on the development
#: set: 1 % met the repair goal on 9/10 with 7/10 GoodNets on working inputs, 0.5 % on 9/10 with 8/10).
RESIDUAL = 0.005


@dataclass
class Built(Candidate):
    """A candidate with what the report needs besides the choice's figures."""

    threshold: float | None = None
    channels_pruned: int | None = None
    pruned: list[int] = field(default_factory=list)
    shares_repair_with: str | None = None
    fine_tuned: bool = False
    learning_rate: float | None = None
    failed_learning_rates: list[float] = field(default_factory=list)
    epochs: int | None = None
    kept_epoch: int | None = None
    rejected_epochs: list[int] = field(default_factory=list)
    floor: float | None = None  # the guard's floor of its first fine-tuning, kept by every later round
    fresh: list[ReversedTrigger] = field(default_factory=list)  # searched again on the repaired model
    rounds: int = 0  # fine-tunings: 1, plus one per round that unlearned a freshly found trigger


@dataclass
class RepairData:
    """The decision data, split into the part fine-tuning trains on and the part every choice is scored on."""

    train: RawSet
    validation: RawSet
    preprocessing: Preprocessing
    original: CanonicalModel | None = None  # the upload: fine-tuning keeps its answers on clean inputs
    batch_size: int = 64  # fine-tuning batch within the memory budget


def build_candidates(model: CanonicalModel, layer: str, sweep: SweepResult, data: RepairData,
                     triggers: list[ReversedTrigger], opts: RepairOptions, stage) -> list[Built]:
    """Every repair the options ask for, scored on ``data.validation``. ``stage(name)`` times each."""
    original_accuracy = clean_accuracy(model, data.validation, data.preprocessing)
    built: list[Built] = []
    by_channels: dict[int, Built] = {}
    for threshold in opts.thresholds:
        k = sweep.first_drop("decision", threshold)
        name = f"drop{threshold:g}"
        if k is None:
            built.append(Built(name, "prune", None, False, threshold=threshold,
                               warning=f"no pruning step dropped decision accuracy by {threshold:g} points"))
            continue
        if k in by_channels:  # the same channels: one repair, reported under both thresholds
            first = by_channels[k]
            built.append(Built(name, first.method, first.model, first.label_agnostic, threshold=threshold,
                               channels_pruned=k, pruned=first.pruned, shares_repair_with=first.name,
                               warning=first.warning, fine_tuned=first.fine_tuned, epochs=first.epochs,
                               learning_rate=first.learning_rate, kept_epoch=first.kept_epoch, fresh=first.fresh,
                               failed_learning_rates=first.failed_learning_rates,
                               rounds=first.rounds))
            continue
        with stage(name):
            candidate = Built(name, "prune", pruned_copy(model, layer, sweep.order[:k]), True, threshold=threshold,
                              channels_pruned=k, pruned=list(sweep.order[:k]))
            if opts.fine_tune:
                candidate.method = "prune+unlearn" if triggers else "fine-prune"
                _tune(candidate, candidate.model, data, triggers, opts, layer, None)
            recheck(candidate, data, triggers, opts, layer)
        by_channels[k] = candidate
        built.append(candidate)
    budget_floor = original_accuracy - opts.max_accuracy_drop / 100
    if opts.method in (RepairMethod.auto, RepairMethod.unlearn) and triggers:
        with stage("unlearn"):
            candidate = Built("unlearn", "unlearn", None, False)
            _tune(candidate, model, data, triggers, opts, None, budget_floor)
            recheck(candidate, data, triggers, opts, layer)
            built.append(candidate)
        if len(triggers) > 1:
            smallest = [min(triggers, key=lambda t: float(t.mask.sum()))]
            with stage("unlearn-smallest"):
                candidate = Built("unlearn-smallest", "unlearn", None, False)
                _tune(candidate, model, data, smallest, opts, None, budget_floor)
                recheck(candidate, data, triggers, opts, layer, unlearned=smallest)
                built.append(candidate)
    if opts.method == RepairMethod.auto and triggers and not opts.fine_tune:
        first = next((b for b in built if b.channels_pruned and not b.shares_repair_with), None)
        if first is not None:
            with stage("prune+unlearn"):
                candidate = Built(f"{first.name}-unlearn", "prune+unlearn", None, False, threshold=first.threshold,
                                  channels_pruned=first.channels_pruned, pruned=first.pruned)
                _tune(candidate, first.model, data, triggers, opts, layer, None)
                recheck(candidate, data, triggers, opts, layer)
                built.append(candidate)
    # The label-agnostic repair costs about three times as much: by default it runs only without a reversed trigger.
    if opts.method == RepairMethod.adversarial or (opts.method == RepairMethod.auto and not triggers):
        with stage("adversarial"):
            candidate = Built("adversarial", "adversarial", None, True)
            _tune(candidate, model, data, [], opts, None, budget_floor, ADVERSARIAL_RADIUS)
            built.append(candidate)
    for candidate in built:
        if candidate.model is None:
            continue
        candidate.decision_accuracy = clean_accuracy(candidate.model, data.validation, data.preprocessing)
        # The honest estimate: the reversed triggers and those found again on this very model.
        candidate.estimated_attack_success = trigger_success(candidate.model, data.validation,
                                                             data.preprocessing, triggers + candidate.fresh)
    return built


def retry_notes(built: list[Built]) -> list[str]:
    """The report's word on every candidate kept at a lower learning rate after the found one failed the guard."""
    return [f"{b.name}: fine-tuning failed the guard at learning rate "
            f"{', '.join(f'{r:g}' for r in b.failed_learning_rates)}; the run at {b.learning_rate:g} is kept"
            for b in built if b.failed_learning_rates and b.model is not None and not b.shares_repair_with]


def recheck(candidate: Built, data: RepairData, triggers: list[ReversedTrigger], opts: RepairOptions,
            layer: str, unlearned: list[ReversedTrigger] | None = None) -> None:
    """Search the repaired model for a trigger again, towards every suspect in ``triggers``; while an unlearned model
    still has one that works, unlearn the fresh triggers together with those it unlearned (``unlearned``, by default
    all of ``triggers``), at most ``RECHECK_ROUNDS`` more times. A round's model is kept when it passes
    the guard and lowers the honest estimate (old triggers and its own fresh search, on validation data).
    ``candidate.fresh`` is always the search on the model handed back, so the estimate is about that model.
    Nothing to do without a reversed trigger (no suspected target) or without a model (a failed fine-tuning)."""
    if not triggers or candidate.model is None:
        return
    def search(model: CanonicalModel) -> list[ReversedTrigger]:
        return search_within_budget(model, data.preprocessing, data.train, data.validation, triggers,
                                    seed=opts.seed + candidate.rounds)

    def estimate(model: CanonicalModel, fresh: list[ReversedTrigger]) -> float:
        return trigger_success(model, data.validation, data.preprocessing, triggers + fresh) or 0.0

    candidate.fresh = search(candidate.model)
    current = estimate(candidate.model, candidate.fresh)
    for _ in range(RECHECK_ROUNDS if "unlearn" in candidate.method else 0):
        if max((t.attack_success for t in candidate.fresh), default=0.0) <= RESIDUAL:
            break
        again = Built(candidate.name, candidate.method, None, False, pruned=candidate.pruned)
        _tune(again, candidate.model, data, (triggers if unlearned is None else unlearned) + candidate.fresh, opts,
              layer if candidate.pruned else None,
              candidate.floor, epochs=RECHECK_EPOCHS, learning_rate=candidate.learning_rate)
        if again.model is None:  # the guard rejected every epoch
            break
        fresh = search(again.model)
        lowered = estimate(again.model, fresh)
        if lowered >= current:
            break
        candidate.model, candidate.fresh, candidate.rounds, current = again.model, fresh, candidate.rounds + 1, lowered


def _tune(candidate: Built, start: CanonicalModel, data: RepairData, triggers: list[ReversedTrigger],
          opts: RepairOptions, layer: str | None, floor: float | None, radius: float | None = None,
          epochs: int | None = None, learning_rate: float | None = None) -> None:
    """Fine-tune ``start`` into ``candidate`` under the guard; on failure the candidate keeps only a warning."""
    start_accuracy = clean_accuracy(start, data.validation, data.preprocessing)
    floor = start_accuracy if floor is None else min(floor, start_accuracy)
    candidate.floor = floor

    def score(model: CanonicalModel) -> tuple[float, tuple]:
        accuracy = clean_accuracy(model, data.validation, data.preprocessing)
        estimate = trigger_success(model, data.validation, data.preprocessing, triggers) or 0.0
        return accuracy, (round(estimate * 100), -accuracy)

    settings = TuneSettings(epochs=epochs or opts.fine_tune_epochs,
                            learning_rate=learning_rate or opts.fine_tune_learning_rate,
                            batch_size=data.batch_size,
                            adversarial_radius=radius, trigger_share=0.0 if radius else TuneSettings.trigger_share,
                            seed=opts.seed)
    result = guarded_fine_tune(start, data.preprocessing, data.train, data.validation, triggers, settings, floor,
                               score, layer, candidate.pruned, teacher=data.original)
    candidate.model, candidate.warning = result.model, result.warning
    candidate.fine_tuned, candidate.learning_rate, candidate.epochs = True, result.learning_rate, settings.epochs
    candidate.failed_learning_rates = result.failed_rates
    candidate.rounds = 1
    candidate.kept_epoch, candidate.rejected_epochs = result.kept_epoch, result.rejected_epochs
    if result.warning:
        candidate.warning = f"{candidate.name}: {result.warning}"
