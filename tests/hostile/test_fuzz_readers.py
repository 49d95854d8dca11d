"""Fuzzing the readers: hypothesis mutates Keras configs, HDF5 structures and ONNX graphs of tiny valid models.

Every outcome must be a model read or a typed refusal (an :class:`InputError`); anything else (a traceback,
a MemoryError, a hang) fails. The run is fixed (``derandomize``: the same examples on every machine) and
bounded: ``BDSCREEN_FUZZ_EXAMPLES`` examples per target (default 120, about 10 s each on the 2-core machine).
"""

import copy
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hostile_builders import keras_config, onnx_model, write_keras, write_onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from worker.core.errors import InputError
from worker.engine.formats import read_model

EXAMPLES = int(os.environ.get("BDSCREEN_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))

# Values that break naive readers: zero and negative sizes, empty and odd lists, wrong types, huge numbers.
SCALARS = st.one_of(st.sampled_from([0, -1, 1, 2, 3, 2**31, 2**63, 10**30, 0.5, float("nan"), float("inf"), "",
                                     "same", "valid", "relu", "channels_first", None, True, [], {}, [0, 1], [0],
                                     [[1]], [None], ["a", 1]]),
                    st.integers(-5, 10**7), st.text(max_size=6))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["class_name", "config", "name", "filters", "units", "kernel_size", "strides", "padding",
                     "pool_size", "axis", "target_shape", "size", "layers", "inbound_nodes", "module"]),
    inner, max_size=3), max_leaves=5)


