"""Training many models at once gives the models that training them one by one gives."""

from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.models import InputLayout
from worker.core.errors import OptionError
from worker.engine.formats import read_model
from worker.engine.preprocess import Preprocessing
from worker.zoo.architectures import reinitialised_copy, seeded_family
from worker.zoo.attack_sampling import full_image_stamp, sample_attack
from worker.zoo.batched import TrainingJob, TrainingSettings, train_batched, train_sequential


def _jobs(labels: np.ndarray, count: int) -> list[TrainingJob]:
    """Clean and poisoned jobs with different preprocessing, as a zoo group has."""
    rng = np.random.default_rng(0)
    preprocessings = [Preprocessing(255.0), Preprocessing(255.0, (0.1307,), (0.3081,)), Preprocessing(1.0)]
    jobs = []
    for k in range(count):
        poisoned, stamped, pattern, alpha = labels, np.zeros(len(labels), bool), None, None
        if k % 2:
            attack = sample_attack(rng, "patch" if k % 4 == 1 else "blend", (28, 28, 1), 10)
            chosen = attack.poisoning.poisoned_indices(len(labels))
            poisoned = labels.copy()
            poisoned[chosen] = attack.poisoning.relabel(labels[chosen])
            stamped[chosen] = True
            pattern, alpha = full_image_stamp(attack.trigger, (28, 28, 1))
        jobs.append(TrainingJob(100 + k, 200 + k, preprocessings[k % 3], poisoned, stamped, pattern, alpha))
    return jobs


def _assert_same_weights(ours: list[torch.nn.Module], theirs: list[torch.nn.Module]) -> None:
    for one, other in zip(ours, theirs, strict=True):
        for (name, a), b in zip(one.state_dict().items(), other.state_dict().values(), strict=True):
            # Relative: BatchNorm's running variance of raw-pixel inputs is in the thousands.
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def _changed(ours: list[torch.nn.Module], theirs: list[torch.nn.Module]) -> float:
    return max(float((a - b).detach().abs().max()) for one, other in zip(ours, theirs, strict=True)
               for a, b in zip(one.parameters(), other.parameters(), strict=True))


@pytest.mark.parametrize(("family", "engine"), [("cnn2-max", "grouped"), ("cnn2-avg-bn", "grouped"),
                                               ("cnn2-avg-bn", "vmap"), ("cnn3-stride", "vmap")])
def test_batched_training_equals_sequential_training(mnist, family: str, engine: str) -> None:
    images, labels = mnist[0][:96], mnist[1][:96]
    settings = TrainingSettings(epochs=1, batch_size=32, learning_rate=5e-3)

    def build(seed: int) -> torch.nn.Module:
        return seeded_family(family, (28, 28, 1), 10, seed)

    jobs = _jobs(labels, 4)
    batched = train_batched(build, jobs, images, settings, InputLayout.nchw, torch.device("cpu"), engine=engine)
    sequential = train_sequential(build, jobs, images, settings, InputLayout.nchw, torch.device("cpu"))
    untrained = [build(job.init_seed) for job in jobs]
    assert _changed(batched, untrained) > 1e-2  # they did train
    _assert_same_weights(batched, sequential)  # BatchNorm running statistics included


def test_the_uploaded_architecture_trains_batched_like_sequential(mnist, fixtures: Path) -> None:
    model = read_model(fixtures / "mnist" / "csaw_c_clean_label_bd_net.h5")
    images, labels = mnist[0][:64], mnist[1][:64]
    settings = TrainingSettings(epochs=1, batch_size=32)

    def build(seed: int) -> torch.nn.Module:
        return reinitialised_copy(model, seed)

    before = {name: value.clone() for name, value in model.state_dict().items()}
    jobs = _jobs(labels, 2)
    batched = train_batched(build, jobs, images, settings, InputLayout.nhwc, torch.device("cpu"))
    sequential = train_sequential(build, jobs, images, settings, InputLayout.nhwc, torch.device("cpu"))
    _assert_same_weights(batched, sequential)
    # The upload itself is untouched, and re-initialising is seeded.
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    first, again = build(5).state_dict(), build(5).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["model.layers.conv2d_1.weight"], before["layers.conv2d_1.weight"])


def test_momentum_sgd_with_weight_decay_trains_batched_like_sequential_and_unlike_adam(mnist) -> None:
    images, labels = mnist[0][:96], mnist[1][:96]
    sgd = TrainingSettings(epochs=1, batch_size=32, learning_rate=0.05, optimizer="sgd", weight_decay=5e-4)

    def build(seed: int) -> torch.nn.Module:
        return seeded_family("cnn2-avg-bn", (28, 28, 1), 10, seed)

    jobs = _jobs(labels, 2)
    batched = train_batched(build, jobs, images, sgd, InputLayout.nchw, torch.device("cpu"), engine="grouped")
    _assert_same_weights(batched, train_sequential(build, jobs, images, sgd, InputLayout.nchw, torch.device("cpu")))
    adam = train_sequential(build, jobs, images, TrainingSettings(epochs=1, batch_size=32, learning_rate=0.05),
                            InputLayout.nchw, torch.device("cpu"))
    assert _changed(batched, adam) > 1e-2  # the setting reached the optimiser


def test_an_unknown_optimiser_is_refused() -> None:
    with pytest.raises(OptionError, match="unknown optimiser 'rmsprop'"):
        TrainingSettings(optimizer="rmsprop").optimizer_for([torch.zeros(1, requires_grad=True)])
