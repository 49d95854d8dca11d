"""read_onnx on hand-built graphs (operator forms torch does not export): outputs match onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from schemas.models import InputLayout
from worker.engine.canonical import CanonicalModel
from worker.engine.formats.onnx_reader import read_onnx

TOLERANCE = 1e-5


def onnxruntime_outputs(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def canonical_outputs(model: CanonicalModel, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def make_model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8,
                             producer_name="test")


def float_input(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def weight(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    # Small weights keep sums near 1, where float32 rounding stays well below the tolerance.
    array = (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)
    return numpy_helper.from_array(array, name)


def ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def assert_matches_onnxruntime(tmp_path, model: onnx.ModelProto, sample_shape: tuple[int, ...], batch: int = 5):
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    canonical = read_onnx(path)
    x = np.random.default_rng(2).standard_normal((batch, *sample_shape)).astype(np.float32)
    np.testing.assert_allclose(canonical_outputs(canonical, x), onnxruntime_outputs(path, x), atol=TOLERANCE, rtol=0)
    return canonical


@pytest.mark.parametrize("conv_padding", [
    {"auto_pad": "SAME_UPPER"}, {"auto_pad": "SAME_LOWER"}, {"auto_pad": "VALID"}, {"pads": [0, 1, 2, 1]},
])
def test_conv_padding_forms(tmp_path, conv_padding):
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", strides=[2, 2], **conv_padding),
        helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("GlobalMaxPool", ["p"], ["g"], name="gmp"),
        helper.make_node("Flatten", ["g"], ["y"], name="flat"),
    ]
    model = make_model(nodes, [float_input("x", ["n", 3, 7, 7])], [float_input("y", ["n", 4])],
                       [weight("w", (4, 3, 3, 3)), weight("b", (4,), 1)])
    canonical = assert_matches_onnxruntime(tmp_path, model, (3, 7, 7))
    assert [n.name for n in canonical.nodes] == ["x", "conv", "pool", "gmp", "flat"]


@pytest.mark.parametrize(("op_type", "attributes"), [
    ("MaxPool", {"pads": [0, 0, 2, 2], "kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("AveragePool", {"pads": [0, 0, 2, 2], "kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("AveragePool", {"pads": [1, 0, 2, 1], "kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                     "count_include_pad": 1}),
    ("AveragePool", {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("AveragePool", {"auto_pad": "SAME_UPPER", "kernel_shape": [2, 2], "strides": [1, 1]}),
    ("MaxPool", {"auto_pad": "SAME_LOWER", "kernel_shape": [2, 3], "strides": [1, 2]}),
])
def test_pooling_padding_forms(tmp_path, op_type, attributes):
    """Uneven pads, ceil mode with a last window starting in the padding (ONNX drops it), auto_pad."""
    nodes = [helper.make_node(op_type, ["x"], ["p"], name="pool", **attributes),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    model = make_model(nodes, [float_input("x", ["n", 2, 4, 4])], [float_input("y", ["n", None])])
    assert_matches_onnxruntime(tmp_path, model, (2, 4, 4))


@pytest.mark.parametrize("opset", [11, 22])
def test_outer_opsets(tmp_path, opset):
    """Opsets 11 and 22 are accepted too; before 13 Squeeze takes its axes as an attribute."""
    squeeze = (helper.make_node("Squeeze", ["g"], ["s"], name="squeeze", axes=[2, 3]) if opset < 13
               else helper.make_node("Squeeze", ["g", "axes"], ["s"], name="squeeze"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"), squeeze,
             helper.make_node("Softmax", ["s"], ["y"], name="softmax", axis=1)]
    initializers = [weight("w", (4, 3, 3, 3)), ints("axes", [2, 3])]
    model = make_model(nodes, [float_input("x", ["n", 3, 6, 6])], [float_input("y", ["n", 4])], initializers,
                       opset=opset)
    canonical = assert_matches_onnxruntime(tmp_path, model, (3, 6, 6))
    assert canonical.signature.producer == f"test, opset {opset}"


def test_channels_last_dense_head(tmp_path):
    """The tf2onnx pattern: NHWC input, Transpose, Conv, Transpose back, Reshape, MatMul + Add, Gemm."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["r"], name="clip"),
        helper.make_node("Transpose", ["r"], ["back"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["back", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "m"], ["mm"], name="dense"),
        helper.make_node("Add", ["mm", "bias"], ["a"], name="dense_bias"),
        helper.make_node("Elu", ["a"], ["e"], name="elu", alpha=0.3),
        helper.make_node("Gemm", ["e", "g", "gc"], ["logits"], name="head", transB=0, alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1),
    ]
    initializers = [weight("w", (4, 3, 3, 3)), numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                    numpy_helper.from_array(np.array(0.5, np.float32), "hi"), ints("shape", [-1, 6 * 6 * 4]),
                    weight("m", (144, 8), 1), weight("bias", (8,), 2), weight("g", (8, 3), 3), weight("gc", (1, 3), 4)]
    model = make_model(nodes, [float_input("x", ["n", 6, 6, 3])], [float_input("y", ["n", 3])], initializers)
    canonical = assert_matches_onnxruntime(tmp_path, model, (6, 6, 3))
    assert canonical.signature.input_layout == InputLayout.nhwc
    assert canonical.signature.input_shape == [6, 6, 3]
    assert canonical.signature.output_activation == "softmax"