def _slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON value, so one can be replaced."""
    slots, stack = [], [value]
    while stack:
        item = stack.pop()
        keys = list(item) if isinstance(item, dict) else range(len(item)) if isinstance(item, list) else []
        for key in keys:
            slots.append((item, key))
            stack.append(item[key])
    return slots


def _read(path: Path) -> None:
    try:
        read_model(path)
    except InputError:
        pass


@FUZZ
@given(st.data())
def test_mutated_keras_configs_give_typed_refusals(tmp_path_factory, data):
    config = keras_config()
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        container, key = data.draw(st.sampled_from(_slots(config)), label="slot")
        container[key] = copy.deepcopy(data.draw(JSON, label="value"))  # sampled values are shared objects
    path = tmp_path_factory.mktemp("keras") / "model.h5"
    _read(write_keras(path, config))


def _hdf5_mutation(h5: h5py.File, choice: int, value: Any) -> None:
    root = h5["model_weights"]
    conv, dense = root["conv"], root["dense"]
    if choice == 0:
        del conv["conv/kernel:0"]
    elif choice == 1:
        del dense["dense/bias:0"]
        dense.create_group("dense/bias:0")
    elif choice == 2:
        dense["dense/loop"] = root  # a cycle through hard links
        dense.attrs["weight_names"] = [b"dense/loop", b"dense/kernel:0"]
    elif choice == 3:
        conv.attrs["weight_names"] = np.array(value if isinstance(value, list) else [value], dtype=object).astype(str)
    elif choice == 4:
        del conv["conv/kernel:0"]
        conv.create_dataset("conv/kernel:0", data=np.zeros((3, 3, 1, 2), np.int32))
    elif choice == 5:
        del conv["conv/bias:0"]
        conv.create_dataset("conv/bias:0", data=np.array([b"ab", b"cd"]))
    elif choice == 6:
        h5.attrs["model_config"] = np.zeros(3)
    elif choice == 7:
        root.attrs["layer_names"] = [b"\xff\xfe", b"conv"]
    elif choice == 8:
        conv["conv/soft"] = h5py.SoftLink("/nowhere")
        conv.attrs["weight_names"] = [b"conv/soft", b"conv/bias:0"]
    elif choice == 9:
        del dense["dense/kernel:0"]
        dense.create_dataset("dense/kernel:0", shape=(8, 3), dtype="f4", fillvalue=np.nan)
    elif choice == 10:
        del h5["model_weights"]
        h5.create_dataset("model_weights", data=[1, 2])
    elif choice == 11:
        del dense["dense/kernel:0"]
        dense.create_dataset("dense/kernel:0", shape=(8, 3, 1), dtype="f8")
    elif choice == 12:
        h5.attrs["model_config"] = json.dumps(value)
    else:
        root["conv"].attrs["weight_names"] = [str(value).encode()[:100]] * 3


@FUZZ
@given(st.lists(st.integers(0, 13), min_size=1, max_size=3), JSON)
def test_mutated_hdf5_structures_give_typed_refusals(tmp_path_factory, choices, value):
    path = write_keras(tmp_path_factory.mktemp("hdf5") / "model.h5")
    with h5py.File(path, "a") as h5:
        for choice in choices:
            try:
                _hdf5_mutation(h5, choice, value)
            except (KeyError, ValueError, TypeError, OSError, RuntimeError):
                pass  # this mutation does not apply after an earlier one
    _read(path)


OPS = ["Conv", "Gemm", "MatMul", "Relu", "Flatten", "Reshape", "MaxPool", "AveragePool", "GlobalAveragePool",
       "BatchNormalization", "Resize", "Add", "Mul", "Concat", "Transpose", "Slice", "Gather", "Pad", "Squeeze",
       "Unsqueeze", "Softmax", "Clip", "Cast", "Identity", "ReduceMean", "Split", "Loop", "NonZero"]
ATTRIBUTE_NAMES = ["axis", "axes", "perm", "kernel_shape", "strides", "pads", "dilations", "group", "mode", "to",
                   "transB", "alpha", "keepdims", "auto_pad", "allowzero", "ceil_mode"]
ATTRIBUTE_VALUES = st.one_of(st.integers(-3, 2**40), st.floats(allow_nan=True), st.text(max_size=4),
                             st.lists(st.integers(-3, 70), min_size=1, max_size=6),
                             st.lists(st.floats(-3, 3), min_size=1, max_size=3))


@FUZZ
@given(st.data())
def test_mutated_onnx_graphs_give_typed_refusals(tmp_path_factory, data):
    model = onnx_model()
    graph = model.graph
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        node = graph.node[data.draw(st.integers(0, len(graph.node) - 1), label="node")]
        action = data.draw(st.integers(0, 5), label="action")
        if action == 0:
            node.op_type = data.draw(st.sampled_from(OPS), label="op")
        elif action == 1:
            node.attribute.append(helper.make_attribute(data.draw(st.sampled_from(ATTRIBUTE_NAMES)),
                                                        data.draw(ATTRIBUTE_VALUES)))
        elif action == 2:
            node.input.append(data.draw(st.sampled_from(["x", "w", "fc", "c", "r", "f", "y", "", "missing"])))
        elif action == 3:
            shape = data.draw(st.lists(st.integers(0, 9), min_size=0, max_size=5), label="shape")
            graph.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), f"k{len(graph.initializer)}"))
            node.input.append(graph.initializer[-1].name)
        elif action == 4:
            tensor = graph.initializer[data.draw(st.integers(0, len(graph.initializer) - 1))]
            del tensor.dims[:]
            tensor.dims.extend(data.draw(st.lists(st.integers(-1, 2**33), max_size=4), label="dims"))
        else:
            dims = graph.input[0].type.tensor_type.shape.dim
            dims[data.draw(st.integers(1, 3))].dim_value = data.draw(st.sampled_from([0, 1, 2**31, 10**6]))
    if data.draw(st.booleans(), label="opset"):
        model.opset_import[0].version = data.draw(st.integers(1, 30))
    _read(write_onnx(tmp_path_factory.mktemp("onnx") / "model.onnx", model))


@pytest.mark.parametrize("dtype", [TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.FLOAT8E4M3FN])
def test_onnx_initializer_of_exotic_type_is_typed(tmp_path, dtype):
    model = onnx_model()
    model.graph.initializer[0].data_type = dtype
    with pytest.raises(InputError):
        read_model(write_onnx(tmp_path / "model.onnx", model))
