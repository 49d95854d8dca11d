"""The verdict on the real BadNets of the fixtures and on the demo's BadNet: detection only, default detectors.

    .venv/bin/python -m bench.detect_fixtures [--threads 1] [--only NAME]

Each case runs the scan engine (``run_scan`` with repair disabled, as ``bdscreen scan --no-repair`` does) and
prints the verdict, its probability, the suspected targets, the detection stage's seconds and each detector's
score. The YouTube-Face BadNets run twice: with only the five clean face samples of the fixtures (``cl_*.png``)
and with no data at all. The demo BadNet (built and cached by ``python -m worker.demo`` if missing) is scanned
with 300 of its defender's clean images.
"""

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench import FIXTURES
from schemas.scan import RepairOptions, ScanOptions
from worker.engine.data import read_image_folder
from worker.engine.scan import run_scan
from worker.engine.stages import ScanInputs

YTF = FIXTURES / "ytf"


def face_samples(folder: Path) -> Path:
    """The five clean face samples as an NPZ (N x 55 x 47 x 3, raw pixels), labelled from their file names."""
    images, names = read_image_folder(YTF / "samples")
    keep = [i for i, name in enumerate(names) if name.startswith("cl_")]
    labels = [int(re.search(r"label=(\d+)", names[i]).group(1)) for i in keep]
    path = folder / "faces.npz"
    np.savez(path, x=images[keep], y=np.array(labels))
    return path


def cases(folder: Path) -> list[tuple[str, ScanInputs, dict, str]]:
    from worker.demo.badnet import mnist_badnet

    faces = face_samples(folder)
    demo = mnist_badnet(FIXTURES)
    demo_clean = folder / "demo-clean.npz"
    with np.load(demo.clean) as data:
        np.savez(demo_clean, x=data["x"][:300], y=data["y"][:300])
    sunglasses = YTF / "sunglasses_bd_net.h5"
    lab3, architecture = YTF / "lab3_bd_weights.h5", YTF / "deepid_architecture.json"
    return [
        ("csaw clean-label MNIST BadNet", ScanInputs(FIXTURES / "mnist" / "csaw_c_clean_label_bd_net.h5",
                                                     clean_data=demo_clean), {"divide_by": 255.0}, "unpublished"),
        ("demo MNIST BadNet", ScanInputs(demo.model, clean_data=demo_clean), {"divide_by": 255.0}, "0"),
        ("sunglasses_bd_net, 5 faces", ScanInputs(sunglasses, clean_data=faces), {"divide_by": 255.0}, "0"),
        ("sunglasses_bd_net, no data", ScanInputs(sunglasses), {"divide_by": 255.0}, "0"),
        ("lab3_bd_weights, 5 faces", ScanInputs(lab3, architecture, clean_data=faces), {}, "0"),
        ("lab3_bd_weights, no data", ScanInputs(lab3, architecture), {}, "0"),
    ]


def _score(finding) -> str:  # type: ignore[no-untyped-def]
    if not finding.applicable:
        return "n/a"
    return "ran" if finding.score is None else f"{finding.score:.2f}"  # evidence-only detectors have no score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="run only the cases whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"{'case':32s} {'verdict':12s} {'prob':>5s} {'targets':>8s} {'true':>6s} {'detect s':>8s}  detectors")
        for name, inputs, preprocessing, truth in cases(folder):
            if args.only and args.only not in name:
                continue
            options = ScanOptions(preprocessing=preprocessing, repair=RepairOptions(enabled=False))
            report = run_scan(inputs, options, folder / name.replace(" ", "_").replace(",", ""))
            scores = ", ".join(f"{f.detector} {_score(f)}" for f in report.findings)
            errors = "; ".join(f"{e.stage}: {e.message}" for e in report.errors)
            probability = "-" if report.score is None else f"{report.score:.2f}"
            targets = ",".join(map(str, report.suspected_targets)) or "-"
            print(f"{name:32s} {report.verdict.value:12s} {probability:>5s} {targets:>8s} {truth:>6s} "
                  f"{report.timings.get('detect', 0):8.1f}  {scores}{'  ERRORS ' + errors if errors else ''}",
                  flush=True)


if __name__ == "__main__":
    main()
