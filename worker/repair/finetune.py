"""Fine-pruning: after pruning, fine-tune on clean data with the pruned channels held at zero.

Early stopping watches accuracy on a held-out part of the (decision) clean data and restores the
best epoch, so fine-tuning cannot silently overfit the few clean samples a user has.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.canonical import CanonicalModel
from worker.repair.layers import zero_channels
from worker.repair.sweep import EvalSet, accuracy


@dataclass
class FineTuneResult:
    model: CanonicalModel
    epochs_run: int
    best_epoch: int
    validation_accuracy: list[float]


def fine_tune(model: CanonicalModel, layer: str, pruned: list[int], train: EvalSet, validation: EvalSet,
              epochs: int = 20, patience: int = 3, learning_rate: float = 1e-3, batch_size: int = 64,
              seed: int = 0) -> FineTuneResult:
    """A fine-tuned copy of the pruned ``model``; ``model`` itself is left untouched."""
    tuned = copy.deepcopy(model)
    conv = tuned.layer(layer)
    device = next(tuned.parameters()).device
    optimiser = torch.optim.Adam(tuned.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    history = [accuracy(tuned, validation)]
    best_state, best_epoch = copy.deepcopy(tuned.state_dict()), 0
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(train), generator=generator).split(batch_size):
            x, y = train.x[batch].to(device), train.y[batch].to(device)
            optimiser.zero_grad(set_to_none=True)
            F.cross_entropy(tuned.logits(x), y).backward()
            optimiser.step()
            zero_channels(conv, pruned)  # the optimiser's momentum would revive them otherwise
        history.append(accuracy(tuned, validation))
        if history[-1] > history[best_epoch]:
            best_state, best_epoch = copy.deepcopy(tuned.state_dict()), epoch
        elif epoch - best_epoch >= patience:
            break
    tuned.load_state_dict(best_state)
    return FineTuneResult(tuned, len(history) - 1, best_epoch, history)
