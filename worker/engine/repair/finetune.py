"""Fine-pruning: after pruning, fine-tune on clean data with the pruned channels held at zero.

The learning rate starts high and anneals to zero along a cosine over the epoch budget. The
high-rate phase moves the weights far enough to break the trigger's pathway, which clean data never
exercises and so never defends; the annealing recovers clean accuracy. (Measured on the project's
MNIST BadNet: Adam at 3e-3 left 22-48 % attack success, at 1e-2 under 1 %; see bench/repair.py.)
Each batch is shifted by up to ``shift`` pixels (zero-filled), the mildest prior an image classifier
admits: with a few thousand clean images it lifts clean accuracy, and so agreement with the original
model, which is what a GoodNet's false-alarm rate measures.

The whole schedule always runs: clean accuracy dips in the high-rate epochs and comes back only as the
rate anneals, so stopping early on a dip cut off the recovery. The kept epoch is the fine-tuned one with
the best accuracy on a held-out part of the decision data; the untouched pruned model is not a candidate,
because it still carries the backdoor that fine-tuning is there to remove (counting it as "epoch 0" once
handed back a pruned model with 95 % attack success, after its first fine-tuned epochs scored lower).
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from schemas.models import InputLayout
from worker.engine.canonical import CanonicalModel
from worker.engine.repair.layers import zero_channels
from worker.engine.repair.sweep import EvalSet, accuracy


@dataclass
class FineTuneResult:
    model: CanonicalModel
    best_epoch: int  # 1-based; validation_accuracy[best_epoch - 1] is its held-out accuracy
    validation_accuracy: list[float]


def fine_tune(model: CanonicalModel, layer: str, pruned: list[int], train: EvalSet, validation: EvalSet,
              epochs: int = 20, learning_rate: float = 1e-2, batch_size: int = 64, shift: int = 2,
              seed: int = 0) -> FineTuneResult:
    """A fine-tuned copy of the pruned ``model``; ``model`` itself is left untouched."""
    tuned = copy.deepcopy(model)
    conv = tuned.layer(layer)
    device = next(tuned.parameters()).device
    optimiser = torch.optim.Adam(tuned.parameters(), lr=learning_rate)
    batches = -(-len(train) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(epochs * batches, 1))
    generator = torch.Generator().manual_seed(seed)
    history: list[float] = []
    best_state, best_epoch = None, 0
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(train), generator=generator).split(batch_size):
            x, y = train.x[batch].to(device), train.y[batch].to(device)
            if shift:
                x = random_shift(x, tuned.signature.input_layout, shift, generator)
            optimiser.zero_grad(set_to_none=True)
            F.cross_entropy(tuned.logits(x), y).backward()
            optimiser.step()
            schedule.step()
            zero_channels(conv, pruned)  # the optimiser's momentum would revive them otherwise
        history.append(accuracy(tuned, validation))
        if best_state is None or history[-1] >= history[best_epoch - 1]:  # ties: the later, lower-rate epoch
            best_state, best_epoch = copy.deepcopy(tuned.state_dict()), epoch
    tuned.load_state_dict(best_state)
    return FineTuneResult(tuned, best_epoch, history)


def random_shift(x: torch.Tensor, layout: InputLayout, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """The batch moved by one random offset in [-pixels, pixels] per spatial axis, zero-filled."""
    if layout == InputLayout.flat:
        return x
    rows, cols = (1, 2) if layout == InputLayout.nhwc else (2, 3)
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
    out = torch.zeros_like(x)
    src = [slice(None)] * x.dim()
    dst = [slice(None)] * x.dim()
    for axis, d in ((rows, dy), (cols, dx)):
        size = x.shape[axis]
        src[axis] = slice(max(0, -d), size - max(0, d))
        dst[axis] = slice(max(0, d), size - max(0, -d))
    out[tuple(dst)] = x[tuple(src)]
    return out
