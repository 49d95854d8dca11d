"""Repair on real data and the speed of the pruning sweep, in one run.

    .venv/bin/python -m bench.repair [--inputs 11547] [--skip-speed] [--skip-mnist]

1. The project's MNIST BadNet (worker/badnet.py: trained on 6,000 real t10k images with a white 4x4
   patch -> class 0 on 10 % of them; the defender's 2,000 clean images and the 2,000 evaluation images
   are disjoint from those and from each other), scanned by the engine: pruning alone and fine-pruning
   at 2 / 4 / 10 points, and the recommended GoodNet, all figures on the evaluation images.
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

from bench import FIXTURES
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


def mnist_figures() -> None:
    case = mnist_badnet(FIXTURES)
    print(f"MNIST BadNet ({case.meta['trigger']} -> {case.meta['target']}): clean accuracy "
          f"{pct(case.meta['clean_accuracy'])} %, attack success {pct(case.meta['attack_success_rate'])} % "
          f"(2,000 evaluation images, {len(np.load(case.poisoned)['y'])} triggered)")
    inputs = ScanInputs(case.model, clean_data=case.clean, eval_data=case.evaluation, poisoned_data=case.poisoned)
    print(f"\n{'repair':<14} {'drop':>5} {'pruned':>6} {'clean acc %':>11} {'attack %':>9} "
          f"{'GoodNet: acc %':>14} {'false alarm %':>13} {'detection %':>11}")
    for fine_tune in (False, True):
        options = ScanOptions.model_validate({"preprocessing": {"divide_by": 255}, "detectors": [],
                                              "repair": {"fine_tune": fine_tune}})
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            report = run_scan(inputs, options, Path(tmp))
            elapsed = time.perf_counter() - started
        name = "fine-pruning" if fine_tune else "pruning alone"
        base = report.repair.baseline
        print(f"{name:<14} {'0':>5} {0:>6} {pct(base.clean_accuracy):>11} {pct(base.attack_success_rate):>9}")
        goodnets = {g.threshold: g for g in report.goodnets}
        for m in report.repair.models:
            g = goodnets.get(m.threshold)
            mark = " <- recommended" if g and g.recommended else ""
            print(f"{name:<14} {m.threshold:>5g} {m.channels_pruned if m.reached else '-':>6} "
                  f"{pct(m.clean_accuracy):>11} {pct(m.attack_success_rate):>9} "
                  f"{pct(g.clean_accuracy if g else None):>14} {pct(g.false_alarm_rate if g else None):>13} "
                  f"{pct(g.detection_rate if g else None):>11}{mark}")
        print(f"{'':<14} scan time {elapsed:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in report.timings.items())})")


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
    args = parser.parse_args()
    if not args.skip_mnist:
        mnist_figures()
    oracle_figures()
    if not args.skip_speed:
        speed_figures(args.inputs)


if __name__ == "__main__":
    main()
