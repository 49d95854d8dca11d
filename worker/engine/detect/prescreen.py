"""Choose which target classes deserve a full trigger search when a model has too many classes to search all.

Successive halving (the bandit idea behind K-Arm's scheduler): every class starts the same short mask + pattern
optimisation at a fixed cost, a few steps at a time on a few images; after each round only the classes whose
objective ``CE + cost * mean(mask)`` is lowest keep being optimised, on more images. A backdoor target is the class
a small mask reaches most easily, so it is among the lowest objectives early on. Cheap pre-screens by rank did not
keep it: on the lab3 DeepID BadNet the true target was 38th in the top-20 logit ranks and 271st after an untargeted
universal perturbation (METHODS.md), while the first rounds of the objective itself look at exactly what the full
search will measure. The masks and patterns carry over from round to round; the full search starts afresh.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from worker.engine.detect.trigger_search import Forward, candidate_pools, stamp


@dataclass(frozen=True)
class Round:
    steps: int
    batch: int
    keep: float  # fraction of this round's classes kept for the next round


@dataclass(frozen=True)
class PrescreenSettings:
    rounds: tuple[Round, ...] = (Round(6, 3, 0.25), Round(8, 5, 0.25), Round(10, 8, 0.25))
    cost: float = 1.0
    lr: float = 0.1
    chunk_images: int = 2048


@dataclass
class PrescreenResult:
    """Classes ordered by how far they got (survivors of the last round first, each round by objective)."""

    order: np.ndarray
    objective: np.ndarray  # per class: its objective at the last round it took part in
    rounds_survived: np.ndarray  # per class
    image_passes: int  # stamped images evaluated (forward + backward): the cost of the pre-screen


def prescreen(forward: Forward, images: Tensor, labels: Tensor, num_classes: int,
              settings: PrescreenSettings | None = None, seed: int = 0,
              value_range: tuple[float, float] = (0.0, 255.0)) -> PrescreenResult:
    """Run the rounds over all ``num_classes`` targets; ``images`` raw N x H x W x C on the model's device."""
    s = settings or PrescreenSettings()
    h, w, c = tuple(images.shape[1:])
    device = images.device
    gen = torch.Generator().manual_seed(seed)
    lo, hi = value_range
    mask_raw = (torch.randn(num_classes, h, w, generator=gen) * 0.1 - 2.0).to(device)
    pattern_raw = (torch.randn(num_classes, h, w, c, generator=gen) * 0.1).to(device)
    objective = np.full(num_classes, np.inf)
    survived = np.zeros(num_classes, dtype=int)
    alive = np.arange(num_classes)
    passes = 0
    pools = candidate_pools(labels.cpu(), list(range(num_classes)), [-1] * num_classes)
    for number, rnd in enumerate(s.rounds):
        per_chunk = max(1, s.chunk_images // rnd.batch)
        for start in range(0, len(alive), per_chunk):
            chunk = alive[start:start + per_chunk]
            objective[chunk] = _optimise(forward, images, [pools[i] for i in chunk], chunk, mask_raw, pattern_raw,
                                         rnd, s, gen, lo, hi)
            passes += len(chunk) * rnd.batch * rnd.steps
        survived[alive] = number + 1
        keep = max(1, int(np.ceil(len(alive) * rnd.keep)))
        alive = alive[np.argsort(objective[alive], kind="stable")[:keep]]
    order = np.lexsort((objective, -survived))
    return PrescreenResult(order, objective, survived, passes)


def _optimise(forward: Forward, images: Tensor, pools: list[Tensor], classes: np.ndarray, mask_raw: Tensor,
              pattern_raw: Tensor, rnd: Round, s: PrescreenSettings, gen: torch.Generator, lo: float,
              hi: float) -> np.ndarray:
    """``rnd.steps`` Adam steps for ``classes``, writing their parameters back; their mean objective, last 2 steps."""
    index = torch.as_tensor(classes, device=mask_raw.device)
    m_raw = mask_raw[index].clone().requires_grad_(True)
    p_raw = pattern_raw[index].clone().requires_grad_(True)
    optimiser = torch.optim.Adam([m_raw, p_raw], lr=s.lr, betas=(0.5, 0.9))
    targets = index[:, None].expand(len(classes), rnd.batch)
    h, w, c = tuple(images.shape[1:])
    recent: list[Tensor] = []
    for _ in range(rnd.steps):
        idx = torch.stack([p[torch.randint(len(p), (rnd.batch,), generator=gen)] for p in pools]).to(images.device)
        mask = torch.sigmoid(m_raw)
        logits = forward(stamp(images[idx], mask, lo + (hi - lo) * torch.sigmoid(p_raw)).reshape(-1, h, w, c))
        ce = F.cross_entropy(logits.reshape(len(classes), rnd.batch, -1).permute(0, 2, 1), targets,
                             reduction="none").mean(1)
        per_class = ce + s.cost * mask.mean((1, 2))
        optimiser.zero_grad(set_to_none=True)
        per_class.sum().backward(inputs=[m_raw, p_raw])  # never the model's weights
        optimiser.step()
        recent = [*recent[-1:], per_class.detach()]
    with torch.no_grad():
        mask_raw[index] = m_raw.detach()
        pattern_raw[index] = p_raw.detach()
    return torch.stack(recent).mean(0).cpu().numpy()
