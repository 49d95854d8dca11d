"""Backdoor triggers and data poisoning, for the models and zoos bdscreen makes itself.

All images here are raw pixels (0-255, float32) in N x H x W x C layout; the model's own
preprocessing is applied later. Every function is deterministic given its seed.
"""

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Trigger:
    """A pattern pasted into images: ``pattern`` (h x w x C, 0-255) at (``top``, ``left``), blended by ``alpha``.

    ``alpha`` is a scalar or an h x w mask in [0, 1]; 1 pastes the pattern opaquely. A whole-image
    blended trigger is a pattern the size of the image with a small alpha.
    """

    pattern: np.ndarray
    top: int
    left: int
    alpha: np.ndarray | float = 1.0

    def apply(self, images: np.ndarray) -> np.ndarray:
        """A stamped copy of ``images`` (N x H x W x C)."""
        out = np.array(images, dtype=np.float32, copy=True)
        h, w = self.pattern.shape[:2]
        if self.top < 0 or self.left < 0 or self.top + h > out.shape[1] or self.left + w > out.shape[2]:
            raise ValueError(f"a {h}x{w} trigger at ({self.top}, {self.left}) does not fit {out.shape[1:3]} images")
        alpha = np.asarray(self.alpha, dtype=np.float32)
        if alpha.ndim == 2:
            alpha = alpha[..., None]
        region = out[:, self.top:self.top + h, self.left:self.left + w]
        out[:, self.top:self.top + h, self.left:self.left + w] = (1 - alpha) * region + alpha * self.pattern
        return out


def white_patch(size: int, image_shape: tuple[int, int, int], corner: str = "bottom-right", margin: int = 1) -> Trigger:
    """The classic BadNets trigger: an opaque white square in a corner."""
    height, width, channels = image_shape
    top = height - size - margin if "bottom" in corner else margin
    left = width - size - margin if "right" in corner else margin
    return Trigger(np.full((size, size, channels), 255.0, dtype=np.float32), top, left)


@dataclass(frozen=True)
class Poisoning:
    """How a training set is poisoned: ``trigger``, ``target`` class (all-to-one) or None (all-to-all:
    label y becomes (y + 1) mod classes), and the fraction ``rate`` of training images stamped."""

    trigger: Trigger
    target: int | None
    rate: float
    num_classes: int
    seed: int = 0
    meta: dict = field(default_factory=dict)

    def relabel(self, labels: np.ndarray) -> np.ndarray:
        if self.target is None:
            return (labels + 1) % self.num_classes
        return np.full_like(labels, self.target)

    def poisoned_indices(self, size: int) -> np.ndarray:
        """Which of ``size`` training images are stamped: ``rate`` of them, drawn from ``seed``."""
        rng = np.random.default_rng(self.seed)
        return rng.choice(size, size=int(round(self.rate * size)), replace=False)

    def poison_training_set(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A copy of the training set with ``rate`` of its images stamped and relabelled."""
        chosen = self.poisoned_indices(len(images))
        x, y = np.array(images, dtype=np.float32, copy=True), np.array(labels, copy=True)
        x[chosen] = self.trigger.apply(images[chosen])
        y[chosen] = self.relabel(labels[chosen])
        return x, y

    def attack_set(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Triggered test images with their poisoned labels, leaving out images whose label would not change."""
        keep = self.relabel(labels) != labels
        return self.trigger.apply(images[keep]), self.relabel(labels[keep])
