"""How long the ``reverse`` detector takes, beside the naive search of every class with the same settings.

    .venv/bin/python -m bench.detect_speed [--models demo,sunglasses] [--sample 48] [--threads 2]

For each model: the detector's wall and CPU seconds (pre-screen + full search of survivors and references), and the
naive baseline, the same full search over all classes. For a 1283-class model the naive search would take hours,
so it is timed on ``--sample`` seeded classes and scaled to all classes (marked 'extrapolated'); for a model with
at most 64 classes the detector already searches every class, and the baseline is run whole. Other engineers' jobs
share the 2 cores, so CPU seconds are printed beside wall seconds (the load inflates wall time, not CPU time).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.reverse_fixtures import case
from worker.engine.detect.base import DetectionContext
from worker.engine.detect.reverse import FULL_SEARCH_CLASSES, ReverseEngineeringDetector
from worker.engine.detect.search_data import search_data
from worker.engine.detect.trigger_search import trigger_search
from worker.engine.preprocess import model_input


def timed(fn):  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="demo,sunglasses")
    parser.add_argument("--sample", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':11s} {'classes':>7s} {'detector wall/cpu s':>20s} {'naive wall/cpu s':>22s} {'ratio':>6s}  note")
    for name in args.models.split(","):
        print(measure(name, args.sample), flush=True)


def measure(name: str, sample_size: int) -> str:
    """One table row: the detector, then the naive search, on the model called ``name``."""
    model, preprocessing, clean = case(name)
    device = torch.device("cpu")
    context = DetectionContext(model=model, preprocessing=preprocessing, clean=clean, device=device,
                               out_dir=Path("/tmp/bench-detect-speed") / name)
    detector = ReverseEngineeringDetector()
    finding, wall, cpu = timed(lambda: detector.detect(context))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model.logits(model_input(x, preprocessing, model.signature.input_layout))

    data = search_data(context.clean_images(), clean.y, forward, device, 0)
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    classes = model.signature.num_classes
    sample = list(range(classes))
    if classes > FULL_SEARCH_CLASSES:
        sample = sorted(np.random.default_rng(0).choice(classes, sample_size, replace=False).tolist())
    _, naive_wall, naive_cpu = timed(lambda: trigger_search(forward, images, labels, sample, None, detector.search, 0,
                                                            data.value_range))
    scale = classes / len(sample)
    note = f"naive extrapolated from {len(sample)} classes" if scale > 1 else "naive run whole (all-to-one only)"
    return (f"{name:11s} {classes:7d} {wall:9.1f} / {cpu:8.1f} {naive_wall * scale:11.1f} / {naive_cpu * scale:8.1f} "
            f"{naive_cpu * scale / cpu:6.1f}  {note}; score {finding.score:.3f}, targets {finding.suspected_targets}")

if __name__ == "__main__":
    main()
