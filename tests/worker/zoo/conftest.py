"""Tiny zoos for detection tests: a few small models trained for seconds on real MNIST images."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.engine.data import read_mnist_idx
from worker.zoo.attack_sampling import AttackRanges
from worker.zoo.batched import TrainingSettings
from worker.zoo.zoo import Zoo, generate_zoo
from worker.zoo.zoo_spec import ZooSpec

#: Strong, easy attacks (large opaque patches, 20 % poisoned, all-to-one) so that a few hundred images suffice.
EASY_ATTACKS = AttackRanges(patch_sizes=(4, 6), patch_alphas=(1.0, 1.0), poison_rates=(0.2, 0.2),
                            all_to_all_fraction=0.0)


def _tiny_spec(**changes: object) -> ZooSpec:
    fields = dict(input_shape=(28, 28, 1), num_classes=10, families=("cnn2-max",), models_per_family=4,
                  trigger_kinds=("patch",), attacks=EASY_ATTACKS, train_images=128, eval_images=128,
                  training=TrainingSettings(epochs=1, batch_size=32), min_attack_success=0.0, max_accuracy_gap=1.0,
                  group_size=8, seed=7)
    fields.update(changes)
    return ZooSpec(**fields)


@pytest.fixture(scope="session")
def tiny_spec() -> Callable[..., ZooSpec]:
    """Makes a zoo spec of a few models trained on 128 images for one epoch; keyword arguments change it."""
    return _tiny_spec


@contextmanager
def one_thread() -> Iterator[None]:
    """Train on one CPU thread: on small shared CI machines two threads were five times slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def mnist(fixtures: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 1,000 real MNIST test images (N x 28 x 28 x 1, 0-255) and labels."""
    folder = fixtures / "mnist"
    return read_mnist_idx(folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz", limit=1000)


@pytest.fixture(scope="session")
def small_zoo(mnist: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """16 cnn2-max models, half with a working patch backdoor, trained for a few seconds."""
    spec = _tiny_spec(models_per_family=16, train_images=640, eval_images=256,
                     training=TrainingSettings(epochs=2, batch_size=32), min_attack_success=0.6,
                     splits=(0.5, 0.25, 0.25))
    with one_thread():
        return generate_zoo(spec, *mnist, cache_dir=tmp_path_factory.mktemp("cache"))
