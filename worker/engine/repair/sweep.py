"""The pruning sweep: prune one channel at a time and record accuracy after each step.

Incremental: a pruned channel (kernel and bias zero) outputs a constant, its activation of 0. That
constant passes unchanged in kind through the per-channel layers that follow (pooling, element-wise
activations, batch norm), so the sweep caches the output of the last such layer (for DeepID: pool_3
after conv_3) together with any value that bypasses the pruned layer (a residual branch), once. Each
step overwrites one more channel of the cache with its resting value and re-runs only what lies
after it, up to the logits (argmax does not need the softmax). The result equals re-running the whole
model with zeroed weights (:func:`naive_sweep`, kept as the benchmark's baseline and the test oracle).
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from worker.engine.canonical import CanonicalModel
from worker.engine.ops import Activation, Identity, Pool2d
from worker.engine.repair.layers import pruned_copy, resting_value


@dataclass(frozen=True)
class EvalSet:
    """Inputs (in the model's layout, preprocessed) and the labels a correct answer must match."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class SweepResult:
    """``accuracy[name][k]``: fraction of set ``name`` predicted as its label after pruning ``order[:k]``."""

    layer: str
    order: list[int]
    accuracy: dict[str, list[float]] = field(default_factory=dict)

    def first_drop(self, name: str, points: float) -> int | None:
        """The lab's rule: the first step at which accuracy on ``name`` has fallen by >= ``points`` points."""
        curve = self.accuracy[name]
        for k, acc in enumerate(curve):
            if (curve[0] - acc) * 100 >= points - 1e-9:
                return k
        return None


@torch.no_grad()
def prune_sweep(model: CanonicalModel, layer: str, order: list[int], sets: dict[str, EvalSet],
                batch_size: int = 1024, steps: int | None = None) -> SweepResult:
    """Accuracy on every set after pruning 0, 1, ..., ``steps`` channels of ``layer`` in ``order``."""
    steps = len(order) if steps is None else steps
    device = next(model.parameters()).device
    cache_at, rest = _cache_point(model, layer, device)
    after = set(model.downstream(cache_at))
    # Values read by layers after the cache point, computed before it: cached once per batch.
    frontier = sorted({i for n in model.nodes if n.name in after for i in n.inputs} - after)
    result = SweepResult(layer, list(order))
    for name, data in sets.items():
        correct = torch.zeros(steps + 1, dtype=torch.long)
        for start in range(0, len(data), batch_size):
            x = data.x[start:start + batch_size].to(device)
            y = data.y[start:start + batch_size].to(device)
            cached = model.run({model.input: x}, outputs=frontier)
            feature = cached[cache_at]
            for k in range(steps + 1):
                if k:  # in place: step k prunes order[:k], a superset of step k-1's channels
                    channel = order[k - 1]
                    feature[:, channel] = rest[channel]
                out = model.run(cached, logits=True)[model.output]
                correct[k] += int((out.argmax(1) == y).sum())
        result.accuracy[name] = (correct.double() / max(len(data), 1)).tolist()
    return result


_PER_CHANNEL = (Pool2d, nn.BatchNorm2d, Identity)


def _cache_point(model: CanonicalModel, layer: str, device: torch.device) -> tuple[str, Tensor]:
    """The last layer of the per-channel chain after ``layer``, and each channel's resting value there."""
    conv = model.layer(layer)
    resting = torch.full((1, conv.out_channels, 4, 4), resting_value(model, layer), device=device)
    at = layer
    while True:
        consumers = [n for n in model.nodes if at in n.inputs]
        if len(consumers) != 1 or at == model.output:
            break
        module = model.layer(consumers[0].name)
        elementwise = isinstance(module, Activation) and module.name != "softmax"
        if not (elementwise or isinstance(module, _PER_CHANNEL)):
            break
        nxt = module(resting)
        if nxt.shape[1] != resting.shape[1] or not torch.allclose(nxt, nxt[:, :, :1, :1].expand_as(nxt)):
            break  # padding or a shape change: the pruned channel is no longer one constant
        at, resting = consumers[0].name, nxt
    return at, resting[0, :, 0, 0]


@torch.no_grad()
def naive_sweep(model: CanonicalModel, layer: str, order: list[int], sets: dict[str, EvalSet],
                batch_size: int = 1024, steps: int | None = None) -> SweepResult:
    """The same sweep by re-running a pruned copy of the whole model at every step."""
    steps = len(order) if steps is None else steps
    result = SweepResult(layer, list(order))
    curves: dict[str, list[float]] = {name: [] for name in sets}
    for k in range(steps + 1):
        pruned = pruned_copy(model, layer, order[:k])
        for name, data in sets.items():
            curves[name].append(accuracy(pruned, data, batch_size))
    result.accuracy = curves
    return result


@torch.no_grad()
def predictions(model: CanonicalModel, x: Tensor, batch_size: int = 1024) -> np.ndarray:
    device = next(model.parameters()).device
    out = [model(x[s:s + batch_size].to(device)).argmax(1).cpu() for s in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def accuracy(model: CanonicalModel, data: EvalSet, batch_size: int = 1024) -> float:
    """Fraction of ``data`` predicted as its label (for poisoned data: the attack success rate)."""
    if len(data) == 0:
        return float("nan")
    return float((predictions(model, data.x, batch_size) == data.y.numpy()).mean())
