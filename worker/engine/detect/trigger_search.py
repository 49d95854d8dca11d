"""Neural Cleanse's mask + pattern search, batched over many candidates in one tensor.

For each candidate (a target class t, optionally a source class s) it minimises
``CE(f((1 - m) * x + m * p), t) + cost * mean(m)`` over a mask ``m`` (H x W, sigmoid-parametrised, in [0, 1]) and
a pattern ``p`` (H x W x C, sigmoid-parametrised between the data's lowest and highest raw value), in raw pixel
space, through the model's own preprocessing (``forward`` takes raw N x H x W x C pixels and returns logits). The
mask norm is its mean (the fraction of the image it covers), so one cost scale fits every input size.

All candidates share one forward pass: Adam is element-wise, so batching them changes the speed, not the result.
Each candidate's cost follows a smoothed form of Neural Cleanse's schedule: every step at or above the attack-success
goal multiplies it by ``cost_up``, every step below divides it by ``cost_up ** 1.5``; the smallest mask that
reached the goal on its batch is kept. Neural Cleanse's own schedule (x1.5 after 5 steps) stalled here: candidates
stopped at 5x their converged mask size because their cost was still too small to shrink the mask when the stall
rule fired, so the stall rule only counts steps once a candidate's cost is back at the initial cost.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Raw N x H x W x C pixels to logits (the model with its preprocessing in front).
Forward = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SearchSettings:
    steps: int = 300
    batch: int = 24
    lr: float = 0.1
    initial_cost: float = 1.0
    cost_up: float = 1.2
    success_goal: float = 0.9
    min_steps: int = 60
    stall: int = 30
    #: Every this many steps the current masks are judged on up to ``verify_images`` images of each candidate's
    #: pool; only a verified mask can become the best. Judging on the 24-image batch alone let masks through that
    #: sent only 61-86 % of held-out inputs to the target.
    verify_every: int = 5
    verify_images: int = 64
    #: Images per forward pass: candidates are optimised in chunks of about this many stamped images.
    chunk_images: int = 2048


@dataclass
class SearchResult:
    """Per candidate: the smallest mask that reached the goal, or the last one (``reached`` False) when none did."""

    targets: np.ndarray
    sources: np.ndarray  # -1: all sources
    masks: np.ndarray  # K x H x W
    patterns: np.ndarray  # K x H x W x C, raw pixels
    mask_l1: np.ndarray  # K: mean of the mask, the fraction of the image it covers
    reached: np.ndarray  # K bools
    steps: np.ndarray  # K: optimisation steps run
    final_loss: np.ndarray  # K: cross-entropy towards the target at the candidate's last step


def trigger_search(forward: Forward, images: Tensor, labels: Tensor, targets: list[int],
                   sources: list[int] | None = None, settings: SearchSettings | None = None, seed: int = 0,
                   value_range: tuple[float, float] = (0.0, 255.0)) -> SearchResult:
    """Search a trigger for every candidate; ``images`` raw N x H x W x C on the model's device, ``labels`` N."""
    s = settings or SearchSettings()
    src = [-1] * len(targets) if sources is None else list(sources)
    per_chunk = max(1, s.chunk_images // s.batch)
    parts = [_search(forward, images, labels, targets[i:i + per_chunk], src[i:i + per_chunk], s, seed + i,
                     value_range) for i in range(0, len(targets), per_chunk)]
    fields = ("targets", "sources", "masks", "patterns", "mask_l1", "reached", "steps", "final_loss")
    return SearchResult(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


def candidate_pools(labels: Tensor, targets: list[int], sources: list[int]) -> list[Tensor]:
    """For each candidate the images it is optimised on: its source's, else every image not of its target."""
    pools = []
    for t, s in zip(targets, sources, strict=True):
        pool = torch.nonzero(labels == s if s >= 0 else labels != t).flatten()
        pools.append(pool if len(pool) else torch.arange(len(labels)))
    return pools


def stamp(images: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """K x B x H x W x C stamped images from K x B images, K masks (H x W) and K patterns (H x W x C)."""
    m = mask[:, None, :, :, None]
    return (1 - m) * images + m * pattern[:, None]


def _search(forward: Forward, images: Tensor, labels: Tensor, targets: list[int], sources: list[int],
            s: SearchSettings, seed: int, value_range: tuple[float, float]) -> SearchResult:
    k, (h, w, c) = len(targets), tuple(images.shape[1:])
    device = images.device
    gen = torch.Generator().manual_seed(seed)
    lo, hi = value_range
    # A small random mask to start from (sigmoid(-2) = 0.12): every candidate starts alike.
    mask_raw = (torch.randn(k, h, w, generator=gen) * 0.1 - 2.0).to(device).requires_grad_(True)
    pattern_raw = (torch.randn(k, h, w, c, generator=gen) * 0.1).to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([mask_raw, pattern_raw], lr=s.lr, betas=(0.5, 0.9))
    cost = torch.full((k,), s.initial_cost, device=device)
    target_t = torch.tensor(targets, device=device)
    pools = candidate_pools(labels.cpu(), targets, sources)
    verify = torch.stack([p[torch.randperm(len(p), generator=gen)[:s.verify_images]].repeat(
        -(-s.verify_images // len(p)))[:s.verify_images] for p in pools]).to(device)
    best_l1 = np.full(k, np.inf)
    best_mask = np.zeros((k, h, w), np.float32)
    best_pattern = np.zeros((k, h, w, c), np.float32)
    last_improved = np.zeros(k, dtype=int)
    active = np.ones(k, dtype=bool)
    steps = np.zeros(k, dtype=int)
    final_ce = np.zeros(k, np.float32)
    for step in range(s.steps):
        # Batches are drawn for every candidate so that a candidate's batches do not depend on when others stop;
        # only the active ones are run. A stopped candidate gets no gradient either way (Adam's momentum still moves
        # its unused parameters), so running only the active ones changes the time, not the result.
        idx = torch.stack([p[torch.randint(len(p), (s.batch,), generator=gen)] for p in pools]).to(device)
        rows = np.flatnonzero(active)
        live = torch.as_tensor(rows, device=device)
        mask = torch.sigmoid(mask_raw[live])
        pattern = lo + (hi - lo) * torch.sigmoid(pattern_raw[live])
        logits = forward(stamp(images[idx[live]], mask, pattern).reshape(-1, h, w, c)).reshape(len(rows), s.batch, -1)
        ce = F.cross_entropy(logits.permute(0, 2, 1), target_t[live, None].expand(len(rows), s.batch),
                             reduction="none").mean(1)
        l1 = mask.mean((1, 2))
        optimiser.zero_grad(set_to_none=True)
        # Gradients for the mask and pattern only: the model's weights may require grad (a read model's do), and
        # computing theirs would nearly double the backward pass for nothing.
        (ce + cost[live] * l1).sum().backward(inputs=[mask_raw, pattern_raw])
        optimiser.step()
        with torch.no_grad():
            reached = np.zeros(k, dtype=bool)
            reached[rows] = ((logits.argmax(2) == target_t[live, None]).float().mean(1) >= s.success_goal).cpu().numpy()
            l1_now = np.full(k, np.inf)
            l1_now[rows] = l1.cpu().numpy()
            final_ce[rows] = ce.cpu().numpy()
            verified = np.zeros(k, dtype=bool)
            if step % s.verify_every == 0 or step == s.steps - 1:
                success = _success(forward, images, verify[live], mask, pattern, target_t[live])
                verified[rows] = success >= s.success_goal
            smaller = verified & (l1_now < best_l1) & active
            settled = (cost >= s.initial_cost).cpu().numpy()
            last_improved[(smaller & (l1_now < best_l1 * 0.99)) | ~settled] = step
            if smaller.any():
                mask_np, pattern_np = mask.cpu().numpy(), pattern.cpu().numpy()
                at = np.searchsorted(rows, np.flatnonzero(smaller))
                best_l1[smaller] = l1_now[smaller]
                best_mask[smaller] = mask_np[at]
                best_pattern[smaller] = pattern_np[at]
            ok = torch.as_tensor(reached, device=device)
            cost = torch.where(ok, cost * s.cost_up, cost / s.cost_up ** 1.5).clamp(s.initial_cost / 100, 1e4)
            steps[active] += 1
            if step >= s.min_steps:
                active &= ~((step - last_improved >= s.stall) & np.isfinite(best_l1))
            if not active.any():
                break
    none = ~np.isfinite(best_l1)
    if none.any():  # never reached the goal: keep the last mask, marked as not reached
        with torch.no_grad():
            best_mask[none] = torch.sigmoid(mask_raw).cpu().numpy()[none]
            best_pattern[none] = (lo + (hi - lo) * torch.sigmoid(pattern_raw)).cpu().numpy()[none]
    return SearchResult(np.asarray(targets), np.asarray(sources), best_mask, best_pattern, best_mask.mean((1, 2)),
                        ~none, steps, final_ce)


def _success(forward: Forward, images: Tensor, verify: Tensor, mask: Tensor, pattern: Tensor,
             targets: Tensor) -> np.ndarray:
    """Per candidate, the fraction of its verification images that its current trigger sends to its target."""
    k, v = verify.shape
    h, w, c = tuple(images.shape[1:])
    logits = forward(stamp(images[verify], mask, pattern).reshape(-1, h, w, c)).reshape(k, v, -1)
    return (logits.argmax(2) == targets[:, None]).float().mean(1).cpu().numpy()
