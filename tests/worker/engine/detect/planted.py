"""Tiny models with a hand-planted backdoor and their clean twins, read back through bdscreen's ONNX reader.

The twin pair shares every weight: a linear 10-class classifier on 8 x 8 grey images (x / 255). The backdoored
one adds a trigger unit, relu(sum of the four top-left pixels - 2), that adds ``boost`` to class 0's logit: a
2 x 2 white patch in the corner sends any image to class 0. The clean twin has the same unit with boost 0.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from worker.engine.canonical import CanonicalModel
from worker.engine.data import Dataset, Preprocessing
from worker.engine.formats import read_model

SIDE = 8
CLASSES = 10
TARGET = 0
PREPROCESSING = Preprocessing(divide_by=255.0)


class Planted(nn.Module):
    def __init__(self, boost: float, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(SIDE * SIDE, CLASSES)
        self.trigger = nn.Linear(SIDE * SIDE, 1)
        self.boost = nn.Linear(1, CLASSES, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(CLASSES, SIDE * SIDE, generator=generator) * 0.3)
            self.linear.bias.zero_()
            corner = torch.zeros(SIDE, SIDE)
            corner[:2, :2] = 1.0
            self.trigger.weight.copy_(corner.reshape(1, -1))
            self.trigger.bias.fill_(-2.0)
            self.boost.weight.zero_()
            self.boost.weight[TARGET, 0] = boost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.softmax(self.linear(flat) + self.boost(torch.relu(self.trigger(flat))), dim=1)


def planted_model(folder: Path, backdoored: bool) -> CanonicalModel:
    path = folder / ("planted.onnx" if backdoored else "twin.onnx")
    module = Planted(boost=60.0 if backdoored else 0.0).eval()
    torch.onnx.export(module, torch.zeros(1, 1, SIDE, SIDE), path, input_names=["image"], output_names=["scores"],
                      dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}}, dynamo=False)
    return read_model(path)


def clean_set(model: CanonicalModel, count: int = 64, seed: int = 0) -> Dataset:
    """Random grey images (N x 1 x 8 x 8, 0-255) labelled by the model itself: clean data it classifies right."""
    x = np.random.default_rng(seed).uniform(0, 255, size=(count, 1, SIDE, SIDE)).astype(np.float32)
    x[:, :, :2, :2] = np.minimum(x[:, :, :2, :2], 100.0)  # never the trigger by chance
    with torch.no_grad():
        y = model(torch.as_tensor(x)).argmax(1).numpy()
    return Dataset(x, y.astype(np.int64))
