"""Fixtures for engine tests: the reference inputs of ``fixtures/reference/index.json``."""

import json
from pathlib import Path

import numpy as np
import pytest

from worker.data import read_image_folder, read_mnist_idx


@pytest.fixture(scope="session")
def reference_inputs(fixtures: Path) -> dict[str, np.ndarray]:
    """The inputs TensorFlow's reference outputs were computed on, as float32 0-255 before scaling."""
    index = json.loads((fixtures / "reference/index.json").read_text())
    faces, names = read_image_folder(fixtures / "ytf/samples")
    if [Path(n).name for n in names] != index["_inputs"]["ytf"]:
        pytest.fail(f"the YouTube-Face samples are not the reference's: {names}")
    digits, _ = read_mnist_idx(fixtures / "mnist/t10k-images-idx3-ubyte.gz",
                               fixtures / "mnist/t10k-labels-idx1-ubyte.gz", limit=2000)
    return {"ytf": faces, "mnist": digits}
