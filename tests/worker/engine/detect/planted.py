"""Tiny models with a hand-planted backdoor and their clean twins, read back through bdscreen's ONNX reader.

The twin pair shares its weights: a one-hidden-layer (16 ReLU units) 10-class classifier on 8 x 8 grey images
(x / 255). In the backdoored one, hidden unit 0 is a trigger detector, relu(10 * (sum of the four top-left pixels - 2)),
wired to class 0 alone with weight ``BOOST``: a 2 x 2 white patch in the corner sends any image to class 0. In the
clean twin, unit 0 is an ordinary random unit like the others.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from worker.engine.canonical import CanonicalModel
from worker.engine.data import Dataset
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.formats import read_model
from worker.engine.preprocess import Preprocessing

SIDE = 8
HIDDEN = 16
CLASSES = 10
TARGET = 0
BOOST = 60.0
PREPROCESSING = Preprocessing(divide_by=255.0)
TRIGGER_MASK = torch.zeros(SIDE, SIDE)
TRIGGER_MASK[:2, :2] = 1.0


class Planted(nn.Module):
    def __init__(self, backdoored: bool, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(SIDE * SIDE, HIDDEN)
        self.output = nn.Linear(HIDDEN, CLASSES)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.randn(HIDDEN, SIDE * SIDE, generator=generator) * 0.3)
            self.hidden.bias.zero_()
            self.output.weight.copy_(torch.randn(CLASSES, HIDDEN, generator=generator) * 0.5)
            self.output.bias.zero_()
            if backdoored:  # unit 0 becomes the trigger detector, wired to the target class only
                self.hidden.weight[0] = 10.0 * TRIGGER_MASK.reshape(-1)
                self.hidden.bias[0] = -20.0
                self.output.weight[:, 0] = 0.0
                self.output.weight[TARGET, 0] = BOOST

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.output(torch.relu(self.hidden(x.flatten(1)))), dim=1)


def planted_model(folder: Path, backdoored: bool) -> CanonicalModel:
    path = folder / ("planted.onnx" if backdoored else "twin.onnx")
    module = Planted(backdoored).eval()
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


def corner_trigger(target: int = TARGET) -> ReversedTrigger:
    """The planted trigger as a trigger detector would reverse it: the 2 x 2 corner, white."""
    return ReversedTrigger(target=target, mask=TRIGGER_MASK.numpy().astype(np.float32),
                           pattern=np.full((SIDE, SIDE, 1), 255.0, np.float32), attack_success=1.0)
