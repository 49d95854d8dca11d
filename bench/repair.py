"""Repair on real data and the speed of the pruning sweep, in one run.

    .venv/bin/python -m bench.repair [--seed 2] [--families ...] [--kinds ...] [--inputs 11547] [--skip-speed]
                                     [--skip-mnist]

1. Default scans of MNIST BadNets: the project's (worker/demo/badnet.py, white 4x4 patch -> 0; seen while the
   repair settings were developed) and fresh ones of three architecture families x three trigger kinds
   (bench/repair_cases.py; seed 2 by default, never looked at while developing; seed 1 was the development set).
   `--families` and `--kinds` name others: families no setting was chosen on (cnn3-stride, cnn1-bn, lenet-tanh)
   and the held-out `line` trigger kind.
   Each row: the model before, the recommended repair and GoodNet after, with the real attack success (poisoned
   evaluation images, never shown to the scan's choices) beside the reversed-trigger estimate.
2. The fixture oracle: the published lab3 order, pruned at 45 / 48 / 52 channels and written back,
   against ytf/lab3_pruned_drop{2,4,10}.h5.
3. Speed: the incremental sweep against the naive sweep (the whole model re-run per step) on
   ytf/sunglasses_bd_net.h5, all 60 channels of conv_3, 11,547 random 55x47x3 inputs.
"""

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from bench import FIXTURES, repair_cases
from schemas.scan import ScanOptions
from worker.demo.badnet import mnist_badnet
from worker.engine.formats import read_model
from worker.engine.formats.keras_h5 import write_keras_h5
from worker.engine.repair.layers import pruned_copy
from worker.engine.repair.sweep import EvalSet, naive_sweep, prune_sweep
from worker.engine.scan import ScanInputs, run_scan

LAB3_ORDER = [int(v) for v in (
    "0 26 27 30 31 33 34 36 37 38 25 39 41 44 45 47 48 49 50 53 55 40 24 59 9 2 12 13 17 14 15 23 6 51 32 "
    "22 21 20 19 43 58 3 42 1 29 16 56 46 5 8 11 54 10 28 35 18 4 7 52 57").split()]


def pct(value: float | None) -> str:
    return "   -  " if value is None else f"{value * 100:6.2f}"


def scan_case(name: str, folder: Path, onnx: Path, meta: dict, held_out: bool) -> dict:
    """One default scan (the options a user gets, x/255 declared) and the row of figures it gives."""
    inputs = ScanInputs(onnx, clean_data=folder / "clean.npz", eval_data=folder / "eval.npz",
                        poisoned_data=folder / "poisoned.npz")
    options = ScanOptions.model_validate({"preprocessing": {"divide_by": 255}})
    with tempfile.TemporaryDirectory() as tmp:
        # The repair's CPU time, from its first stage ('data') to the end: on one torch thread, what an idle core
        # would take, whatever the load on the machine.
        repair_began: list[float] = []

        def progress(stage: str, fraction: float) -> None:
            if stage == "data" and not repair_began:
                repair_began.append(time.process_time())

        started, cpu_started = time.perf_counter(), time.process_time()
        report = run_scan(inputs, options, Path(tmp), progress)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        repair_cpu = time.process_time() - repair_began[0]
    repair = report.repair
    chosen = next((m for m in repair.models if m.recommended), None)
    goodnet = next((g for g in report.goodnets if g.recommended), None)
    base = repair.baseline
    row = {"name": name, "held_out": held_out, "target": meta["target"], "seconds": elapsed, "cpu": cpu,
           "repair_seconds": repair_cpu,
           "clean_before": base.clean_accuracy, "asr_before": base.attack_success_rate,
           "est_before": base.estimated_attack_success_rate, "method": chosen.name if chosen else "NOTHING",
           "clean_after": chosen.clean_accuracy if chosen else None,
           "asr_after": chosen.attack_success_rate if chosen else None,
           "est_after": chosen.estimated_attack_success_rate if chosen else None,
           "fresh_after": chosen.fresh_search_estimated_attack_success_rate if chosen else None,
           "rounds": (chosen.unlearning_rounds or 0) if chosen else 0,
           "detection": goodnet.detection_rate if goodnet else None,
           # A GoodNet flags an input only where the original answers the target, so it cannot detect more than
           # the original's attack success; this is its detection among the inputs the attack works on.
           "detection_working": goodnet.detection_rate / base.attack_success_rate if goodnet else None,
           "false_alarm": goodnet.false_alarm_rate if goodnet else None,
           "est_detection": goodnet.estimated_detection_rate if goodnet else None,
           "triggers": [(t.target, round(t.mask_l1, 1), t.found_by) for t in repair.triggers]}
    row["repair_ok"] = bool(chosen and repair_cases.meets_repair_goal(row["asr_after"], row["clean_after"],
                                                                      row["clean_before"]))
    row["goodnet_ok"] = bool(goodnet and repair_cases.meets_goodnet_goal(row["detection"], row["false_alarm"]))
    row["goodnet_working_ok"] = bool(goodnet and repair_cases.meets_goodnet_goal(row["detection_working"],
                                                                                 row["false_alarm"]))
    return row


