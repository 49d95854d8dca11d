"""The repair stage of a scan: split the data, rank, sweep, build the candidate repairs, choose one, wrap, write.

Honest evaluation: the clean data is split once, deterministically (seeded), into a decision part that drives
every choice and a held-out part behind every reported clean figure, unless a separate clean evaluation set is
given. The decision part is split again: fine-tuning trains on one piece and every choice (guard, kept epoch,
learning rate, the recommended repair) is scored on the other. The reversed triggers come from the scan's
detectors (``context.triggers``); when there are none the repair runs its own quick search
(:mod:`worker.engine.repair.trigger_search`). Poisoned data only ever reports attack success, after the choice.
"""

from pathlib import Path

import numpy as np
import torch

from schemas.models import ModelFormat
from schemas.report import CurvePoint, DataSplit, GoodNetResult, Metrics, RepairedModel, RepairReport, TriggerSummary
from schemas.scan import GoodNetRule, RepairMethod, ScanOptions
from worker.core.errors import DataError
from worker.core.limits import batch_within_budget
from worker.engine.canonical import CanonicalModel
from worker.engine.data import read_dataset
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.formats import write_model
from worker.engine.preprocess import Preprocessing, model_input, to_images
from worker.engine.repair.candidates import Built, RepairData, build_candidates, retry_notes
from worker.engine.repair.choose import choose
from worker.engine.repair.goodnet import (
    GoodNet,
    calibrate_confidence,
    evaluate_goodnet,
    export_goodnet_onnx,
    goodnet_labels,
)
from worker.engine.repair.layers import resolve_prune_layer
from worker.engine.repair.plot import plot_repair
from worker.engine.repair.ranking import rank_channels
from worker.engine.repair.raw import RawSet, clean_accuracy, trigger_success
from worker.engine.repair.sweep import EvalSet, prune_sweep
from worker.engine.repair.trigger_search import search_triggers
from worker.engine.stages import ScanInputs, Stages

MIN_SAMPLES = 10
VALIDATION_FRACTION = 0.2
#: Fine-tuning batch, smaller only where the memory budget needs it.
FINE_TUNE_BATCH = 64


def load_raw(path: Path, model: CanonicalModel, what: str) -> RawSet:
    data = read_dataset(path, model.signature)
    if len(data) == 0:
        raise DataError(f"the {what} ({path.name}) holds no samples.")
    return RawSet(torch.from_numpy(to_images(data.x, model.signature)), torch.from_numpy(data.y))


def as_eval_set(data: RawSet, model: CanonicalModel, preprocessing: Preprocessing) -> EvalSet:
    """Preprocessed, in the model's layout: what the pruning sweep feeds the model."""
    return EvalSet(model_input(data.x, preprocessing, model.signature.input_layout), data.y)


def split(data: RawSet, fraction: float, seed: int, what: str) -> tuple[RawSet, RawSet]:
    """(rest, part) where ``part`` is a seeded random ``fraction`` of ``data``."""
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(data)))
    n_part = int(round(fraction * len(data)))
    if n_part < MIN_SAMPLES or len(data) - n_part < MIN_SAMPLES:
        raise DataError(f"the {what} has {len(data)} samples: too few to split into parts of at least "
                        f"{MIN_SAMPLES} ({fraction:.0%} held out); give more clean data or a separate --eval-data.")
    return data.part(order[n_part:]), data.part(order[:n_part])


