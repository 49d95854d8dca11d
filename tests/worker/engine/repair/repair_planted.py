"""A tiny backdoored model made in the test: 4 classes of 12 x 12 noisy templates, a 2 x 2 white patch -> class 0.

Small enough to train in about a second on one CPU thread, real enough that a trigger is learned and can be
unlearned. The model goes through ONNX and the project's reader, as an upload would.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.canonical import CanonicalModel
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.formats import read_model
from worker.engine.repair.raw import RawSet

SIDE, CLASSES, TARGET = 12, 4, 0


@dataclass
class Planted:
    model: CanonicalModel
    onnx: Path
    train: RawSet  # the defender's clean data
    evaluation: RawSet
    poisoned: RawSet  # triggered evaluation inputs labelled with the target
    trigger: ReversedTrigger  # the true trigger, in the ReversedTrigger form


def images(rng: np.random.Generator, templates: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(CLASSES, size=n)
    x = templates[y] + rng.normal(0, 40, (n, SIDE, SIDE, 1))
    return np.clip(x, 0, 255).astype(np.float32), y.astype(np.int64)


def true_trigger() -> ReversedTrigger:
    mask = np.zeros((SIDE, SIDE), np.float32)
    mask[-3:-1, -3:-1] = 1
    return ReversedTrigger(target=TARGET, mask=mask, pattern=np.full((SIDE, SIDE, 1), 255, np.float32),
                           attack_success=1.0)


def build_planted(folder: Path, seed: int = 0) -> Planted:
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 160, (CLASSES, SIDE, SIDE, 1))
    trigger = true_trigger()
    x, y = images(rng, templates, 1200)
    chosen = rng.random(len(x)) < 0.1
    x[chosen], y[chosen] = trigger.stamp(x[chosen]), TARGET
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 12, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(12 * 3 * 3, CLASSES), nn.Softmax(1))
    xt, yt = torch.from_numpy(x / 255).permute(0, 3, 1, 2).float(), torch.from_numpy(y)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(15):
        for batch in torch.randperm(len(xt)).split(64):
            optimiser.zero_grad()
            F.nll_loss(torch.log(net(xt[batch]) + 1e-9), yt[batch]).backward()
            optimiser.step()
    onnx = folder / "planted.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(1, 1, SIDE, SIDE),), str(onnx), input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      opset_version=17, dynamo=False)
    cx, cy = images(rng, templates, 600)
    ex, ey = images(rng, templates, 400)
    keep = ey != TARGET
    return Planted(read_model(onnx), onnx, RawSet(torch.from_numpy(cx), torch.from_numpy(cy)),
                   RawSet(torch.from_numpy(ex), torch.from_numpy(ey)),
                   RawSet(torch.from_numpy(trigger.stamp(ex[keep])), torch.full((int(keep.sum()),), TARGET)), trigger)


def save_npz(path: Path, data: RawSet) -> Path:
    """NCHW like the model, raw 0-255 pixels, as a user would upload them."""
    np.savez(path, x=data.x.numpy().transpose(0, 3, 1, 2), y=data.y.numpy())
    return path
