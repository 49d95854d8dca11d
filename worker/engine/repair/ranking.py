"""Ranking the channels of a convolutional layer: which to prune first.

Criteria, each computed on clean data only:

``mean``
    Mean activation of the channel (the layer's output after its activation), over all clean inputs
    and positions; ascending, so the least used channels go first (Fine-Pruning, the NYU lab).
``linf``
    The activation-bias statistic of Cheng et al.: for input x and channel c with activation map
    a = A_c(x) (H x W), b_c(x) = ||a||_inf / (||a||_2 + 1e-12), which lies in [1/sqrt(HW), 1] for a
    non-zero map (1: all activation in one position, 1/sqrt(HW): spread evenly) and is 0 for an all-zero
    map. The score is the mean of b_c(x) over the clean inputs; descending, so the channels whose
    response is most concentrated in a few positions (the shape of a trigger detector) go first.
``random``
    A seeded random permutation: the baseline the other two must beat.

Ties are broken by channel index, so every ranking is deterministic.
"""

from dataclasses import dataclass

import numpy as np
import torch

from schemas.scan import PruneCriterion
from worker.engine.canonical import CanonicalModel


@dataclass(frozen=True)
class ChannelRanking:
    """``order``: channel indices, first to prune first; ``scores``: the criterion per channel."""

    layer: str
    criterion: PruneCriterion
    order: list[int]
    scores: list[float]


@torch.no_grad()
def rank_channels(model: CanonicalModel, layer: str, x: torch.Tensor, criterion: PruneCriterion | str,
                  batch_size: int = 512, seed: int = 0) -> ChannelRanking:
    """Rank the output channels of ``layer`` by ``criterion`` over the clean inputs ``x``."""
    criterion = PruneCriterion(criterion)
    channels = model.layer(layer).out_channels
    if criterion is PruneCriterion.random:
        order = np.random.default_rng(seed).permutation(channels).tolist()
        return ChannelRanking(layer, criterion, order, [float(order.index(c)) for c in range(channels)])
    device = next(model.parameters()).device
    total = torch.zeros(channels, dtype=torch.float64, device=device)
    for start in range(0, len(x), batch_size):
        act = model.run({model.input: x[start:start + batch_size].to(device)}, outputs=[layer])[layer]
        flat = act.flatten(2)  # N x C x HW
        if criterion is PruneCriterion.mean:
            total += flat.mean(dim=2).sum(dim=0).double()
        else:
            peak = flat.abs().amax(dim=2)
            total += (peak / (flat.norm(dim=2) + 1e-12)).sum(dim=0).double()
    scores = (total / max(len(x), 1)).cpu().numpy()
    keys = scores if criterion is PruneCriterion.mean else -scores
    order = sorted(range(channels), key=lambda c: (keys[c], c))
    return ChannelRanking(layer, criterion, order, scores.tolist())