def mnist_figures(seed: int, families: tuple[str, ...], kinds: tuple[str, ...]) -> None:
    torch.set_num_threads(1)
    case = mnist_badnet(FIXTURES)
    cases = [("project BadNet (dev)", case.model.parent, case.model, case.meta, False)]
    for family in families:
        for kind in kinds:
            meta = repair_cases.build_case(FIXTURES, repair_cases.CaseSpec(family, kind, seed))
            folder = Path(meta["folder"])
            cases.append((f"{family} {kind}", folder, folder / "badnet.onnx", meta,
                          not repair_cases.is_development(seed, family, kind)))
    which = repair_cases.split_of([not c[-1] for c in cases[1:]])  # the project's BadNet is always development
    print(f"Default scans (repair method auto, GoodNet rule targets) of MNIST BadNets; fresh BadNets from seed {seed}"
          f" ({which}). Figures "
          "in % on 2,000 evaluation images; 'est' = the reversed trigger's success on them (no poisoned data), after "
          "repair the higher of that and 'fresh', a trigger searched for again on the repaired model; 'r' = unlearning "
          "rounds; 's' = the scan's seconds, 'cpu' its CPU seconds, 'rep' the repair's CPU seconds; "
          "'/works' = detection among the triggered inputs the attack works on; ok: R repair, G GoodNet (g: on those).")
    print(f"{'model':<22} {'tgt':>3} {'clean':>6} {'ASR':>6} {'est':>6} | {'repair':<16} {'r':>1} {'clean':>6} "
          f"{'ASR':>6} {'est':>6} {'fresh':>6} | {'detect':>6} {'/works':>6} {'alarm':>6} {'est':>6} | {'ok':<5} "
          f"{'s':>4} {'cpu':>4} {'rep':>4}  trigger found (target, L1, by)")
    rows = []
    for name, folder, onnx, meta, held_out in cases:
        row = scan_case(name, folder, onnx, meta, held_out)
        rows.append(row)
        ok = ("R" if row["repair_ok"] else "-") + ("G" if row["goodnet_ok"] else "g" if row["goodnet_working_ok"]
                                                   else "-")
        print(f"{name:<22} {row['target']:>3} {pct(row['clean_before'])} {pct(row['asr_before'])} "
              f"{pct(row['est_before'])} | {row['method']:<16} {row['rounds']:>1} {pct(row['clean_after'])} "
              f"{pct(row['asr_after'])} {pct(row['est_after'])} {pct(row['fresh_after'])} | {pct(row['detection'])} "
              f"{pct(row['detection_working'])} "
              f"{pct(row['false_alarm'])} "
              f"{pct(row['est_detection'])} | {ok:<5} {row['seconds']:4.0f} {row['cpu']:4.0f} "
              f"{row['repair_seconds']:4.0f}  {row['triggers']}", flush=True)
    for label, chosen in (("all models", rows), ("held-out models", [r for r in rows if r["held_out"]])):
        if chosen:
            repaired = sum(r["repair_ok"] for r in chosen)
            guarded = sum(r["goodnet_ok"] for r in chosen)
            working = sum(r["goodnet_working_ok"] for r in chosen)
            print(f"{label}: repair ASR <= 1 % within 1 point of clean accuracy on {repaired}/{len(chosen)}; "
                  f"GoodNet detection >= 99 % at <= 1 % false alarms on {guarded}/{len(chosen)} "
                  f"({working}/{len(chosen)} counting only inputs the attack works on); "
                  f"scan time median {sorted(r['seconds'] for r in chosen)[len(chosen) // 2]:.0f} s, repair CPU "
                  f"median {sorted(r['repair_seconds'] for r in chosen)[len(chosen) // 2]:.0f} s, max "
                  f"{max(r['repair_seconds'] for r in chosen):.0f} s")


