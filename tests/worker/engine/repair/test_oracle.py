"""The fixture oracle: the published lab3 pruning order gives exactly the published pruned models."""

import h5py
import numpy as np
import pytest

from worker.engine.formats.keras_h5 import read_keras_h5, write_keras_h5
from worker.engine.repair.layers import pruned_copy


@pytest.mark.parametrize("drop,channels", [(2, 45), (4, 48), (10, 52)])
def test_pruned_lab3_models_equal_the_published_ones(fixtures, tmp_path, drop, channels, lab3_order):
    source = fixtures / "ytf/lab3_bd_weights.h5"
    model = read_keras_h5(source, fixtures / "ytf/deepid_architecture.json")
    out = tmp_path / f"drop{drop}.h5"
    write_keras_h5(pruned_copy(model, "conv_3", lab3_order[:channels]), source, out)
    published = h5py.File(fixtures / f"ytf/lab3_pruned_drop{drop}.h5")["model_weights"]
    with h5py.File(out) as ours:
        for layer in ("conv_1", "conv_2", "conv_3", "conv_4", "fc_1", "fc_2", "output"):
            for weight in ("kernel:0", "bias:0"):
                name = f"{layer}/{layer}/{weight}"
                assert np.array_equal(ours[name][()], published[name][()]), name
