"""A trigger towards one target whose mask may cover no more than a fixed L1: searched after a repair
(:mod:`worker.engine.repair.recheck`) and kept alive during unlearning as an adversary
(:mod:`worker.engine.repair.unlearn`).

Several starts of the same search are optimised together (a leading dimension K): each is a mask (H x W, through a
sigmoid) and a pattern (H x W x C, through a sigmoid onto the data's value range). A mask whose L1 exceeds the
limit is scaled down to it, so the search can only move coverage around, not grow it: that cap is what makes a
trigger found this way evidence of a backdoor rather than of the model's ordinary frailty.
"""

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.detect.trigger import ReversedTrigger

#: Adam on the logits; beta1 0.5 lets the search turn quickly when the model it attacks changes under it.
LEARNING_RATE = 0.1


class BoundedTrigger:
    """K starts of a mask + pattern trigger towards ``target`` (from ``source`` only, when set), mask L1 <= limit."""

    def __init__(self, masks: Tensor, patterns: Tensor, target: int, source: int | None, limit: float,
                 value_range: tuple[float, float], device: torch.device) -> None:
        """``masks``: K x H x W in (0, 1); ``patterns``: K x H x W x C, as fractions of the value range in (0, 1)."""
        self.target, self.source, self.limit = target, source, limit
        self.low, self.high = value_range
        self.mask_logit = torch.logit(masks.clamp(0.02, 0.98)).to(device).requires_grad_(True)
        self.pattern_logit = torch.logit(patterns.clamp(0.02, 0.98)).to(device).requires_grad_(True)
        self.optimiser = torch.optim.Adam([self.mask_logit, self.pattern_logit], lr=LEARNING_RATE, betas=(0.5, 0.9))

    @classmethod
    def around(cls, old: ReversedTrigger, limit: float, value_range: tuple[float, float], device: torch.device,
               elsewhere: torch.Generator | None = None) -> "BoundedTrigger":
        """Starting from the reversed trigger ``old``; with ``elsewhere`` also from a uniform mask with a pattern drawn
        from that generator (a second start, for a trigger the reversal did not see)."""
        low, high = value_range
        mask = torch.as_tensor(old.mask, dtype=torch.float32)
        pattern = (torch.as_tensor(old.pattern, dtype=torch.float32) - low) / max(high - low, 1e-6)
        masks, patterns = [mask], [pattern]
        if elsewhere is not None:
            h, w = mask.shape
            masks.append(torch.full((h, w), min(limit / (h * w), 0.5)))
            patterns.append(torch.sigmoid(0.5 * torch.randn(pattern.shape, generator=elsewhere)))
        return cls(torch.stack(masks), torch.stack(patterns), old.target, old.source, limit, value_range, device)

    @property
    def starts(self) -> int:
        return len(self.mask_logit)

    def current(self) -> tuple[Tensor, Tensor]:
        """(masks K x H x W, patterns K x H x W x C in raw values), differentiable."""
        mask = torch.sigmoid(self.mask_logit)
        mask = mask * (self.limit / mask.sum((1, 2), keepdim=True)).clamp(max=1.0)
        return mask, self.low + (self.high - self.low) * torch.sigmoid(self.pattern_logit)

    def stamp(self, x: Tensor) -> Tensor:
        """Every image stamped with every start: (K * N) x H x W x C, start-major."""
        mask, pattern = self.current()
        m = mask[:, None, :, :, None]
        return ((1 - m) * x[None] + m * pattern[:, None]).reshape(-1, *x.shape[1:])

    def push(self, logits_of: Callable[[Tensor], Tensor], x: Tensor) -> None:
        """One step towards sending ``x`` (stamped) to the target; the model's own gradients are left untouched."""
        if not len(x):
            return
        logits = logits_of(self.stamp(x))
        loss = F.cross_entropy(logits, torch.full((len(logits),), self.target, device=logits.device))
        grads = torch.autograd.grad(loss, [self.mask_logit, self.pattern_logit])
        for parameter, grad in zip((self.mask_logit, self.pattern_logit), grads, strict=True):
            parameter.grad = grad
        self.optimiser.step()

    def trigger(self, start: int = 0) -> ReversedTrigger:
        """Start ``start`` as it stands, its attack success not yet measured (0)."""
        with torch.no_grad():
            mask, pattern = self.current()
        return ReversedTrigger(self.target, mask[start].cpu().numpy().astype(np.float32).copy(),
                               pattern[start].cpu().numpy().astype(np.float32).copy(), 0.0, self.source)
