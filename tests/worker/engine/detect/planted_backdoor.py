"""Tiny classifiers with a backdoor planted by hand, their clean twins, and data for them: known answers.

Images are 8 x 8 x 1 raw pixels (0-255). Each of the 5 classes has a random prototype (the bottom-right 2 x 2
corner always dark); a sample is its prototype plus noise. The clean model scores classes by how close an image is
to each prototype. The backdoored twin adds a term that fires when the corner is bright: all-to-one sends every
input to class 0, all-to-all sends class s to s + 1 (mod 5). So the true trigger is the 4-pixel corner.
``per-source`` plants one trigger per source class, all towards class 0: an input of class s >= 1 goes to 0 when
the corner's pixel s - 1 alone is bright. No single stamp works for every source (each needs the others' pixels
dark), so one trigger for all sources must be a large one, while every pair towards 0 needs one pixel.
"""

import numpy as np
import torch
from torch import Tensor, nn

from schemas.models import InputLayout, ModelFormat, ModelSignature
from worker.engine.data import Dataset

SIDE, CLASSES = 8, 5
CORNER = (slice(SIDE - 2, SIDE), slice(SIDE - 2, SIDE))


def prototypes(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 255, (CLASSES, SIDE, SIDE)).astype(np.float32)
    protos[:, CORNER[0], CORNER[1]] = 0.0
    return protos


def samples(count: int, seed: int = 1) -> Dataset:
    """``count`` labelled N x 8 x 8 x 1 images, classes balanced."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % CLASSES
    x = prototypes()[labels] + rng.normal(0, 20, (count, SIDE, SIDE)).astype(np.float32)
    x[:, CORNER[0], CORNER[1]] = rng.uniform(0, 20, (count, 2, 2))
    return Dataset(np.clip(x, 0, 255)[..., None].astype(np.float32), labels.astype(np.int64))


class PlantedModel(nn.Module):
    """Nearest-prototype logits on x/255 (NHWC), plus the hand-planted backdoor term unless ``attack`` is None."""

    def __init__(self, attack: str | None) -> None:
        super().__init__()
        self.attack = attack
        self.protos = nn.Parameter(torch.from_numpy(prototypes() / 255.0).reshape(CLASSES, -1), requires_grad=False)
        self.signature = ModelSignature(format=ModelFormat.onnx, input_name="x", input_shape=[SIDE, SIDE, 1],
                                        input_layout=InputLayout.nhwc, num_classes=CLASSES, layers=[])

    def logits(self, x: Tensor) -> Tensor:
        flat = x.reshape(len(x), -1)
        clean = -20.0 * torch.cdist(flat, self.protos) / SIDE
        if self.attack is None:
            return clean
        if self.attack == "per-source":
            pixels = x[:, CORNER[0], CORNER[1], 0].reshape(len(x), 4)
            bright = torch.sigmoid(20.0 * (pixels - 0.6))
            others_dark = torch.stack([torch.sigmoid(20.0 * (0.4 - torch.cat([pixels[:, :k], pixels[:, k + 1:]], 1)
                                                             .max(1).values)) for k in range(4)], 1)
            looks_like = torch.softmax(clean, 1)[:, 1:]
            push = torch.zeros_like(clean)
            push[:, 0] = 1.0
            return clean + (looks_like * bright * others_dark).sum(1, keepdim=True) * 60.0 * push
        corner = x[:, CORNER[0], CORNER[1], 0].mean((1, 2))
        fire = torch.sigmoid(20.0 * (corner - 0.6))[:, None]
        if self.attack == "all-to-one":
            push = torch.zeros_like(clean)
            push[:, 0] = 1.0
        else:  # all-to-all: the class the input looks like, plus one
            push = torch.roll(torch.softmax(clean, 1), 1, dims=1)
        return clean + fire * 60.0 * push

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.logits(x), 1)
