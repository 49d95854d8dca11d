"""The BadNet trainer behind the demo and the repair benchmark: Adam by default, momentum SGD as another recipe."""

import numpy as np
import pytest
import torch

from worker.core.errors import OptionError
from worker.demo.badnet import MnistBadNetCNN, train_classifier


def _data(count: int = 128) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, count)
    x = rng.random((count, 28, 28, 1), dtype=np.float32) * 0.2
    x[np.arange(count), y * 2 + 3, 5:20, 0] = 1.0  # each class a bright row: learnable in a few dozen steps
    return x, y


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_sgd_with_weight_decay_trains_reproducibly_and_unlike_adam() -> None:
    x, y = _data()

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return MnistBadNetCNN()

    def train(**recipe) -> torch.nn.Module:  # type: ignore[no-untyped-def]
        return train_classifier(fresh(), x, y, epochs=3, seed=3, batch_size=16, **recipe)

    untrained = _weights(fresh())
    sgd = train(learning_rate=0.05, optimizer="sgd", weight_decay=5e-4)
    assert torch.equal(_weights(sgd), _weights(train(learning_rate=0.05, optimizer="sgd", weight_decay=5e-4)))
    assert (_weights(sgd) - untrained).abs().max() > 1e-3
    assert (_weights(sgd) - _weights(train(learning_rate=0.05))).abs().max() > 1e-3
    with torch.no_grad():
        accuracy = float((sgd.logits(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert accuracy > 0.5  # it learned the rows, far above the 10 % of chance


def test_an_unknown_optimiser_is_refused() -> None:
    x, y = _data(16)
    with pytest.raises(OptionError, match="unknown optimiser 'rmsprop'"):
        train_classifier(MnistBadNetCNN(), x, y, epochs=1, seed=0, optimizer="rmsprop")
