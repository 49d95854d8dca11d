"""Zoo generation: reproducible from seeds, cached by spec, filtered by the issue's rules."""

from pathlib import Path

import numpy as np
import pytest
import torch

from worker.core.errors import OptionError
from worker.engine.preprocess import Preprocessing
from worker.zoo.attack_sampling import AttackRanges
from worker.zoo.batched import TrainingSettings
from worker.zoo.zoo import ModelRecord, _zoo_key, cache_root, generate_zoo, judge
from worker.zoo.zoo_spec import plan_candidates


def _weights(zoo) -> list[dict[str, torch.Tensor]]:
    return [module.state_dict() for module in zoo.modules]


def test_same_seed_gives_identical_weights_and_records(mnist, tiny_spec, tmp_path: Path) -> None:
    spec = tiny_spec(families=("cnn2-max", "cnn1-bn"), models_per_family=2)
    first = generate_zoo(spec, *mnist, cache_dir=tmp_path / "a")
    second = generate_zoo(spec, *mnist, cache_dir=tmp_path / "b")
    assert first.key == second.key
    assert first.records == second.records
    for one, other in zip(_weights(first), _weights(second), strict=True):
        assert one.keys() == other.keys()
        assert all(torch.equal(one[name], other[name]) for name in one)


def test_another_seed_gives_other_weights(mnist, tiny_spec, tmp_path: Path) -> None:
    first = generate_zoo(tiny_spec(models_per_family=1, backdoored_fraction=0.0), *mnist, cache_dir=tmp_path)
    second = generate_zoo(tiny_spec(models_per_family=1, backdoored_fraction=0.0, seed=8), *mnist,
                          cache_dir=tmp_path)
    assert first.key != second.key
    assert not torch.equal(first.modules[0].state_dict()["0.weight"], second.modules[0].state_dict()["0.weight"])


def test_a_cached_zoo_is_read_back_without_training(mnist, tiny_spec, tmp_path: Path) -> None:
    spec = tiny_spec(models_per_family=2)
    made = generate_zoo(spec, *mnist, cache_dir=tmp_path)

    def no_training(*args: object, **kwargs: object) -> list:
        raise AssertionError("the zoo should have come from the cache")

    again = generate_zoo(spec, *mnist, cache_dir=tmp_path, trainer=no_training)
    assert again.records == made.records
    assert (tmp_path / "zoos" / made.key / "spec.json").is_file()


def test_cache_root_follows_bdscreen_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BDSCREEN_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("BDSCREEN_CACHE")
    assert cache_root() == Path.home() / ".cache" / "bdscreen"


def _record(index: int, family: str, accuracy: float, success: float | None) -> ModelRecord:
    return ModelRecord(index, family, "train", success is not None, Preprocessing(255.0),
                       {"kind": "patch"} if success is not None else None, accuracy, success)


def test_filter_keeps_working_attacks_near_the_clean_accuracy_of_their_family() -> None:
    records = [
        _record(0, "a", 0.95, None), _record(1, "a", 0.93, None), _record(2, "a", 0.80, None),  # clean mean 0.893
        _record(3, "a", 0.93, 0.95),  # kept
        _record(4, "a", 0.93, 0.89),  # attack too weak
        _record(5, "a", 0.84, 0.99),  # 5.3 points below the clean mean
        _record(6, "b", 0.70, None), _record(7, "b", 0.68, 0.97),  # another family, its own reference (0.70)
    ]
    judge(records, min_attack_success=0.9, max_accuracy_gap=0.05)
    assert [r.kept for r in records] == [True, True, False, True, False, False, True, True]
    assert records[4].rejected_because == "attack success 0.890 < 0.90"
    assert "more than 5 points below the clean mean 0.893" in records[5].rejected_because


def test_validation_and_test_triggers_never_reuse_a_training_pattern(tiny_spec) -> None:
    # 2 x 2 binary patterns in one colour range collide often, so the rule is exercised.
    spec = tiny_spec(models_per_family=120, backdoored_fraction=1.0,
                     attacks=AttackRanges(patch_sizes=(2, 2), all_to_all_fraction=0.5))
    candidates = plan_candidates(spec)
    seen = {c.attack.fingerprint() for c in candidates if c.split == "train"}
    held_out = [c.attack.fingerprint() for c in candidates if c.split != "train"]
    assert held_out and not seen.intersection(held_out)
    assert candidates == plan_candidates(spec)


