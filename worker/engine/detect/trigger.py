"""A trigger reverse-engineered from a model: what the trigger detectors find and the repair unlearns.

Everything is in raw pixel space (N x H x W x C, before the model's preprocessing), like the data files and the
attacks of :mod:`worker.zoo.attacks`, so one trigger serves detection, attribution, unlearning and the GoodNet.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class ReversedTrigger:
    """``x' = (1 - mask) * x + mask * pattern``, sending inputs to ``target`` (from ``source`` only, when set)."""

    target: int
    #: H x W, float32 in [0, 1].
    mask: np.ndarray
    #: H x W x C, float32 raw pixels.
    pattern: np.ndarray
    #: Fraction of held-out clean inputs (not already of ``target``) that the stamped trigger sends to ``target``.
    attack_success: float
    #: Source class for a source-specific (all-to-all, pairwise) trigger; None when it works from every class.
    source: int | None = None

    def stamp(self, images: np.ndarray) -> np.ndarray:
        """A stamped float32 copy of N x H x W x C raw images."""
        mask = self.mask.astype(np.float32)[None, :, :, None]
        return ((1 - mask) * np.asarray(images, np.float32) + mask * self.pattern[None]).astype(np.float32)

    def stamp_torch(self, images: Tensor) -> Tensor:
        """The same on a N x H x W x C tensor, differentiable in ``images``, on the tensor's device."""
        mask = torch.as_tensor(self.mask, dtype=images.dtype, device=images.device)[None, :, :, None]
        pattern = torch.as_tensor(self.pattern, dtype=images.dtype, device=images.device)[None]
        return (1 - mask) * images + mask * pattern
