import numpy as np
import pytest
import torch

from worker.engine.repair.layers import pruned_copy
from worker.engine.repair.sweep import EvalSet, SweepResult, accuracy, naive_sweep, prune_sweep


def test_incremental_sweep_equals_naive_sweep_on_deepid(deepid, deepid_set):
    order = list(np.random.default_rng(1).permutation(60))
    sets = {"clean": deepid_set, "half": EvalSet(deepid_set.x[:40], deepid_set.y[:40])}
    fast = prune_sweep(deepid, "conv_3", order, sets, batch_size=32)
    slow = naive_sweep(deepid, "conv_3", order, sets, batch_size=32)
    assert fast.accuracy["clean"][0] == 1.0
    assert fast.accuracy["clean"][-1] < 0.5  # pruning everything must hurt, or the test proves nothing
    for name in sets:
        assert np.allclose(fast.accuracy[name], slow.accuracy[name], atol=1 / len(sets[name]) + 1e-9)


def test_incremental_sweep_equals_naive_on_first_layer_of_mnist_model(mnist_model, mnist_set):
    data = EvalSet(mnist_set.x[:300], mnist_set.y[:300])
    order = [3, 0, 15, 7, 9, 1]
    fast = prune_sweep(mnist_model, "conv2d_1", order, {"d": data})
    assert fast.accuracy["d"] == naive_sweep(mnist_model, "conv2d_1", order, {"d": data}).accuracy["d"]
    assert fast.accuracy["d"][-1] == accuracy(pruned_copy(mnist_model, "conv2d_1", order), data)


def test_sweep_leaves_the_model_unchanged(deepid, deepid_set):
    before = {k: v.clone() for k, v in deepid.state_dict().items()}
    prune_sweep(deepid, "conv_3", list(range(60)), {"c": deepid_set}, steps=5)
    assert all(torch.equal(before[k], v) for k, v in deepid.state_dict().items())


@pytest.mark.parametrize("points,expected", [(2, 2), (4, 2), (10, 3), (30, None)])
def test_first_drop_is_the_first_step_at_least_that_far_below_the_start(points, expected):
    result = SweepResult("conv", [0, 1, 2, 3], {"d": [0.95, 0.94, 0.91, 0.85, 0.80]})
    assert result.first_drop("d", points) == expected