def oracle_figures() -> None:
    source = FIXTURES / "ytf/lab3_bd_weights.h5"
    model = read_model(source, FIXTURES / "ytf/deepid_architecture.json")
    print()
    for drop, channels in ((2, 45), (4, 48), (10, 52)):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "pruned.h5"
            write_keras_h5(pruned_copy(model, "conv_3", LAB3_ORDER[:channels]), source, out)
            published = h5py.File(FIXTURES / f"ytf/lab3_pruned_drop{drop}.h5")["model_weights"]
            with h5py.File(out) as ours:
                layers = ("conv_1", "conv_2", "conv_3", "conv_4", "fc_1", "fc_2", "output")
                names = [f"{layer}/{layer}/{weight}" for layer in layers for weight in ("kernel:0", "bias:0")]
                same = all(np.array_equal(ours[n][()], published[n][()]) for n in names)
        print(f"oracle lab3 order[:{channels}] vs lab3_pruned_drop{drop}.h5: "
              f"{'identical' if same else 'DIFFERENT'} ({len(names)} weight tensors)")


def speed_figures(inputs: int) -> None:
    model = read_model(FIXTURES / "ytf/sunglasses_bd_net.h5")
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (inputs, 55, 47, 3)).astype(np.float32))
    with torch.no_grad():
        sets = {"clean": EvalSet(x, torch.cat([model(x[s:s + 1024]).argmax(1) for s in range(0, inputs, 1024)]))}
    order = list(np.random.default_rng(1).permutation(60))
    started = time.perf_counter()
    fast = prune_sweep(model, "conv_3", order, sets)
    incremental = time.perf_counter() - started
    started = time.perf_counter()
    slow = naive_sweep(model, "conv_3", order, sets)
    naive = time.perf_counter() - started
    agree = np.allclose(fast.accuracy["clean"], slow.accuracy["clean"], atol=1 / inputs + 1e-12)
    print(f"\nsweep of conv_3 (60 channels, 61 evaluations) over {inputs:,} inputs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'naive (whole model per step)':<34} {naive:8.1f} s")
    print(f"{'incremental (bdscreen)':<34} {incremental:8.1f} s   {naive / incremental:.1f}x faster; "
          f"curves {'equal' if agree else 'DIFFER'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=11_547)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--seed", type=int, default=2,
                        help=f"seed of the fresh BadNets ({repair_cases.DEV_SEEDS}: development)")
    parser.add_argument("--families", default=",".join(repair_cases.FAMILIES))
    parser.add_argument("--kinds", default=",".join(repair_cases.KINDS))
    args = parser.parse_args()
    if not args.skip_mnist:
        mnist_figures(args.seed, tuple(args.families.split(",")), tuple(args.kinds.split(",")))
    oracle_figures()
    if not args.skip_speed:
        speed_figures(args.inputs)


if __name__ == "__main__":
    main()
