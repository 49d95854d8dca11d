"""The hostile-file corpus, generated here (no payload file is committed): every family a security probe tried.

Each case writes one file into a folder and says what bdscreen must answer: the refusal category, and whether
the file is a model or a data file. Payloads are canaries: a pickle whose loading would create the file
``canary`` (``open(canary, "w")``); the tests assert it never exists. ``hostile_cases(folder, canary)`` returns
them all; ``BOMBS`` names the size and decompression bombs whose peak memory the tests measure.
"""

import bz2
import gzip
import io
import json
import lzma
import pickle
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from hostile_builders import keras_config, onnx_model, write_data, write_keras, write_onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    category: str  # the ErrorCategory value the refusal must carry
    kind: str = "model"  # or "data": read against the tiny Keras model's signature


class Canary:
    """Unpickling this calls ``open(path, "w")``: the file appears if, and only if, a payload ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def canary_pickle(canary: Path, protocol: int) -> bytes:
    return pickle.dumps(Canary(canary), protocol=protocol)


def _torch_style_zip(payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def _with_user_block(path: Path, content: bytes) -> Path:
    write_keras(path, userblock_size=max(512, 1 << (len(content) - 1).bit_length()))
    data = bytearray(path.read_bytes())
    data[:len(content)] = content
    path.write_bytes(bytes(data))
    return path


def _appended(path: Path, content: bytes) -> Path:
    path.write_bytes(path.read_bytes() + content)
    return path


def _pickle_cases(folder: Path, canary: Path) -> list[Case]:
    cases = []
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        payload = canary_pickle(canary, protocol)
        cases.append(Case(f"pickle-p{protocol}", folder / f"p{protocol}.h5", "refused-model"))
        cases[-1].path.write_bytes(payload)
        broken = folder / f"p{protocol}-unknown-opcode.onnx"
        broken.write_bytes(payload[:-1] + b"\xff")  # STOP replaced by an opcode pickle does not know
        cases.append(Case(f"pickle-p{protocol}-unknown-last-opcode", broken, "refused-model"))
    headerless = folder / "p4-headerless.pt"
    headerless.write_bytes(canary_pickle(canary, 4)[2:])
    cases.append(Case("pickle-p4-without-header", headerless, "refused-model"))
    truncated = folder / "p2-truncated.pkl"
    truncated.write_bytes(canary_pickle(canary, 2)[:12])
    cases.append(Case("pickle-truncated", truncated, "refused-model"))
    payload = canary_pickle(canary, 4)
    for name, compress in (("gzip", gzip.compress), ("zlib", zlib.compress), ("bz2", bz2.compress),
                           ("xz", lzma.compress), ("lzma", lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE))):
        path = folder / f"joblib-{name}.joblib"
        path.write_bytes(compress(payload))
        cases.append(Case(f"joblib-{name}", path, "refused-model"))
    path = folder / "torch.pt"
    path.write_bytes(_torch_style_zip(payload))
    cases.append(Case("torch-zip-checkpoint", path, "refused-model"))
    path = folder / "objects.npy"
    np.save(path, np.array([Canary(canary)], dtype=object), allow_pickle=True)
    cases.append(Case("npy-object-array", path, "refused-model"))
    return cases


def _polyglot_cases(folder: Path, canary: Path) -> list[Case]:
    payload = canary_pickle(canary, 2)
    unknown_last = payload[:-1] + b"\xff"
    return [
        Case("hdf5-userblock-pickle", _with_user_block(folder / "ub-pickle.h5", payload), "refused-model"),
        Case("hdf5-userblock-pickle-unknown-opcode", _with_user_block(folder / "ub-broken.h5", unknown_last),
             "refused-model"),
        Case("hdf5-userblock-headerless-p4", _with_user_block(folder / "ub-p4.h5", canary_pickle(canary, 4)[2:]),
             "refused-model"),
        Case("hdf5-userblock-torch-zip", _with_user_block(folder / "ub-zip.h5", _torch_style_zip(payload)),
             "refused-model"),
        Case("hdf5-appended-zip", _appended(write_keras(folder / "zip-tail.h5"), _torch_style_zip(payload)),
             "refused-model"),
        Case("hdf5-appended-pickle", _appended(write_keras(folder / "pickle-tail.h5"), payload), "refused-model"),
        Case("onnx-appended-zip", _appended(write_onnx(folder / "zip-tail.onnx"), _torch_style_zip(payload)),
             "refused-model"),
    ]


def _keras_cases(folder: Path) -> list[Case]:
    def edited(name: str, edit: Callable[[dict], None], category: str) -> Case:
        config = keras_config()
        edit(config)
        return Case(name, write_keras(folder / f"{name}.h5", config), category)

    def layer(index: int, **changes):
        return lambda config: config["config"]["layers"][index]["config"].update(changes)

    def lambda_layer(config):
        config["config"]["layers"].insert(3, {"class_name": "Lambda", "config": {
            "name": "evil", "function_type": "lambda",
            "function": ["4wEAAAAAAAAAAAAAAAEAAAACAAAAQwAAAHMEAAAAfABTACkBTqkAKQHaAXhyAQAAAHIBAAAA", None, None]}})

    def custom(config):
        config["config"]["layers"][1]["config"]["kernel_initializer"] = {
            "module": "keras_evil.initializers", "class_name": "GlorotUniform", "config": {}}

    def class_name_list(config):
        config["config"]["layers"][2]["class_name"] = []

    return [
        edited("keras-lambda", lambda_layer, "refused-model"),
        edited("keras-evil-module", custom, "refused-model"),
        edited("keras-strides-zero", layer(1, strides=[0, 1]), "unreadable-model"),
        edited("keras-pool-size-empty", layer(2, pool_size=[]), "unreadable-model"),
        edited("keras-class-name-list", class_name_list, "unreadable-model"),
        edited("keras-filters-huge", layer(1, filters=10**12), "too-large"),
        Case("keras-config-opaque-bytes", write_keras(folder / "opaque.h5",
                                                      model_config=np.void(json.dumps(keras_config()).encode())),
             "unreadable-model"),
    ]


def _hdf5_structure_cases(folder: Path) -> list[Case]:
    target = folder / "server-file.h5"
    with h5py.File(target, "w") as h5:
        h5["secret"] = np.arange(3.0)
    cases = []
    path = write_keras(folder / "external-link.h5")
    with h5py.File(path, "a") as h5:
        h5["model_weights/conv/leak"] = h5py.ExternalLink(str(target), "/secret")
    cases.append(Case("hdf5-external-link", path, "refused-model"))
    path = write_keras(folder / "external-dataset.h5")
    (folder / "raw.bin").write_bytes(bytes(24))
    with h5py.File(path, "a") as h5:
        h5["model_weights/conv"].create_dataset("ext", shape=(3,), dtype="f8",
                                                external=[(str(folder / "raw.bin"), 0, 24)])
    cases.append(Case("hdf5-external-dataset", path, "refused-model"))
    path = write_keras(folder / "virtual.h5")
    with h5py.File(path, "a") as h5:
        layout = h5py.VirtualLayout(shape=(3,), dtype="f8")
        layout[:] = h5py.VirtualSource(str(target), "secret", shape=(3,))
        h5["model_weights/conv"].create_virtual_dataset("virtual", layout)
    cases.append(Case("hdf5-virtual-dataset", path, "refused-model"))
    path = write_keras(folder / "cycle.h5")
    with h5py.File(path, "a") as h5:
        h5["model_weights/conv/loop"] = h5["model_weights/conv"]  # a hard link to its own parent
    cases.append(Case("hdf5-group-cycle", path, "unreadable-model"))
    return cases


def _onnx_cases(folder: Path, other_tenant_digest: str) -> list[Case]:
    def external(name: str, location: str, category: str) -> Case:
        model = onnx_model()
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location
        return Case(name, write_onnx(folder / f"{name}.onnx", model), category)

    custom = onnx_model()
    custom.graph.node[1].domain = "evil.ops"
    return [
        external("onnx-external-other-tenant", f"../{other_tenant_digest[:2]}/{other_tenant_digest}", "refused-model"),
        external("onnx-external-sibling", other_tenant_digest, "refused-model"),
        external("onnx-external-absolute", "/etc/passwd", "refused-model"),
        external("onnx-external-nul", "weights\0.bin", "refused-model"),
        external("onnx-external-5000-chars", "w" * 5000, "refused-model"),
        Case("onnx-custom-domain", write_onnx(folder / "custom.onnx", custom), "refused-model"),
    ]


def resize_bomb(path: Path, count: int = 500) -> Path:
    """346 bytes of ONNX whose Resize nodes each double the image: the activation grows past any memory."""
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes, previous = [], "x"
    for index in range(count):
        nodes.append(helper.make_node("Resize", [previous, "", "scales"], [f"r{index}"], name=f"resize{index}"))
        previous = f"r{index}"
    nodes.append(helper.make_node("GlobalAveragePool", [previous], ["g"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["g"], ["y"], name="flatten"))
    model = onnx_model(nodes, [scales])
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    return write_onnx(path, model)


def gzip_weight_bomb(path: Path) -> Path:
    """A Keras file whose Dense kernel is 2^27 zeros (512 MiB as float32), gzip-compressed to a few hundred KB."""
    config = keras_config()
    config["config"]["layers"][4]["config"]["units"] = 1 << 24
    write_keras(path, config, weights={"conv": {"kernel": (3, 3, 1, 2), "bias": (2,)}})
    with h5py.File(path, "a") as h5:
        group = h5["model_weights/dense"]
        group.create_dataset("dense/kernel:0", shape=(8, 1 << 24), dtype="f4", compression="gzip",
                             chunks=(8, 1 << 20), fillvalue=0)
        group.create_dataset("dense/bias:0", shape=(1 << 24,), dtype="f4", compression="gzip", chunks=(1 << 20,))
        group.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
    return path


def fill_value_data(path: Path) -> Path:
    """1.7 KB of HDF5 declaring 10^9 rows of 6x6x1 images, every value the fill value: nothing stored."""
    with h5py.File(path, "w") as h5:
        h5.create_dataset("data", shape=(10**9, 6, 6, 1), dtype="u1", fillvalue=7, chunks=(1024, 6, 6, 1))
        h5.create_dataset("label", shape=(10**9,), dtype="u1", fillvalue=1, chunks=(1 << 16,))
    return path


def npz_bomb(path: Path, rows: int = 4_000_000) -> Path:
    """A deflated NPZ of zeros, 6x6x1 rows: 144 MB of data in about 150 KB (1,000:1)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, shape in (("x", (rows, 6, 6, 1)), ("y", (rows,))):
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                member.write(header.getvalue())
                zeros = bytes(1 << 20)
                remaining = int(np.prod(shape))
                while remaining:
                    member.write(zeros[:min(remaining, len(zeros))])
                    remaining -= min(remaining, len(zeros))
    return path


