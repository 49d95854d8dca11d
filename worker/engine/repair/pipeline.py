"""The repair stage of a scan: split the data, rank, sweep, prune (and fine-tune), wrap, write.

Honest evaluation: the clean data is split once, deterministically (seeded), into a decision part
that drives every choice (ranking, thresholds, fine-tuning and its early stopping, the GoodNet
recommendation) and a held-out part behind every reported clean figure, unless a separate clean
evaluation set is given. Poisoned data only ever reports attack success; it never chooses anything.
"""

from pathlib import Path

import numpy as np
import torch

from schemas.models import ModelFormat
from schemas.report import CurvePoint, DataSplit, GoodNetResult, Metrics, RepairedModel, RepairReport
from schemas.scan import ScanOptions
from worker.core.errors import DataError
from worker.core.limits import batch_within_budget
from worker.engine.canonical import CanonicalModel
from worker.engine.data import read_dataset
from worker.engine.formats import write_model
from worker.engine.preprocess import Preprocessing
from worker.engine.repair.finetune import fine_tune
from worker.engine.repair.goodnet import GoodNet, evaluate_goodnet, export_goodnet_onnx
from worker.engine.repair.layers import pruned_copy, resolve_prune_layer
from worker.engine.repair.plot import plot_repair
from worker.engine.repair.ranking import rank_channels
from worker.engine.repair.sweep import EvalSet, accuracy, prune_sweep
from worker.engine.stages import ScanInputs, Stages

MIN_SAMPLES = 10
FINE_TUNE_VALIDATION = 0.2
#: Fine-tuning batch (finetune.fine_tune's default), smaller only where the memory budget needs it.
FINE_TUNE_BATCH = 64


def load_set(path: Path, model: CanonicalModel, preprocessing: Preprocessing, what: str) -> EvalSet:
    data = read_dataset(path, model.signature)
    if len(data) == 0:
        raise DataError(f"the {what} ({path.name}) holds no samples.")
    x = preprocessing.apply(data.x, model.signature.input_layout)
    return EvalSet(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(data.y))


def split(data: EvalSet, fraction: float, seed: int, what: str) -> tuple[EvalSet, EvalSet]:
    """(rest, part) where ``part`` is a seeded random ``fraction`` of ``data``."""
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(data)))
    n_part = int(round(fraction * len(data)))
    if n_part < MIN_SAMPLES or len(data) - n_part < MIN_SAMPLES:
        raise DataError(f"the {what} has {len(data)} samples: too few to split into parts of at least "
                        f"{MIN_SAMPLES} ({fraction:.0%} held out); give more clean data or a separate --eval-data.")
    part, rest = order[:n_part], order[n_part:]
    return EvalSet(data.x[rest], data.y[rest]), EvalSet(data.x[part], data.y[part])


