"""Small real cases for the repair tests."""

from pathlib import Path

import numpy as np
import pytest
import torch

from worker.engine.formats.keras_h5 import read_keras_h5
from worker.engine.repair.sweep import EvalSet


@pytest.fixture(scope="session")
def deepid(fixtures: Path):
    return read_keras_h5(fixtures / "ytf/sunglasses_bd_net.h5")


@pytest.fixture(scope="session")
def mnist_model(fixtures: Path):
    return read_keras_h5(fixtures / "mnist/csaw_c_clean_label_bd_net.h5")


@pytest.fixture(scope="session")
def mnist_set(reference_inputs) -> EvalSet:
    """The first 2,000 real t10k digits scaled x/255, with their true labels."""
    from worker.engine.data import read_mnist_idx

    fixtures = Path(__file__).resolve().parents[4].parent / "shared/fixtures"
    _, labels = read_mnist_idx(fixtures / "mnist/t10k-images-idx3-ubyte.gz",
                               fixtures / "mnist/t10k-labels-idx1-ubyte.gz", limit=2000)
    return EvalSet(torch.from_numpy(reference_inputs["mnist"] / 255.0).float(), torch.from_numpy(labels))


@pytest.fixture(scope="session")
def deepid_set(deepid) -> EvalSet:
    """Random faces labelled with the model's own answers, so accuracy starts at 1 and can only fall."""
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (96, 55, 47, 3)).astype(np.float32))
    with torch.no_grad():
        return EvalSet(x, deepid(x).argmax(1))


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """A tiny model with a planted patch backdoor (see repair_planted.py)."""
    from repair_planted import build_planted

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_planted(tmp_path_factory.mktemp("planted"))
    finally:
        torch.set_num_threads(threads)
