"""Litmus bank files: what is saved loads back the same; anything odd is refused with the reason."""

import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from worker.core.bankfiles import BankError, LitmusBank, feature_temperature, features_name, load_bank, save_bank


def _bank(**changes: object) -> LitmusBank:
    rng = np.random.default_rng(0)
    fields = dict(name="toy-28x28x1", patterns=rng.uniform(0, 255, (3, 28, 28, 1)).astype(np.float32),
                  weight=rng.normal(size=(2, 30)).astype(np.float32), bias=np.zeros(2, np.float32), num_classes=10,
                  threshold=0.42, target_fpr=0.05, validation_auc=0.97, validation_fpr=0.03, test_auc=0.95,
                  provenance={"zoo": {"families": ["cnn2-max"], "seed": 1}})
    fields.update(changes)
    return LitmusBank(**fields)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("banks") / "toy.h5"
    save_bank(_bank(), path)
    return path


def test_a_saved_bank_loads_back_the_same(saved: Path) -> None:
    loaded, original = load_bank(saved), _bank()
    for name in ("patterns", "weight", "bias"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(original, name))
    for name in ("name", "num_classes", "threshold", "target_fpr", "validation_auc", "validation_fpr", "test_auc",
                 "provenance", "features"):
        assert getattr(loaded, name) == getattr(original, name), name
    assert loaded.input_shape == (28, 28, 1)


def test_a_bank_without_test_auc_round_trips(tmp_path: Path) -> None:
    save_bank(_bank(test_auc=None), tmp_path / "b.h5")
    assert load_bank(tmp_path / "b.h5").test_auc is None


def _set_attr(name: str, value: object) -> Callable[[h5py.File], None]:
    return lambda file: file.attrs.__setitem__(name, value)


def _replace(name: str, data: np.ndarray) -> Callable[[h5py.File], None]:
    def change(file: h5py.File) -> None:
        del file[name]
        file.create_dataset(name, data=data)
    return change


ODD_FILES: dict[str, tuple[Callable[[h5py.File], None], str]] = {
    "extra dataset": (lambda f: f.create_dataset("payload", data=np.zeros(3)), "unexpected entries ['payload']"),
    "missing dataset": (lambda f: f.__delitem__("bias"), "has no 'bias' dataset"),
    "soft link": (lambda f: (f.__delitem__("bias"), f.__setitem__("bias", h5py.SoftLink("/weight"))),
                  "must be a dataset stored in the file itself"),
    "external file": (lambda f: (f.__delitem__("bias"), f.__setitem__("bias", h5py.ExternalLink("/etc/x.h5", "/b"))),
                      "must be a dataset stored in the file itself"),
    "wrong weight shape": (_replace("weight", np.zeros((2, 29), np.float32)), "need (2, 30)"),
    "patterns above 255": (_replace("patterns", np.full((3, 28, 28, 1), 300, np.float32)), "in [0, 255]"),
    "NaN in the classifier": (_replace("bias", np.array([np.nan, 0], np.float32)), "NaN or infinite"),
    "integer patterns": (_replace("patterns", np.zeros((3, 28, 28, 1), np.int64)), "expected a float array"),
    "five-dimensional patterns": (_replace("patterns", np.zeros((1, 3, 28, 28, 1), np.float32)),
                                  "at most 4 dimensions"),
    "extra attribute": (_set_attr("loader", "os.system"), "unexpected attributes ['loader']"),
    "missing attribute": (lambda f: f.attrs.__delitem__("threshold"), "unexpected attributes ['threshold']"),
    "other format": (_set_attr("format", "something-else"), "is not a version 1 bdscreen-litmus-bank file"),
    "newer version": (_set_attr("version", 2), "is not a version 1"),
    "threshold above 1": (_set_attr("threshold", 1.5), "must lie in [0, 1]"),
    "odd name": (_set_attr("name", "../../etc/passwd"), "its name must be"),
    "class count off": (_set_attr("num_classes", 11), "need (2, 33)"),
    "provenance not JSON": (_set_attr("provenance", "{not json"), "provenance or scores are malformed"),
    "provenance a list": (_set_attr("provenance", "[1, 2]"), "provenance must be a JSON object"),
    "logit spread zero": (_set_attr("provenance", '{"logit_spread": 0}'), "'logit_spread' must be a finite number"),
    "logit spread a string": (_set_attr("provenance", '{"logit_spread": "7"}'), "'logit_spread' must be a finite"),
    "architectures malformed": (_set_attr("provenance", '{"architectures": [{"convolutional": "yes"}]}'),
                                "provenance 'architectures' must be a list"),
    # every malformed provenance field is named, not only the first one checked
    "architectures and spread malformed": (
        _set_attr("provenance", '{"architectures": 3, "logit_spread": -1}'),
        "'architectures' must be a list of {'convolutional': true/false, 'activations': [names]}; provenance "
        "'logit_spread' must be a finite number above 0"),
    "unknown features": (_set_attr("features", "logits"), "features 'logits' are not"),
    "zero temperature": (_set_attr("features", "softmax/0"), "with a temperature T > 0"),
    "temperature not a number": (_set_attr("features", "softmax/hot"), "with a temperature T > 0"),
}


def test_a_bank_at_a_temperature_round_trips(tmp_path: Path) -> None:
    save_bank(_bank(features="softmax/4"), tmp_path / "t.h5")
    loaded = load_bank(tmp_path / "t.h5")
    assert loaded.features == "softmax/4" and loaded.temperature == 4.0
    assert feature_temperature("softmax") == 1.0 and features_name(1.0) == "softmax" and features_name(4) == "softmax/4"


@pytest.mark.parametrize("case", list(ODD_FILES))
def test_an_odd_bank_file_is_refused_with_the_reason(case: str, saved: Path, tmp_path: Path) -> None:
    change, message = ODD_FILES[case]
    path = tmp_path / "odd.h5"
    shutil.copy(saved, path)
    with h5py.File(path, "r+") as file:
        change(file)
    with pytest.raises(BankError) as refused:
        load_bank(path)
    assert message in refused.value.message


@pytest.mark.parametrize(("case", "content"), [
    ("truncated", None), ("a pickle", pickle.dumps({"patterns": [1, 2]})), ("empty", b""),
])
def test_a_file_that_is_not_a_bank_is_refused(case: str, content: bytes | None, saved: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    path.write_bytes(saved.read_bytes()[:2000] if content is None else content)
    with pytest.raises(BankError, match="is not a readable HDF5 file"):
        load_bank(path)


def test_saving_an_inconsistent_bank_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="patterns must be finite raw pixel values"):
        save_bank(_bank(patterns=np.full((3, 28, 28, 1), -1, np.float32)), tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
