"""Fixtures of the CLI tests."""

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def clean_mnist(reference_inputs, tmp_path_factory, fixtures) -> Path:
    """300 real MNIST digits (raw 0-255) with their labels, as an NPZ file."""
    from worker.engine.data import read_mnist_idx

    _, labels = read_mnist_idx(fixtures / "mnist/t10k-images-idx3-ubyte.gz",
                               fixtures / "mnist/t10k-labels-idx1-ubyte.gz", limit=300)
    path = tmp_path_factory.mktemp("data") / "clean.npz"
    np.savez(path, x=reference_inputs["mnist"][:300].astype(np.uint8), y=labels)
    return path
