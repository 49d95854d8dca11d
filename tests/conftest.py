"""Fixtures shared by all tests."""

from pathlib import Path

import pytest

#: The real models and data made outside this project (see its README.md); read-only.
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The shared fixtures folder, ``../shared/fixtures`` from the project root."""
    if not FIXTURES.is_dir():
        pytest.fail(f"The shared fixtures are missing: expected them at {FIXTURES}.")
    return FIXTURES


@pytest.fixture(scope="session")
def reference_inputs(fixtures: Path):
    """The inputs TensorFlow's reference outputs were computed on, as float32 0-255 before scaling."""
    import json

    from worker.engine.data import read_image_folder, read_mnist_idx

    index = json.loads((fixtures / "reference/index.json").read_text())
    faces, names = read_image_folder(fixtures / "ytf/samples")
    if [Path(n).name for n in names] != index["_inputs"]["ytf"]:
        pytest.fail(f"the YouTube-Face samples are not the reference's: {names}")
    digits, _ = read_mnist_idx(fixtures / "mnist/t10k-images-idx3-ubyte.gz",
                               fixtures / "mnist/t10k-labels-idx1-ubyte.gz", limit=2000)
    return {"ytf": faces, "mnist": digits}


@pytest.fixture(scope="session")
def reference_outputs(fixtures: Path, reference_inputs):
    """``(inputs scaled as the index says, TensorFlow's softmax outputs)`` for a model of reference/index.json."""
    import json

    import numpy as np

    index = json.loads((fixtures / "reference/index.json").read_text())

    def load(name: str):
        entry = index[name]
        x = (reference_inputs[entry["inputs"]] / entry["divide_by"]).astype(np.float32)
        return x, np.load(fixtures / "reference" / f"{name}.npy")

    return load


@pytest.fixture(scope="session")
def lab3_order() -> list[int]:
    """The published pruning order of lab3's conv_3, as fixtures/README.md gives it."""
    return [int(v) for v in (
        "0 26 27 30 31 33 34 36 37 38 25 39 41 44 45 47 48 49 50 53 55 40 24 59 9 2 12 13 17 14 15 23 6 51 32 "
        "22 21 20 19 43 58 3 42 1 29 16 56 46 5 8 11 54 10 28 35 18 4 7 52 57").split()]