def declared_huge_data(path: Path) -> Path:
    """An NPZ whose header declares 10^12 rows and holds eight."""
    write_data(path.with_suffix(".tmp.npz"))
    with zipfile.ZipFile(path.with_suffix(".tmp.npz")) as source, zipfile.ZipFile(path, "w") as archive:
        for name in ("x", "y"):
            content = source.read(f"{name}.npy")
            stream = io.BytesIO(content)
            np.lib.format.read_magic(stream)
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                          "fortran_order": False, "shape": (10**12, *shape[1:])})
            archive.writestr(f"{name}.npy", header.getvalue() + content[stream.tell():])
    path.with_suffix(".tmp.npz").unlink()
    return path


BOMBS = ("onnx-resize-bomb", "keras-gzip-weight-bomb", "data-fill-value-bomb", "data-npz-bomb", "data-declared-huge")


def bomb_cases(folder: Path) -> list[Case]:
    return [
        Case("onnx-resize-bomb", resize_bomb(folder / "resize.onnx"), "too-large"),
        Case("keras-gzip-weight-bomb", gzip_weight_bomb(folder / "gzip-bomb.h5"), "too-large"),
        Case("data-fill-value-bomb", fill_value_data(folder / "fill.h5"), "too-large", "data"),
        Case("data-npz-bomb", npz_bomb(folder / "bomb.npz"), "too-large", "data"),
        Case("data-declared-huge", declared_huge_data(folder / "huge.npz"), "too-large", "data"),
    ]


def _data_cases(folder: Path, canary: Path) -> list[Case]:
    path = folder / "pickled-data.npz"
    np.savez(path, x=np.array([Canary(canary)], dtype=object), y=np.zeros(1))
    pickled = folder / "data.pkl"
    pickled.write_bytes(canary_pickle(canary, 4))
    return [Case("data-npz-object-array", path, "bad-data", "data"),
            Case("data-pickle", pickled, "bad-data", "data")]


def hostile_cases(folder: Path, canary: Path, other_tenant_digest: str = "ab" + "0" * 62) -> list[Case]:
    """Every non-bomb case, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [*_pickle_cases(folder, canary), *_polyglot_cases(folder, canary), *_keras_cases(folder),
            *_hdf5_structure_cases(folder), *_onnx_cases(folder, other_tenant_digest), *_data_cases(folder, canary)]
