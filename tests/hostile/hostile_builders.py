"""Tiny, valid models and data files written from scratch (h5py, onnx.helper), for hostile variants of them.

No file here comes from outside the tests: each hostile case starts from one of these and changes one thing.
"""

import copy
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: A Keras 2 Sequential config: 6x6x1 input, Conv2D(2, 3x3), MaxPooling2D, Flatten, Dense(3, softmax).
KERAS_CONFIG: dict[str, Any] = {"class_name": "Sequential", "config": {"name": "tiny", "layers": [
    {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 6, 6, 1], "dtype": "float32",
                                            "name": "input_1"}},
    {"class_name": "Conv2D", "config": {"name": "conv", "filters": 2, "kernel_size": [3, 3], "strides": [1, 1],
                                        "padding": "valid", "activation": "relu", "use_bias": True}},
    {"class_name": "MaxPooling2D", "config": {"name": "pool", "pool_size": [2, 2], "strides": [2, 2],
                                              "padding": "valid"}},
    {"class_name": "Flatten", "config": {"name": "flatten"}},
    {"class_name": "Dense", "config": {"name": "dense", "units": 3, "activation": "softmax", "use_bias": True}},
]}, "keras_version": "2.15.0", "backend": "tensorflow"}
KERAS_WEIGHTS = {"conv": {"kernel": (3, 3, 1, 2), "bias": (2,)}, "dense": {"kernel": (8, 3), "bias": (3,)}}


def keras_config() -> dict[str, Any]:
    return copy.deepcopy(KERAS_CONFIG)


def write_keras(path: Path, config: Any = None, *, userblock_size: int = 0, model_config: Any = None,
                weights: dict[str, dict[str, tuple[int, ...]]] | None = None, **dataset_options) -> Path:
    """A whole-model Keras 2 HDF5 file; ``model_config`` replaces the JSON attribute as it is (any type)."""
    config = keras_config() if config is None else config
    weights = KERAS_WEIGHTS if weights is None else weights
    rng = np.random.default_rng(0)
    with h5py.File(path, "w", userblock_size=userblock_size) as h5:
        h5.attrs["keras_version"] = "2.15.0"
        h5.attrs["backend"] = "tensorflow"
        h5.attrs["model_config"] = json.dumps(config) if model_config is None else model_config
        root = h5.create_group("model_weights")
        root.attrs["layer_names"] = [name.encode() for name in ("input_1", "conv", "pool", "flatten", "dense")]
        for layer in ("input_1", "conv", "pool", "flatten", "dense"):
            group = root.create_group(layer)
            names = []
            for weight, shape in weights.get(layer, {}).items():
                name = f"{layer}/{weight}:0"
                group.create_dataset(name, data=rng.normal(size=shape).astype(np.float32), **dataset_options)
                names.append(name.encode())
            group.attrs["weight_names"] = names
    return path


def onnx_model(nodes: list | None = None, initializers: list | None = None, opset: int = 17) -> onnx.ModelProto:
    """Conv(2, 3x3) -> Relu -> Flatten -> Gemm(3) on N x 1 x 6 x 6, or the given nodes on input 'x', output 'y'."""
    rng = np.random.default_rng(0)
    if nodes is None:
        initializers = [numpy_helper.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "w"),
                        numpy_helper.from_array(rng.normal(size=(3, 32)).astype(np.float32), "fc")]
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                 helper.make_node("Relu", ["c"], ["r"], name="relu"),
                 helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
                 helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def write_onnx(path: Path, model: onnx.ModelProto | None = None) -> Path:
    path.write_bytes((model or onnx_model()).SerializeToString())
    return path


def write_data(path: Path, count: int = 8, shape: tuple[int, ...] = (6, 6, 1)) -> Path:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(count, *shape)).astype(np.uint8)
    y = rng.integers(0, 3, size=count)
    if path.suffix == ".npz":
        np.savez(path, x=x, y=y)
    else:
        with h5py.File(path, "w") as h5:
            h5["data"], h5["label"] = x, y
    return path
