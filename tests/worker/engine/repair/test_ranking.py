import numpy as np
import pytest
import torch

from schemas.scan import PruneCriterion
from worker.engine.repair.ranking import rank_channels


def _activations(model, layer, x):
    with torch.no_grad():
        return model.run({model.input: x}, outputs=[layer])[layer]


def test_mean_criterion_ranks_by_ascending_mean_activation(mnist_model, mnist_set):
    x = mnist_set.x[:200]
    ranking = rank_channels(mnist_model, "conv2d_1", x, "mean", batch_size=64)
    means = _activations(mnist_model, "conv2d_1", x).mean(dim=(0, 2, 3)).numpy()
    assert np.allclose(ranking.scores, means, rtol=1e-5)
    assert ranking.order == sorted(range(16), key=lambda c: (means[c], c))


def test_linf_criterion_is_mean_peak_over_l2_descending(mnist_model, mnist_set):
    x = mnist_set.x[:100]
    act = _activations(mnist_model, "conv2d_1", x).flatten(2)
    expected = (act.abs().amax(2) / (act.norm(dim=2) + 1e-12)).mean(0).numpy()
    ranking = rank_channels(mnist_model, "conv2d_1", x, PruneCriterion.linf, batch_size=32)
    assert np.allclose(ranking.scores, expected, rtol=1e-5)
    assert ranking.order[0] == int(np.argmax(expected))
    assert all(1 / np.sqrt(24 * 24) - 1e-6 <= s <= 1 or s == 0 for s in ranking.scores)


def test_random_criterion_is_a_seeded_permutation(deepid, deepid_set):
    a = rank_channels(deepid, "conv_3", deepid_set.x, "random", seed=3)
    assert a.order == rank_channels(deepid, "conv_3", deepid_set.x, "random", seed=3).order
    assert a.order != rank_channels(deepid, "conv_3", deepid_set.x, "random", seed=4).order
    assert sorted(a.order) == list(range(60))


def test_unknown_criterion_is_rejected(deepid, deepid_set):
    with pytest.raises(ValueError):
        rank_channels(deepid, "conv_3", deepid_set.x, "loudest")
