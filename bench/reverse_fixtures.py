"""Run the trigger reverse-engineering detector (and Integrated Gradients when registered) on the fixtures' BadNets.

    .venv/bin/python -m scripts.reverse_fixtures [sunglasses|lab3|csaw|demo ...] [--out DIR]

Prints one line per model: score, suspected targets, anomaly index, held-out attack success, the IoU of the
reversed mask with the sunglasses region (YouTube-Face models), wall and CPU seconds. The faces are the five clean
samples ``ytf/samples/cl_*.png`` only; MNIST models get 200 t10k images (the demo BadNet: its own defender data).
"""

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worker.engine.canonical import default_device
from worker.engine.data import Dataset, read_mnist_idx
from worker.engine.detect import DETECTORS, DetectionContext
from worker.engine.formats import read_model
from worker.engine.preprocess import Preprocessing

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")


def faces() -> Dataset:
    paths = sorted((FIXTURES / "ytf/samples").glob("cl_*.png"))
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])
    y = np.array([int(re.search(r"label=(\d+)", p.name).group(1)) for p in paths])  # type: ignore[union-attr]
    return Dataset(x, y)


def sunglasses_region() -> np.ndarray:
    """The official poisoning's mask on a 55 x 47 face: the trigger's alpha pasted at x=0, y=15."""
    alpha = np.asarray(Image.open(FIXTURES / "ytf/sunglasses_trigger.png").convert("RGBA"), np.float32)[..., 3] / 255
    region = np.zeros((55, 47), np.float32)
    h, w = alpha.shape
    region[15:15 + h, 0:w] = alpha[: 55 - 15, :47]
    return region > 0.5


def iou(mask: np.ndarray, region: np.ndarray, level: float = 0.5) -> float:
    found = mask >= level
    return float((found & region).sum() / max((found | region).sum(), 1))


def case(name: str):  # type: ignore[no-untyped-def]
    if name == "sunglasses":
        return read_model(FIXTURES / "ytf/sunglasses_bd_net.h5"), Preprocessing(divide_by=255), faces()
    if name == "lab3":
        return (read_model(FIXTURES / "ytf/lab3_bd_weights.h5", FIXTURES / "ytf/deepid_architecture.json"),
                Preprocessing(), faces())
    x, y = read_mnist_idx(FIXTURES / "mnist/t10k-images-idx3-ubyte.gz", FIXTURES / "mnist/t10k-labels-idx1-ubyte.gz")
    if name == "csaw":
        model = read_model(FIXTURES / "mnist/csaw_c_clean_label_bd_net.h5")
        return model, Preprocessing(divide_by=255), Dataset(x[-200:].reshape(-1, 28, 28, 1).astype(np.float32),
                                                            y[-200:])
    from worker.demo.badnet import mnist_badnet
    badnet = mnist_badnet(FIXTURES)
    data = np.load(badnet.clean)
    return (read_model(badnet.model), Preprocessing(divide_by=255),
            Dataset(data["x"][:200].reshape(-1, 28, 28, 1).astype(np.float32), data["y"][:200]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["demo", "csaw", "sunglasses", "lab3"])
    parser.add_argument("--out", type=Path, default=Path("out/reverse-fixtures"))
    parser.add_argument("--detectors", default="reverse,ig")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models:
        model, preprocessing, clean = case(name)
        device = default_device()
        context = DetectionContext(model=model.to(device), preprocessing=preprocessing, clean=clean, device=device,
                                   out_dir=args.out / name)
        for detector_name in args.detectors.split(","):
            detector = DETECTORS.get(detector_name)
            if detector is None:
                continue
            began, cpu = time.perf_counter(), time.process_time()
            why = detector.applicable(context)
            finding = detector.detect(context) if why is None else None
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
            if finding is None:
                print(f"{name:10s} {detector_name}: not applicable: {why}")
                continue
            line = {"model": name, "detector": detector_name, "score": finding.score,
                    "targets": finding.suspected_targets, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
            if detector_name == "reverse":
                evidence = finding.evidence
                line.update(anomaly=evidence["anomaly_index"], cut=evidence["anomaly_threshold"],
                            triggers=evidence["triggers"], rank=evidence.get("prescreen_rank_of_suspect"),
                            smallest=evidence["smallest_masks"][:3])
                if name in ("sunglasses", "lab3") and context.triggers:
                    line["iou_sunglasses"] = round(iou(context.triggers[0].mask, sunglasses_region()), 3)
            else:
                line.update(finding.evidence)
            print(json.dumps(line), flush=True)
            (args.out / name).mkdir(parents=True, exist_ok=True)
            (args.out / name / f"{detector_name}-finding.json").write_text(finding.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