def test_plan_places_backdoored_models_in_every_split_and_kind(tiny_spec) -> None:
    spec = tiny_spec(families=("cnn2-max", "lenet5"), models_per_family=40, trigger_kinds=("patch", "blend"))
    candidates = plan_candidates(spec)
    for split in ("train", "val", "test"):
        members = [c for c in candidates if c.split == split]
        kinds = {c.attack.kind for c in members if c.attack}
        assert kinds == {"patch", "blend"}
        assert np.mean([c.backdoored for c in members]) == pytest.approx(0.5, abs=0.1)


_BUILDER = """
import sys, time
from pathlib import Path
import torch
from worker.engine.data import read_mnist_idx
from worker.zoo.attack_sampling import AttackRanges
from worker.zoo.batched import TrainingSettings
from worker.zoo.zoo import generate_zoo
from worker.zoo.zoo_spec import ZooSpec
torch.set_num_threads(1)
mnist, cache, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
images, labels = read_mnist_idx(mnist / "t10k-images-idx3-ubyte.gz", mnist / "t10k-labels-idx1-ubyte.gz", limit=400)
spec = ZooSpec(input_shape=(28, 28, 1), num_classes=10, families=("cnn2-max", "mlp"), models_per_family=4,
               trigger_kinds=("patch",), attacks=AttackRanges(all_to_all_fraction=0.0), train_images=256,
               eval_images=128, training=TrainingSettings(epochs=1, batch_size=32), min_attack_success=0.0,
               max_accuracy_gap=1.0, group_size=2, seed=5)
(cache / f"{name}.ready").touch()
while not (cache / "go").exists():  # start together, so that both find every group missing
    time.sleep(0.05)
zoo = generate_zoo(spec, images, labels, cache_dir=cache, progress=lambda message: print(message, flush=True))
print("records", [(r.index, r.clean_accuracy) for r in zoo.records])
"""


def test_two_processes_building_one_zoo_train_each_group_once(fixtures: Path, tmp_path: Path) -> None:
    # A benchmark screens a zoo in shards, one process each; before the group locks both trained every group.
    import subprocess
    import sys
    import time

    builders = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(fixtures / "mnist"), str(tmp_path), name],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    while not all((tmp_path / f"{name}.ready").exists() for name in ("a", "b")):
        assert all(b.poll() is None for b in builders), builders[0].communicate()[1][-2000:]
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [b.communicate(timeout=300) for b in builders]
    assert [b.returncode for b in builders] == [0, 0], [err[-2000:] for _, err in outputs]
    trained = sorted(line for out, _ in outputs for line in out.splitlines() if line.startswith("training"))
    # Four groups of two (two families x four models), each trained by one of the two processes.
    assert trained == sorted(["training 2 cnn2-max models (2/4)", "training 2 cnn2-max models (4/4)",
                              "training 2 mlp models (2/4)", "training 2 mlp models (4/4)"])
    records = [next(line for line in out.splitlines() if line.startswith("records")) for out, _ in outputs]
    assert records[0] == records[1]  # both read the same zoo back


def test_the_optimiser_is_part_of_a_zoo_key_only_when_it_is_not_the_default(tiny_spec) -> None:
    default = tiny_spec()
    assert set(default.to_json()["training"]) == {"epochs", "batch_size", "learning_rate"}  # keys made before stay
    sgd = tiny_spec(training=TrainingSettings(epochs=1, batch_size=32, optimizer="sgd", weight_decay=5e-4))
    assert sgd.to_json()["training"]["optimizer"] == "sgd"
    assert _zoo_key(sgd) != _zoo_key(default)
    explicit_adam = tiny_spec(training=TrainingSettings(epochs=1, batch_size=32, optimizer="adam"))
    assert _zoo_key(explicit_adam) == _zoo_key(default)
    with pytest.raises(OptionError, match="unknown optimiser 'lbfgs'"):
        tiny_spec(training=TrainingSettings(optimizer="lbfgs"))
    with pytest.raises(OptionError, match="weight decay must be 0 or more, got -0.1"):
        tiny_spec(training=TrainingSettings(optimizer="sgd", weight_decay=-0.1))