def run_repair(model: CanonicalModel, inputs: ScanInputs, options: ScanOptions, preprocessing: Preprocessing,
               out_dir: Path, stages: Stages, triggers: list[ReversedTrigger] | None = None,
               detector_ran: bool = False) -> tuple[RepairReport, list[GoodNetResult]]:
    """``triggers``: what the scan's detectors reversed; ``detector_ran``: whether the 'reverse' detector was among
    them (then it is not asked again)."""
    opts = options.repair
    with stages.stage("data", 0.1):
        layer = resolve_prune_layer(model, opts.layer)
        clean = load_raw(inputs.clean_data, model, "clean data")
        if inputs.eval_data is not None:
            decision, evaluation, source = clean, load_raw(inputs.eval_data, model, "eval data"), "eval-data"
        else:
            decision, evaluation = split(clean, opts.holdout_fraction, opts.seed, "clean data")
            source = "held-out"
        poisoned = None if inputs.poisoned_data is None else load_raw(inputs.poisoned_data, model, "poisoned data")
        notes: list[str] = []
        try:
            train, validation = split(decision, VALIDATION_FRACTION, opts.seed + 1, "decision data")
        except DataError:  # a few dozen images: still repair, but say that the choice saw the training data
            train = validation = decision
            notes.append(f"the decision data ({len(decision)} samples) is too small to hold out a validation part: "
                         "fine-tuning, its guard and the choice all used the same samples")
        # Batches whose activations fit the memory budget: a model's per-sample activations can be large.
        batch = batch_within_budget(model.sample_bytes, options.batch_size)
        # Training keeps each activation and its gradient, and Adam two more values per weight: about 3x.
        data = RepairData(train, validation, preprocessing, model,
                          batch_within_budget(3 * model.sample_bytes, FINE_TUNE_BATCH))
    triggers, found_by, warning = list(triggers or []), "detector", None
    if not triggers and opts.method in (RepairMethod.auto, RepairMethod.unlearn):
        with stages.stage("trigger search", 0.12):
            triggers, found_by, warning = reverse_for_repair(model, preprocessing, decision, train, validation,
                                                             out_dir, opts.seed, detector_ran)
    with stages.stage("rank", 0.15):
        decision_set = as_eval_set(decision, model, preprocessing)
        ranking = rank_channels(model, layer, decision_set.x, opts.criterion, batch_size=batch, seed=opts.seed)
    with stages.stage("sweep", 0.2):
        sets = {"decision": decision_set, "evaluation": as_eval_set(evaluation, model, preprocessing)}
        if poisoned:
            sets["poisoned"] = as_eval_set(poisoned, model, preprocessing)
        sweep = prune_sweep(model, layer, ranking.order, sets, batch_size=batch)
    curve = [CurvePoint(channels_pruned=k, decision_accuracy=sweep.accuracy["decision"][k],
                        clean_accuracy=sweep.accuracy["evaluation"][k],
                        attack_success_rate=sweep.accuracy["poisoned"][k] if poisoned else None)
             for k in range(len(ranking.order) + 1)]
    built = build_candidates(model, layer, sweep, data, triggers, opts,
                             lambda name: stages.stage(f"repair:{name}", 0.3))
    original_accuracy = clean_accuracy(model, validation, preprocessing)
    original_estimate = trigger_success(model, validation, preprocessing, triggers)
    # The choice sees only the validation part of the decision data; poisoned figures are computed after it.
    unique = [b for b in built if b.shares_repair_with is None]
    choice = choose(unique, original_accuracy, original_estimate, opts.max_accuracy_drop)
    winner = None if choice.index is None else unique[choice.index]
    targets = sorted({t.target for t in triggers}) if opts.goodnet_rule == GoodNetRule.targets else []
    if targets and found_by == "repair" and options.goodnet:
        # Measured on a development BadNet whose own-search suspects missed its real target: the GoodNet caught none
        # of its triggered inputs while the estimate, which only stamps the suspects' triggers, said 93 %.
        notes.append(f"the GoodNet alarms only where the original answers class {', '.join(map(str, targets))}, "
                     "which the repair's own trigger search suspected (no detector flagged a target): a backdoor "
                     "towards any other class passes it unnoticed, and its estimated detection rate covers those "
                     "classes only")
    models, goodnets = [], []
    with stages.stage("write", 0.9):
        for b in built:
            models.append(_describe(b, b is winner, model, inputs, out_dir, evaluation, poisoned, data, triggers))
            # GoodNets for the recommended repair and the pruned thresholds (the seed's); not for losing unlearners.
            wanted = b is winner or (b.threshold is not None and not b.fine_tuned)
            if options.goodnet and wanted and b.model is not None and b.shares_repair_with is None:
                goodnets.append(_goodnet(model, b, b is winner, targets, out_dir, evaluation, poisoned, data,
                                         triggers))
    recommendation = choice.reason
    if winner is not None and options.goodnet:
        alarms = next(g for g in goodnets if g.recommended).false_alarm_rate
        if alarms is not None and alarms > opts.max_false_alarm:
            recommendation += (f"; its GoodNet raises false alarms on {alarms:.2%} of held-out clean inputs, above "
                               f"the {opts.max_false_alarm:.0%} budget")
    report = RepairReport(
        layer=layer, criterion=str(opts.criterion), order=ranking.order,
        split=DataSplit(decision_samples=len(decision), evaluation_samples=len(evaluation),
                        evaluation_source=source, poisoned_samples=len(poisoned or [])),
        baseline=Metrics(clean_accuracy=curve[0].clean_accuracy, attack_success_rate=curve[0].attack_success_rate,
                         estimated_attack_success_rate=trigger_success(model, evaluation, preprocessing, triggers)),
        curve=curve, models=models, recommended=winner.name if winner else None, recommendation=recommendation,
        nothing_worked=winner is None,
        warnings=notes + ([warning] if warning else []) + [b.warning for b in built if b.warning and b.fine_tuned]
        + retry_notes(built),
        triggers=[TriggerSummary(target=t.target, source=t.source, mask_l1=float(np.sum(t.mask)),
                                 attack_success=t.attack_success, found_by=found_by) for t in triggers])
    with stages.stage("write", 0.97):
        plot_repair(report, out_dir / "repair_curve.png", f"{inputs.model_name or inputs.model.name}: pruning {layer}")
    return report, goodnets


