"""No foreign bytes reach an artifact: every file a scan hands back is checked without unpickling anything.

The upload is a Keras file with a zero-filled user block and zero bytes after its end (both accepted: they
carry nothing); the repaired Keras file is written fresh, so it has neither. Each artifact is then identified
by content alone: HDF5 signature at byte 0 and the file ending at the superblock's end-of-file address, ONNX
that parses as a protobuf with no external data, a PNG signature, JSON; none is a pickle or a zip.
"""

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
from hostile_builders import write_keras

from schemas.scan import ScanOptions
from worker.core.pickles import is_pickle_bytes
from worker.core.polyglot import HDF5_SIGNATURE, hdf5_end_of_file
from worker.core.sniff import FileKind, sniff_model_file
from worker.engine.canonical import predict
from worker.engine.formats import read_model
from worker.engine.scan import ScanInputs, run_scan


def _padded_upload(folder: Path) -> Path:
    path = write_keras(folder / "upload.h5", userblock_size=1024)
    path.write_bytes(path.read_bytes() + bytes(4096))
    assert sniff_model_file(path) is FileKind.hdf5
    return path


def _data(model_path: Path, folder: Path) -> Path:
    model = read_model(model_path)
    x = np.random.default_rng(2).integers(0, 256, (120, 6, 6, 1)).astype(np.uint8)
    y = predict(model, x.astype(np.float32)).argmax(1).numpy()
    np.savez(folder / "clean.npz", x=x, y=y)
    return folder / "clean.npz"


def _check_artifact(path: Path) -> str:
    content = path.read_bytes()
    assert is_pickle_bytes(content[:4096]) is None, path.name
    with path.open("rb") as file:
        assert not zipfile.is_zipfile(file), path.name
    if path.suffix == ".h5":
        assert content.startswith(HDF5_SIGNATURE), path.name
        with path.open("rb") as file:
            assert hdf5_end_of_file(file, 0) == len(content), path.name
        return "hdf5"
    if path.suffix == ".onnx":
        model = onnx.load_from_string(content)
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer), path.name
        assert sniff_model_file(path) is FileKind.onnx
        return "onnx"
    if path.suffix == ".png":
        assert content.startswith(b"\x89PNG\r\n\x1a\n"), path.name
        return "png"
    json.loads(content)
    return "json"


def test_every_artifact_is_one_format_and_nothing_else(tmp_path):
    upload = _padded_upload(tmp_path)
    options = ScanOptions.model_validate({"detectors": [], "repair": {"thresholds": [1, 100], "criterion": "mean"}})
    report = run_scan(ScanInputs(upload, clean_data=_data(upload, tmp_path)), options, tmp_path / "out")
    kinds = {artifact.name: _check_artifact(tmp_path / "out" / artifact.name) for artifact in report.artifacts}
    kinds["report.json"] = _check_artifact(tmp_path / "out" / "report.json")
    assert {"hdf5", "onnx", "png", "json"} <= set(kinds.values()), kinds
    repaired = next(name for name, kind in kinds.items() if kind == "hdf5")
    assert read_model(tmp_path / "out" / repaired).signature.num_classes == 3