def run_repair(model: CanonicalModel, inputs: ScanInputs, options: ScanOptions, preprocessing: Preprocessing,
               out_dir: Path, stages: "Stages") -> tuple[RepairReport, list[GoodNetResult]]:
    opts = options.repair
    with stages.stage("data", 0.1):
        layer = resolve_prune_layer(model, opts.layer)
        clean = load_set(inputs.clean_data, model, preprocessing, "clean data")
        if inputs.eval_data is not None:
            decision, evaluation, source = clean, load_set(inputs.eval_data, model, preprocessing, "eval data"), \
                "eval-data"
        else:
            decision, evaluation = split(clean, opts.holdout_fraction, opts.seed, "clean data")
            source = "held-out"
        poisoned = None if inputs.poisoned_data is None else \
            load_set(inputs.poisoned_data, model, preprocessing, "poisoned data")
        tune_train, tune_val = split(decision, FINE_TUNE_VALIDATION, opts.seed + 1, "decision data") \
            if opts.fine_tune else (decision, decision)
    # Batches whose activations fit the memory budget: a model's per-sample activations can be large.
    batch = batch_within_budget(model.sample_bytes, options.batch_size)
    # Training keeps each activation and its gradient, and Adam two more values per weight: about 3x.
    tune_batch = batch_within_budget(3 * model.sample_bytes, FINE_TUNE_BATCH)
    with stages.stage("rank", 0.15):
        ranking = rank_channels(model, layer, decision.x, opts.criterion, batch_size=batch,
                                seed=opts.seed)
    with stages.stage("sweep", 0.2):
        sets = {"decision": decision, "evaluation": evaluation} | ({"poisoned": poisoned} if poisoned else {})
        sweep = prune_sweep(model, layer, ranking.order, sets, batch_size=batch)
    curve = [CurvePoint(channels_pruned=k, decision_accuracy=sweep.accuracy["decision"][k],
                        clean_accuracy=sweep.accuracy["evaluation"][k],
                        attack_success_rate=sweep.accuracy["poisoned"][k] if poisoned else None)
             for k in range(len(ranking.order) + 1)]
    models, goodnets, candidates = [], [], []
    for i, threshold in enumerate(opts.thresholds):
        with stages.stage("repair", 0.5 + 0.45 * i / len(opts.thresholds)):
            k = sweep.first_drop("decision", threshold)
            if k is None:
                models.append(RepairedModel(threshold=threshold, reached=False))
                continue
            repaired = pruned_copy(model, layer, ranking.order[:k])
            epochs = best_epoch = heldout = None
            if opts.fine_tune:
                tuned = fine_tune(repaired, layer, ranking.order[:k], tune_train, tune_val,
                                  epochs=opts.fine_tune_epochs, learning_rate=opts.fine_tune_learning_rate,
                                  seed=opts.seed, batch_size=tune_batch)
                repaired, epochs, best_epoch = tuned.model, opts.fine_tune_epochs, tuned.best_epoch
                heldout = tuned.validation_accuracy[tuned.best_epoch - 1]
            tag = f"drop{threshold:g}"
            source_format = model.signature.format
            artifact = write_model(repaired, source_format, inputs.model, out_dir / f"repaired_{tag}").name
            if source_format != ModelFormat.onnx:  # and always as ONNX too
                write_model(repaired, ModelFormat.onnx, inputs.model, out_dir / f"repaired_{tag}")
            models.append(RepairedModel(
                threshold=threshold, reached=True, channels_pruned=k, fine_tuned=opts.fine_tune,
                fine_tune_epochs=epochs, fine_tune_best_epoch=best_epoch, fine_tune_heldout_accuracy=heldout,
                clean_accuracy=accuracy(repaired, evaluation, batch),
                attack_success_rate=accuracy(repaired, poisoned, batch) if poisoned else None, artifact=artifact,
                onnx_artifact=f"repaired_{tag}.onnx"))
        if options.goodnet:
            with stages.stage("goodnet", 0.5 + 0.45 * (i + 0.5) / len(opts.thresholds)):
                goodnet = GoodNet(model, repaired)
                metrics = evaluate_goodnet(goodnet, evaluation.x, evaluation.y, poisoned.x if poisoned else None,
                                           poisoned.y if poisoned else None, batch_size=batch)
                decision_alarms = evaluate_goodnet(goodnet, tune_val.x, tune_val.y, batch_size=batch).false_alarm_rate
                export_goodnet_onnx(goodnet, out_dir / f"goodnet_{tag}.onnx")
                goodnets.append(GoodNetResult(threshold=threshold, artifact=f"goodnet_{tag}.onnx",
                                              **metrics.__dict__))
                candidates.append((k, decision_alarms, len(goodnets) - 1))
    recommendation = _recommend(goodnets, candidates, opts.max_false_alarm)
    report = RepairReport(layer=layer, criterion=str(opts.criterion), order=ranking.order,
                          split=DataSplit(decision_samples=len(decision), evaluation_samples=len(evaluation),
                                          evaluation_source=source, poisoned_samples=len(poisoned or [])),
                          baseline=Metrics(clean_accuracy=curve[0].clean_accuracy,
                                           attack_success_rate=curve[0].attack_success_rate),
                          curve=curve, models=models, recommendation=recommendation)
    with stages.stage("write", 0.97):
        plot_repair(report, out_dir / "repair_curve.png", f"{inputs.model.name}: pruning {layer}")
    return report, goodnets


def _recommend(goodnets: list[GoodNetResult], candidates: list[tuple[int, float, int]], budget: float) -> str | None:
    """Most channels pruned within the false-alarm budget on decision data; else the fewest false alarms.

    More pruning removes more of what clean data does not use (where backdoors hide); the budget keeps
    the GoodNet from rejecting too many clean inputs. Only clean decision data is looked at.
    """
    if not candidates:
        return None
    within = [c for c in candidates if c[1] <= budget]
    if within:
        k, alarms, index = max(within, key=lambda c: (c[0], -c[1]))
        why = (f"most channels pruned ({k}) among GoodNets whose false-alarm rate on decision data "
               f"({alarms:.2%}) is within the {budget:.0%} budget")
    else:
        k, alarms, index = min(candidates, key=lambda c: (c[1], -c[0]))
        why = (f"no GoodNet stays within the {budget:.0%} false-alarm budget on decision data; "
               f"this one has the fewest false alarms ({alarms:.2%})")
    goodnets[index].recommended = True
    return f"goodnet at -{goodnets[index].threshold:g} points: {why}"
