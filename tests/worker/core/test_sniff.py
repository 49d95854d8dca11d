"""Sniffing decides by content: hostile files are refused without anything being loaded or run."""

import bz2
import gzip
import lzma
import os
import pickle
import random
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from schemas.problems import ErrorCategory
from worker.core.errors import EXPORT_HINT, RefusedModelError, UnreadableModelError
from worker.core.sniff import FileKind, is_pickle_bytes, sniff_model_file

MODEL_FIXTURES = [
    "ytf/sunglasses_bd_net.h5",
    "ytf/lab3_bd_weights.h5",
    "ytf/lab3_pruned_drop2.h5",
    "ytf/lab3_pruned_drop4.h5",
    "ytf/lab3_pruned_drop10.h5",
    "ytf/goodnet_with_lambda.h5",
    "mnist/csaw_c_clean_label_bd_net.h5",
]


class RunsCode:
    """Unpickling this would create the marker file: the test proves sniffing never unpickles."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def refused(path: Path) -> str:
    with pytest.raises(RefusedModelError) as caught:
        sniff_model_file(path)
    assert caught.value.category == ErrorCategory.refused_model
    assert "arbitrary code" in caught.value.message
    assert EXPORT_HINT in caught.value.message
    return caught.value.message


def unreadable(path: Path) -> str:
    with pytest.raises(UnreadableModelError) as caught:
        sniff_model_file(path)
    assert caught.value.category == ErrorCategory.unreadable_model
    return caught.value.message


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_real_keras_files_are_hdf5(fixtures: Path, name: str) -> None:
    assert sniff_model_file(fixtures / name) is FileKind.hdf5


def test_truncated_hdf5_still_sniffs_as_hdf5(fixtures: Path, tmp_path: Path) -> None:
    # Sniffing looks at the signature only; noticing the truncation is the HDF5 reader's job.
    content = (fixtures / "ytf/sunglasses_bd_net.h5").read_bytes()
    assert sniff_model_file(write(tmp_path / "cut.h5", content[: len(content) // 3])) is FileKind.hdf5


def test_hdf5_with_user_block(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    with h5py.File(path, "w", userblock_size=1024) as file:
        file["w"] = np.zeros(3)
    assert path.read_bytes()[:8] != b"\x89HDF\r\n\x1a\n"
    assert sniff_model_file(path) is FileKind.hdf5


def test_onnx_by_content_whatever_the_name(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "model.h5"
    onnx.save(helper.make_model(graph), path)
    assert sniff_model_file(path) is FileKind.onnx
    assert is_pickle_bytes(path.read_bytes()) is None


def test_torch_exported_onnx(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 2))
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 4, 4),), str(path), dynamo=False)
    assert sniff_model_file(path) is FileKind.onnx


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("name", ["model.h5", "model.onnx", "model.bin"])
def test_pickles_are_refused_by_content_without_running(tmp_path: Path, protocol: int, name: str) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path / name, pickle.dumps(RunsCode(marker), protocol=protocol))
    assert f"a Python pickle (protocol {protocol})" in refused(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_pickles_are_refused(tmp_path: Path, protocol: int) -> None:
    content = pickle.dumps({"conv.weight": [0.5] * 4000, "classes": ["cat", "dog"]}, protocol=protocol)
    assert len(content) > 4096  # longer than the prefix sniffing parses
    refused(write(tmp_path / "weights.onnx", content))


def test_torch_save_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    assert "PyTorch checkpoint" in refused(path)


def test_legacy_torch_save_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path, _use_new_zipfile_serialization=False)
    assert "Python pickle" in refused(path)


def test_zip_holding_an_unnamed_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme.txt", "weights inside")
        archive.writestr("weights.bin", pickle.dumps({"w": 1.0}, protocol=2))
    assert "weights.bin" in refused(path)


def test_zip_without_pickle_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", '{"class_name": "Sequential"}')
    assert "zip archive" in unreadable(path)


COMPRESSORS = {
    "zlib": zlib.compress,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "lzma": lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE),
}


@pytest.mark.parametrize("name", COMPRESSORS)
def test_compressed_pickles_as_joblib_writes_are_refused(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps([RunsCode(marker), np.arange(50_000)], protocol=4)
    message = refused(write(tmp_path / "model.h5", COMPRESSORS[name](payload)))
    assert f"{name}-compressed Python pickle (protocol 4)" in message
    assert not marker.exists()


def test_compressed_non_pickle_is_unreadable(tmp_path: Path) -> None:
    unreadable(write(tmp_path / "model.onnx", gzip.compress(b"just some text\n" * 100)))


def test_npy_with_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.npy"
    np.save(path, np.array([{"weights": 1}, None], dtype=object), allow_pickle=True)
    assert "NumPy .npy file holding Python objects" in refused(path)


def test_npz_with_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    np.savez(path, w=np.zeros(3), meta=np.array([{"a": 1}], dtype=object))
    assert "array 'meta.npy' holds Python objects" in refused(path)


def test_numeric_npy_and_npz_are_unreadable(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((2, 3), np.float32))
    np.savez(tmp_path / "b.npz", w=np.zeros(3))
    assert "holds data, not a model" in unreadable(tmp_path / "a.npy")
    assert "holds data, not a model" in unreadable(tmp_path / "b.npz")


def test_empty_file_is_unreadable(tmp_path: Path) -> None:
    assert "empty" in unreadable(write(tmp_path / "model.h5", b""))


def test_random_bytes_are_unreadable_and_name_the_accepted_formats(tmp_path: Path) -> None:
    content = random.Random(7).randbytes(10_000)
    message = unreadable(write(tmp_path / "model.onnx", content))
    assert "Keras HDF5 (.h5) and ONNX (.onnx)" in message


@pytest.mark.parametrize("content", [b'{"format": "json"}', b"plain text\n", b"\x89PNG\r\n\x1a\n0000"])
def test_other_content_is_not_taken_for_a_pickle(tmp_path: Path, content: bytes) -> None:
    assert is_pickle_bytes(content) is None
    unreadable(write(tmp_path / "model.h5", content))


def test_pickle_prefix_cut_mid_stream_is_still_a_pickle() -> None:
    content = pickle.dumps(list(range(10_000)), protocol=0)
    assert is_pickle_bytes(content[:1000]) == "a Python pickle (protocol 0)"


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    assert "cannot be read" in unreadable(tmp_path / "absent.h5")
