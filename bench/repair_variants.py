"""The development harness behind the repair's settings: the repair alone, rerun on triggers cached from one detection.

    .venv/bin/python -m bench.repair_variants [--seeds 1,11] [--families ...] [--kinds ...] [--candidates]
                                              [--repair-seed 0] [--recipe adam|sgd]

A default scan spends most of its time detecting; the repair's settings only change what comes after. So each BadNet
of bench/repair_cases.py (and the project's) is detected once, its reversed triggers cached as NPZ under
``$BDSCREEN_CACHE/repair-triggers/<hash of the detectors' code>``, and every run after that only repairs (about 2
minutes per 10 BadNets). To compare a setting, change it in the tree and run this again. Seeds 1 and 11 (DEV_SEEDS)
with the development families and kinds are the development set: choose settings here and nowhere else, then measure
them on seeds, families and kinds that chose nothing.

Per row: the original's and the recommended repair's clean accuracy on the 2,000 evaluation images, the repair's
validation accuracy ('val', what the choice saw), the real attack success, the GoodNet's detection and false alarms,
ok (R repair goal, G GoodNet goal on the inputs the attack works on); with ``--candidates`` also every repair built
(learning rate, kept epoch, validation and evaluation accuracy, attack success, estimate; * the recommended one).
The totals say on how many rows some built candidate met the repair goal: the most any choice rule could reach (a
shortfall is the candidates' when that count is low, the choice's when it is high). Last: how much the validation
part understates the clean-accuracy drop of every built candidate (negative: the choice sees a smaller drop than
there is).
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench import FIXTURES
from bench.detect import detectors_key
from bench.repair_cases import (
    DEV_SEEDS,
    FAMILIES,
    KINDS,
    RECIPES,
    CaseSpec,
    build_case,
    is_development,
    meets_goodnet_goal,
    meets_repair_goal,
    split_of,
)
from schemas.scan import ScanOptions
from worker.demo.badnet import mnist_badnet
from worker.engine.canonical import default_device
from worker.engine.data import read_dataset
from worker.engine.detect import DetectionContext
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.formats import read_model
from worker.engine.repair.pipeline import VALIDATION_FRACTION, load_raw, run_repair, split
from worker.engine.repair.raw import clean_accuracy
from worker.engine.scan import ScanInputs, preprocessing_of, run_detectors
from worker.engine.stages import Stages
from worker.zoo.zoo import cache_root

OPTIONS = ScanOptions.model_validate({"preprocessing": {"divide_by": 255}})


def cached_triggers(folder: Path, model, inputs: ScanInputs) -> list[ReversedTrigger]:
    """The scan's detectors' reversed triggers for this BadNet, detected once and then read from NPZ."""
    path = cache_root() / "repair-triggers" / detectors_key() / f"{folder.name}.npz"
    if path.is_file():
        with np.load(path) as saved:
            return [ReversedTrigger(int(t), m, p, float(a), None if s < 0 else int(s))
                    for t, m, p, a, s in zip(saved["target"], saved["mask"], saved["pattern"], saved["success"],
                                             saved["source"], strict=True)]
    context = DetectionContext(model=model, preprocessing=preprocessing_of(OPTIONS),
                               clean=read_dataset(inputs.clean_data, model.signature), device=default_device(),
                               out_dir=Path(tempfile.mkdtemp()), seed=OPTIONS.repair.seed)
    run_detectors(OPTIONS.detectors, context)
    triggers = context.triggers
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, target=np.array([t.target for t in triggers], np.int64),
             mask=np.stack([t.mask for t in triggers]) if triggers else np.zeros(0, np.float32),
             pattern=np.stack([t.pattern for t in triggers]) if triggers else np.zeros(0, np.float32),
             success=np.array([t.attack_success for t in triggers], np.float64),
             source=np.array([-1 if t.source is None else t.source for t in triggers], np.int64))
    return triggers


def repair_row(name: str, folder: Path, onnx: Path, repair_seed: int = OPTIONS.repair.seed) -> dict:
    """The default scan's repair of one BadNet on its cached triggers; ``repair_seed`` as the scan option
    ``repair.seed`` (the decision data's split, the fine-tuning's batches and the searches' starts)."""
    options = OPTIONS.model_copy(update={"repair": OPTIONS.repair.model_copy(update={"seed": repair_seed})})
    inputs = ScanInputs(onnx, clean_data=folder / "clean.npz", eval_data=folder / "eval.npz",
                        poisoned_data=folder / "poisoned.npz")
    model = read_model(onnx, None)
    preprocessing = preprocessing_of(OPTIONS)
    triggers = cached_triggers(folder, model, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        report, goodnets = run_repair(model, inputs, options, preprocessing, Path(tmp), Stages(None),
                                      triggers=triggers, detector_ran=True)
    # The same validation part the pipeline split off (eval data given: the decision data is all the clean data).
    _, validation = split(load_raw(inputs.clean_data, model, "clean data"), VALIDATION_FRACTION,
                          repair_seed + 1, "decision data")
    base = report.baseline
    original_validation = clean_accuracy(model, validation, preprocessing)
    chosen = next((m for m in report.models if m.recommended), None)
    goodnet = next((g for g in goodnets if g.recommended), None)
    # Validation drop minus evaluation drop, for every built candidate.
    gaps = [(original_validation - m.decision_accuracy) - (base.clean_accuracy - m.clean_accuracy)
            for m in report.models if m.fine_tuned and m.decision_accuracy is not None and m.clean_accuracy is not None]
    row = {"name": name, "clean_before": base.clean_accuracy, "asr_before": base.attack_success_rate,
           "method": chosen.name if chosen else "NOTHING", "val": chosen.decision_accuracy if chosen else None,
           "clean": chosen.clean_accuracy if chosen else None, "asr": chosen.attack_success_rate if chosen else None,
           "detection": goodnet.detection_rate if goodnet else None,
           "alarm": goodnet.false_alarm_rate if goodnet else None, "gaps": gaps,
           "candidates": [m for m in report.models if not m.shares_repair_with]}
    def met(m) -> bool:
        return meets_repair_goal(m.attack_success_rate, m.clean_accuracy, base.clean_accuracy)

    row["R"] = bool(chosen and met(chosen))
    # Whether any built candidate met it: what the best choice rule could have done on this row.
    row["reachable"] = any(met(m) for m in row["candidates"])
    row["G"] = bool(goodnet and meets_goodnet_goal(row["detection"] / row["asr_before"], row["alarm"]))
    return row


def pct(value: float | None) -> str:
    return "   -  " if value is None else f"{value * 100:6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default=",".join(map(str, DEV_SEEDS)))
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--candidates", action="store_true", help="print every repair built, not only the chosen")
    parser.add_argument("--repair-seed", type=int, default=OPTIONS.repair.seed,
                        help="the scans' repair.seed: the same code on the same BadNets and triggers with another "
                             "split of the decision data and other random draws, to see how far counts move by chance")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="adam",
                        help="how the fresh BadNets are trained (sgd: momentum SGD with weight decay, held out)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    case = mnist_badnet(FIXTURES)
    cases = [("project BadNet", case.model.parent, case.model)]
    for seed in seeds:
        for family in args.families.split(","):
            for kind in args.kinds.split(","):
                folder = Path(build_case(FIXTURES, CaseSpec(family, kind, seed, optimizer=args.recipe))["folder"])
                cases.append((f"{family} {kind} s{seed}", folder, folder / "badnet.onnx"))
    which = split_of([is_development(s, f, k, args.recipe) for s in seeds for f in args.families.split(",")
                      for k in args.kinds.split(",")])
    print(f"Repair only, on cached triggers; seeds {args.seeds} ({which}); BadNets trained with {args.recipe}; "
          f"repair seed {args.repair_seed}; in %.")
    print(f"{'model':<22} {'clean':>6} {'ASR':>6} | {'repair':<16} {'val':>6} {'clean':>6} {'ASR':>6} | "
          f"{'detect':>6} {'alarm':>6} | ok")
    rows = []
    for name, folder, onnx in cases:
        row = repair_row(name, folder, onnx, args.repair_seed)
        rows.append(row)
        print(f"{name:<22} {pct(row['clean_before'])} {pct(row['asr_before'])} | {row['method']:<16} "
              f"{pct(row['val'])} {pct(row['clean'])} {pct(row['asr'])} | {pct(row['detection'])} "
              f"{pct(row['alarm'])} | {'R' if row['R'] else '-'}{'G' if row['G'] else '-'}", flush=True)
        for m in row["candidates"] if args.candidates else []:
            print(f"    {m.name:<18} lr {m.learning_rate or 0:<6g} epoch {m.kept_epoch or '-':<2} val "
                  f"{pct(m.decision_accuracy)} clean {pct(m.clean_accuracy)} ASR {pct(m.attack_success_rate)} est "
                  f"{pct(m.decision_estimated_attack_success_rate)} {'*' if m.recommended else ''}", flush=True)
    gaps = [g for row in rows for g in row["gaps"]]
    fresh = rows[1:]  # the project's BadNet is always development
    print(f"repair goal {sum(r['R'] for r in rows)}/{len(rows)} ({sum(r['R'] for r in fresh)}/{len(fresh)} fresh "
          f"BadNets), GoodNet goal on working inputs {sum(r['G'] for r in rows)}/{len(rows)} "
          f"({sum(r['G'] for r in fresh)}/{len(fresh)}); some built candidate met the repair goal on "
          f"{sum(r['reachable'] for r in rows)}/{len(rows)} (the most any choice rule could reach)")
    print(f"validation minus evaluation clean-accuracy drop over {len(gaps)} candidates: {np.mean(gaps) * 100:+.2f} "
          "points" if gaps else "no candidate was built")


if __name__ == "__main__":
    main()