def reverse_for_repair(model: CanonicalModel, preprocessing: Preprocessing, decision: RawSet, train: RawSet,
                       validation: RawSet, out_dir: Path, seed: int, detector_ran: bool = False
                       ) -> tuple[list[ReversedTrigger], str, str | None]:
    """Reversed triggers when the scan's detectors handed none: the 'reverse' detector's search on the decision data
    when that detector is installed (issue 10a) and did not run yet; when it flags nothing, the repair's own quick
    search, which always keeps the smallest trigger it finds and those close to it (a repair needs something to
    unlearn, and the choice rule decides whether unlearning it helped). Returns (triggers, who found them, a warning
    or None)."""
    def own() -> list[ReversedTrigger]:
        return search_triggers(model, preprocessing, train, validation, seed=seed)

    try:
        from worker.engine.detect.reverse import ReverseEngineeringDetector
    except ImportError:
        return own(), "repair", None
    if detector_ran:
        return own(), "repair", None
    from worker.engine.data import Dataset
    from worker.engine.detect.base import DetectionContext
    from worker.engine.preprocess import to_layout

    x = to_layout(decision.x, model.signature.input_layout).numpy()
    context = DetectionContext(model=model, preprocessing=preprocessing, clean=Dataset(x, decision.y.numpy()),
                               device=next(model.parameters()).device, out_dir=out_dir, seed=seed)
    try:
        detector = ReverseEngineeringDetector()
        if detector.applicable(context) is None:
            detector.detect(context)
    except Exception as exc:  # noqa: BLE001 - a failed search leaves the repair its own
        return own(), "repair", f"the reverse detector failed ({type(exc).__name__}: {exc}); the repair searched itself"
    if not context.triggers:
        return own(), "repair", None
    return context.triggers, "detector", None


