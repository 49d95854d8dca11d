"""MM-BD's statistic: the maximum achievable classification margin of each class, and how abnormal the largest is.

Wang et al. (MM-BD, S&P 2024) observe that a backdoor teaches the network a feature (the trigger) that drives its
target class far beyond what natural features do, so the target class has an abnormally large *maximum achievable
margin* (its logit minus the largest other logit), found by gradient ascent from random inputs with no data at
all. We search in raw pixel space (0-255, what uploads and triggers live in) through the model's declared
preprocessing, so the input range is the one the model really sees. Classes are optimised together in batches,
which makes the 1283-class DeepID a few hundred batched steps rather than 1283 separate searches.

The null: the maxima of the other classes. MM-BD fits a gamma distribution to them and asks how likely it is that
the largest of K draws reaches the observed maximum: p = 1 - F(r_max)^K. With 10 classes the gamma rests on nine
values, so we also report a robust z-score of the log-margins, which the calibrated verdict may use instead.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: Raw pixels N x H x W x C (0-255) -> logits N x classes.
LogitsFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class MarginSearch:
    """How hard to search: random starts per class, Adam steps and step size (on pixels / 255), classes per batch.

    ``max_image_steps`` caps starts x classes x steps: large label spaces get fewer starts and steps, so the
    search stays within minutes on a CPU (it is logged in the finding's diagnostics). 10 classes get the full
    8 x 100; DeepID's 1283 get 1 x 20, which still put the true target first on both fixture BadNets (about 2 min
    on one busy core; 1 x 10 did too, with a smaller gap).
    """

    starts_per_class: int = 8
    steps: int = 100
    learning_rate: float = 0.05
    class_batch: int = 256
    max_image_steps: int = 26_000


def plan(search: MarginSearch, num_classes: int) -> tuple[int, int]:
    """Starts per class and steps for ``num_classes`` within the search's budget (at least 1 start, 10 steps)."""
    starts, steps = search.starts_per_class, search.steps
    while starts > 1 and starts * steps * num_classes > search.max_image_steps:
        starts //= 2
    steps = max(10, min(steps, search.max_image_steps // (starts * num_classes)))
    return starts, steps


def margin(logits: Tensor, target: Tensor) -> Tensor:
    """Logit of ``target`` minus the largest other logit, per row."""
    chosen = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf")).amax(1)
    return chosen - others


def max_margins(logits_fn: LogitsFn, image_shape: tuple[int, int, int], num_classes: int, search: MarginSearch,
                device: torch.device, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The largest margin each class reaches from random starts; and the search's diagnostics."""
    starts, steps = plan(search, num_classes)
    generator = torch.Generator().manual_seed(seed)
    best = np.full(num_classes, -np.inf)
    for first in range(0, num_classes, search.class_batch):
        classes = torch.arange(first, min(first + search.class_batch, num_classes), device=device)
        target = classes.repeat_interleave(starts)
        # Optimised on a 0-1 scale (so one step size serves every model) and projected back into the pixel range.
        unit = torch.rand((len(target), *image_shape), generator=generator).to(device).requires_grad_(True)
        optimiser = torch.optim.Adam([unit], lr=search.learning_rate)
        for _ in range(steps):
            loss = -margin(logits_fn(unit * 255.0), target).sum()
            optimiser.zero_grad()
            loss.backward(inputs=[unit])  # not the model's weights: their gradients would be wasted work
            optimiser.step()
            with torch.no_grad():
                unit.clamp_(0.0, 1.0)
        with torch.no_grad():
            reached = margin(logits_fn(unit * 255.0), target).view(len(classes), starts).amax(1)
        best[first:first + len(classes)] = reached.double().cpu().numpy()
    return best, {"starts_per_class": starts, "steps": steps, "learning_rate": search.learning_rate}


@dataclass(frozen=True)
class MarginOutlier:
    """How far the class with the largest maximum margin stands out from the other classes."""

    target: int
    largest: float
    null_median: float
    log_anomaly: float  # robust z of log(margin) against the other classes (median, 1.4826 * MAD)
    p_value: float  # MM-BD's order-statistic p-value under a gamma fitted to the other classes


def outlier(margins: np.ndarray) -> MarginOutlier:
    target = int(np.argmax(margins))
    null = np.delete(margins, target)
    floor = 1e-3  # margins are positive after ascent; a class that never wins has a tiny or negative one
    logs = np.log(np.maximum(margins, floor))
    log_null = np.delete(logs, target)
    spread = 1.4826 * float(np.median(np.abs(log_null - np.median(log_null))))
    log_anomaly = float((logs[target] - np.median(log_null)) / max(spread, 1e-6))
    return MarginOutlier(target, float(margins[target]), float(np.median(null)), log_anomaly,
                         gamma_max_p_value(float(margins[target]), np.maximum(null, floor)))


def gamma_max_p_value(largest: float, null: np.ndarray) -> float:
    """P(max of len(null)+1 gamma draws >= largest), the gamma fitted to ``null`` by maximum likelihood."""
    shape, scale = fit_gamma(null)
    # The upper tail q = 1 - F(largest) directly, and 1 - (1 - q)^K as -expm1(K log1p(-q)): tiny p-values stay
    # tiny instead of rounding to 0 (they are what tells a strong backdoor from a weak one).
    tail = float(torch.special.gammaincc(torch.tensor(shape, dtype=torch.float64),
                                         torch.tensor(max(largest, 0.0) / scale, dtype=torch.float64)))
    if tail >= 1.0:
        return 1.0
    return float(-math.expm1((len(null) + 1) * math.log1p(-tail)))


def fit_gamma(values: np.ndarray) -> tuple[float, float]:
    """Shape and scale of a gamma distribution (location 0) by maximum likelihood (Minka's Newton iteration)."""
    x = np.asarray(values, np.float64)
    mean = float(x.mean())
    s = math.log(mean) - float(np.log(x).mean())
    if s <= 1e-12:  # all equal: an extremely peaked gamma
        return 1e6, mean / 1e6
    shape = (3 - s + math.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)
    for _ in range(20):
        a = torch.tensor(shape, dtype=torch.float64)
        numerator = math.log(shape) - float(torch.special.digamma(a)) - s
        denominator = 1 / shape - float(torch.special.polygamma(1, a))
        shape = 1 / (1 / shape + numerator / (shape**2 * denominator))
    return shape, mean / shape
