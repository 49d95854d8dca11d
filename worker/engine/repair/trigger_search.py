"""A quick trigger reverse-engineering (Neural Cleanse, all classes at once) for when detection handed none.

The detectors normally fill ``DetectionContext.triggers``; repair calls this only when it has no reversed trigger
and is asked to unlearn one. For every candidate target a mask m (H x W) and a pattern p (H x W x C, raw pixels)
are optimised together so that (1 - m) x + m p goes to the target, with an L1 cost on the mask that is raised
while the trigger works and lowered while it does not (Neural Cleanse's schedule). The targets whose smallest
working mask is an outlier on the low side (anomaly index of log L1 above 2, median absolute deviation) are
suspected; the smallest one always is, so repair has something to unlearn, and so is every target whose smallest
trigger is within ``RUNNER_UP`` of it: a short search's sizes are noisy, and on models whose clean classes also take
small triggers the real target need not come first (development cnn2-avg-bn patch BadNet: the real target's mask
was 11.7 pixels, another class's 10.5; unlearning only that one left 49 % attack success). Unlearning a clean
class's trigger as well costs little, and the choice rule still decides whether the repair helped.
"""

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from worker.engine.canonical import CanonicalModel
from worker.engine.detect.trigger import ReversedTrigger
from worker.engine.preprocess import Preprocessing, model_input
from worker.engine.repair.raw import RawSet, trigger_success

WORKS = 0.95  # share of a batch sent to the target for a mask to count as a working trigger
ANOMALY = 2.0
#: Targets whose smallest mask is at most this many times the smallest one are kept beside it.
RUNNER_UP = 1.25


def search_triggers(model: CanonicalModel, preprocessing: Preprocessing, data: RawSet, held_out: RawSet,
                    steps: int = 120, batch_size: int = 12, seed: int = 0,
                    max_classes: int = 64) -> list[ReversedTrigger]:
    """Reversed triggers for the suspected targets, with their success on ``held_out`` clean inputs."""
    classes = model.signature.num_classes
    if classes > max_classes:
        return []  # a per-class search over many classes needs a pre-screen: the detector's job
    masks, patterns, sizes = _optimise(model, preprocessing, data, list(range(classes)), steps, batch_size, seed)
    triggers = []
    for k in suspected_targets(sizes):
        trial = ReversedTrigger(target=k, mask=masks[k], pattern=patterns[k], attack_success=0.0)
        triggers.append(replace(trial, attack_success=trigger_success(model, held_out, preprocessing, [trial]) or 0.0))
    return triggers


def suspected_targets(sizes) -> list[int]:
    """The targets to unlearn, given each class's smallest working mask (inf: none found): the low outliers, the
    smallest, and those within ``RUNNER_UP`` of it."""
    found = [k for k in range(len(sizes)) if np.isfinite(sizes[k])]
    if not found:
        return []
    logs = np.log(np.array([sizes[k] for k in found]))
    spread = 1.4826 * np.median(np.abs(logs - np.median(logs))) + 1e-12
    index = (np.median(logs) - logs) / spread
    close = np.flatnonzero(logs <= logs.min() + np.log(RUNNER_UP))
    return sorted({found[i] for i in np.flatnonzero(index > ANOMALY)} | {found[i] for i in close})


def _optimise(model, preprocessing, data, targets, steps, batch_size, seed):
    k = len(targets)
    n, h, w, c = data.x.shape
    device = next(model.parameters()).device
    low, high = float(data.x.min()), float(data.x.max())
    generator = torch.Generator().manual_seed(seed)
    mask_logit = torch.full((k, h, w), -2.0, device=device, requires_grad=True)
    pattern_logit = (0.5 * torch.randn(k, h, w, c, generator=generator)).to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([mask_logit, pattern_logit], lr=0.1, betas=(0.5, 0.9))
    cost = torch.full((k,), 1e-3, device=device)
    streak = torch.zeros(k, device=device)  # > 0: consecutive working steps, < 0: failing ones
    target = torch.tensor(targets, device=device).repeat_interleave(batch_size)
    best_size = np.full(k, np.inf)
    best_mask, best_pattern = [None] * k, [None] * k
    layout = model.signature.input_layout
    for _ in range(steps):
        x = data.x[torch.randint(n, (batch_size,), generator=generator)].to(device)
        mask = torch.sigmoid(mask_logit)[:, None, :, :, None]
        pattern = low + (high - low) * torch.sigmoid(pattern_logit)[:, None]
        stamped = ((1 - mask) * x[None] + mask * pattern).reshape(k * batch_size, h, w, c)
        logits = model.logits(model_input(stamped, preprocessing, layout))
        loss_each = F.cross_entropy(logits, target, reduction="none").reshape(k, batch_size).mean(1)
        size = mask.reshape(k, -1).sum(1)
        optimiser.zero_grad(set_to_none=True)
        (loss_each + cost * size).sum().backward(inputs=[mask_logit, pattern_logit])  # never the model's weights
        optimiser.step()
        with torch.no_grad():
            works = (logits.argmax(1) == target).float().reshape(k, batch_size).mean(1) >= WORKS
            for i in torch.nonzero(works & (size < torch.as_tensor(best_size, device=device))).flatten().tolist():
                best_size[i] = float(size[i])
                best_mask[i] = mask[i, 0, :, :, 0].cpu().numpy().copy()
                best_pattern[i] = pattern[i, 0].cpu().numpy().copy()
            streak = torch.where(works, streak.clamp(min=0) + 1, streak.clamp(max=0) - 1)
            cost = torch.where(streak >= 5, cost * 1.5, torch.where(streak <= -5, cost / 1.5 ** 1.5, cost))
            streak = torch.where(streak.abs() >= 5, torch.zeros_like(streak), streak)
    return best_mask, best_pattern, best_size