def _describe(b: Built, recommended: bool, original: CanonicalModel, inputs: ScanInputs, out_dir: Path,
              evaluation: RawSet, poisoned: RawSet | None, data: RepairData, triggers: list) -> RepairedModel:
    """The report's row for one candidate; writes its artifacts unless it shares them or failed."""
    entry = RepairedModel(name=b.name, method=b.method, threshold=b.threshold, reached=b.channels_pruned is not None
                          or b.threshold is None, channels_pruned=b.channels_pruned,
                          shares_repair_with=b.shares_repair_with, fine_tuned=b.fine_tuned, fine_tune_epochs=b.epochs,
                          learning_rate=b.learning_rate, kept_epoch=b.kept_epoch,
                          failed_learning_rates=b.failed_learning_rates, rejected_epochs=b.rejected_epochs,
                          decision_accuracy=b.decision_accuracy,
                          fine_tune_best_epoch=b.kept_epoch,
                          fine_tune_heldout_accuracy=b.decision_accuracy if b.fine_tuned else None,
                          decision_estimated_attack_success_rate=b.estimated_attack_success,
                          unlearning_rounds=b.rounds or None, recommended=recommended, warning=b.warning)
    if b.model is None:
        return entry
    entry.clean_accuracy = clean_accuracy(b.model, evaluation, data.preprocessing)
    entry.estimated_attack_success_rate = trigger_success(b.model, evaluation, data.preprocessing,
                                                          triggers + b.fresh)
    entry.fresh_search_estimated_attack_success_rate = trigger_success(b.model, evaluation, data.preprocessing,
                                                                       b.fresh)
    if poisoned:
        entry.attack_success_rate = clean_accuracy(b.model, poisoned, data.preprocessing)
    owner = b.shares_repair_with or b.name
    ext = ".h5" if original.signature.format == ModelFormat.keras_h5 else ".onnx"
    entry.artifact, entry.onnx_artifact = f"repaired_{owner}{ext}", f"repaired_{owner}.onnx"
    if b.shares_repair_with is None:  # names carry the suffix: write_model would cut 'drop2.5' at its dot
        write_model(b.model, original.signature.format, inputs.model, out_dir / entry.artifact)
        if ext != ".onnx":  # and always as ONNX too
            write_model(b.model, ModelFormat.onnx, inputs.model, out_dir / entry.onnx_artifact)
    return entry


def _goodnet(original: CanonicalModel, b: Built, recommended: bool, targets: list[int], out_dir: Path,
             evaluation: RawSet, poisoned: RawSet | None, data: RepairData, triggers: list) -> GoodNetResult:
    pre = data.preprocessing
    layout = original.signature.input_layout
    goodnet = GoodNet(original, b.model, targets)
    if targets and triggers:  # the floor that keeps 99 % of the alarms on stamped decision inputs
        stamped = torch.cat([t.stamp_torch(data.validation.x[data.validation.y != t.target]) for t in triggers])
        goodnet.confidence = calibrate_confidence(goodnet, model_input(stamped, pre, layout))
    clean_x = model_input(evaluation.x, pre, layout)
    metrics = evaluate_goodnet(goodnet, clean_x, evaluation.y, None if poisoned is None else
                               model_input(poisoned.x, pre, layout), None if poisoned is None else poisoned.y)
    estimated = None
    if triggers:  # the share of stamped held-out inputs sent to class N, the weakest trigger's
        rates = []
        for t in triggers:
            keep = evaluation.y != t.target
            labels = goodnet_labels(goodnet, model_input(t.stamp_torch(evaluation.x[keep]), pre, layout))
            rates.append(float((labels == goodnet.num_classes).mean()))
        estimated = min(rates)
    artifact = f"goodnet_{b.name}.onnx"
    export_goodnet_onnx(goodnet, out_dir / artifact)
    return GoodNetResult(name=b.name, threshold=b.threshold, rule=goodnet.rule, targets=goodnet.targets,
                         min_confidence=goodnet.confidence or None,
                         estimated_detection_rate=estimated, recommended=recommended, artifact=artifact,
                         **metrics.__dict__)