def test_slice_gather_squeeze_reduce(tmp_path):
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["s"], name="reverse_w"),
        helper.make_node("Gather", ["s", "index"], ["g"], name="pick_channels", axis=1),
        helper.make_node("Unsqueeze", ["g", "axis2"], ["u"], name="unsqueeze"),
        helper.make_node("Squeeze", ["u", "axis2"], ["q"], name="squeeze"),
        helper.make_node("ReduceSum", ["q", "axes23"], ["r"], name="sum", keepdims=0),
        helper.make_node("Sub", ["one", "r"], ["d"], name="one_minus"),
        helper.make_node("Div", ["d", "two"], ["y"], name="halve"),
    ]
    initializers = [ints("starts", [-1]), ints("ends", [-(2**62)]), ints("axes", [3]), ints("steps", [-2]),
                    ints("index", [2, 0, -1]), ints("axis2", [2]), ints("axes23", [2, 3]),
                    numpy_helper.from_array(np.ones(3, np.float32), "one"),
                    numpy_helper.from_array(np.full(3, 2.0, np.float32), "two")]
    model = make_model(nodes, [float_input("x", ["n", 3, 4, 5])], [float_input("y", ["n", 3])], initializers)
    assert_matches_onnxruntime(tmp_path, model, (3, 4, 5))


def test_static_batch_of_one_still_takes_any_batch(tmp_path):
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)]
    model = make_model(nodes, [float_input("x", [1, 2, 3, 3])], [float_input("y", [1, 4])],
                       [ints("shape", [1, 18]), weight("w", (4, 18))])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    canonical = read_onnx(path)
    x = np.random.default_rng(3).standard_normal((4, 2, 3, 3)).astype(np.float32)
    expected = np.concatenate([onnxruntime_outputs(path, x[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(canonical_outputs(canonical, x), expected, atol=TOLERANCE, rtol=0)


def test_matmul_forms_reductions_and_activations(tmp_path):
    """MatMul by a constant on a 4-D tensor acts on the last axis; MatMul of two run-time tensors."""
    nodes = [
        helper.make_node("MatMul", ["x", "m"], ["mm1"], name="project"),
        helper.make_node("Transpose", ["x"], ["xt"], name="swap", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["x", "xt"], ["mm2"], name="gram"),
        helper.make_node("ReduceMax", ["mm1"], ["r1"], name="max", axes=[1, 2], keepdims=0),
        helper.make_node("ReduceMean", ["mm2"], ["r2"], name="mean", axes=[1, -1], keepdims=0),
        helper.make_node("Concat", ["r1", "r2"], ["c"], name="concat", axis=-1),
        helper.make_node("Selu", ["c"], ["s"], name="selu", alpha=1.5, gamma=1.1),
        helper.make_node("HardSigmoid", ["s"], ["h"], name="hard_sigmoid", alpha=0.3, beta=0.4),
        helper.make_node("LeakyRelu", ["h"], ["y"], name="leaky"),
    ]
    model = make_model(nodes, [float_input("x", ["n", 2, 3, 4])], [float_input("y", ["n", 8])],
                       [weight("m", (4, 5))])
    canonical = assert_matches_onnxruntime(tmp_path, model, (2, 3, 4))
    assert canonical.layer("project").out_features == 5


@pytest.mark.parametrize("mode", ["reflect", "edge", "constant"])
def test_pad_modes(tmp_path, mode):
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["p"], name="pad", mode=mode),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    initializers = [ints("pads", [0, 0, 1, 2, 0, 0, 2, 1]), numpy_helper.from_array(np.array(0.5, np.float32), "value")]
    model = make_model(nodes, [float_input("x", ["n", 2, 4, 4])], [float_input("y", ["n", 2 * 7 * 7])], initializers)
    assert_matches_onnxruntime(tmp_path, model, (2, 4, 4))
