"""read_onnx on hostile, broken and unsupported files: each is refused with the right error, cheaply."""

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from worker.core.errors import RefusedModelError, TooLargeError, UnreadableModelError, UnsupportedLayerError
from worker.engine.formats.onnx_reader import read_onnx


def make_model(nodes, inputs=None, outputs=None, initializers=(), opset=17) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def save(tmp_path, model: onnx.ModelProto, name: str = "model.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def relu_model() -> onnx.ModelProto:
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")])


def declared_tensor(name: str, dims: list[int]) -> TensorProto:
    """A float tensor that declares ``dims`` and holds no data (helper.make_tensor would refuse it)."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT)
    tensor.dims.extend(dims)
    return tensor


def external_weight_model(location: str) -> onnx.ModelProto:
    tensor = declared_tensor("w", [4])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        tensor.external_data.add(key=key, value=value)
    return make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], initializers=[tensor])


def test_custom_domain_is_refused(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"], name="evil", domain="com.evil")
    model = make_model([node])
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    with pytest.raises(RefusedModelError, match="com.evil") as caught:
        read_onnx(save(tmp_path, model))
    assert "'evil'" in caught.value.message and "standard ONNX operators" in caught.value.message


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "weights.bin", "ab/" + "c" * 62,
                                      "w\0.bin", "w" * 5000])
def test_external_data_is_refused_wherever_it_points(tmp_path, location):
    """A location names a file on the server: next to the model, it could be another upload in the blob store."""
    (tmp_path / "weights.bin").write_bytes(bytes(16))
    with pytest.raises(RefusedModelError, match="self-contained") as caught:
        read_onnx(save(tmp_path, external_weight_model(location)))
    assert len(caught.value.message) < 600


def test_huge_declared_initializer_is_refused_before_allocation(tmp_path):
    tensor = declared_tensor("w", [1_000_000, 1_000_000])
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], initializers=[tensor])
    path = save(tmp_path, model)
    start = time.perf_counter()
    with pytest.raises(TooLargeError, match="initializer 'w'"):
        read_onnx(path)
    assert time.perf_counter() - start < 1.0


def test_huge_constant_of_shape_is_refused_before_allocation(tmp_path):
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="fill"),
             helper.make_node("Add", ["x", "big"], ["y"], name="add")]
    shape = numpy_helper.from_array(np.array([100_000, 100_000, 4], np.int64), "shape")
    with pytest.raises(TooLargeError, match="fill"):
        read_onnx(save(tmp_path, make_model(nodes, initializers=[shape])))


def test_raw_data_shorter_than_declared_is_unreadable(tmp_path):
    tensor = numpy_helper.from_array(np.ones(4, np.float32), "w")
    tensor.raw_data = tensor.raw_data[:8]
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], initializers=[tensor])
    with pytest.raises(UnreadableModelError, match="8 bytes"):
        read_onnx(save(tmp_path, model))


def test_too_many_nodes_is_refused(tmp_path):
    names = ["x", *(f"t{i}" for i in range(9_999)), "y"]
    nodes = [helper.make_node("Relu", [names[i]], [names[i + 1]], name=f"relu{i}") for i in range(10_000)]
    with pytest.raises(TooLargeError, match="10,000"):
        read_onnx(save(tmp_path, make_model(nodes)))


@pytest.mark.parametrize("op_type", ["LSTM", "NonMaxSuppression"])
def test_unsupported_operator_is_named(tmp_path, op_type):
    model = make_model([helper.make_node(op_type, ["x", "x"], ["y"], name="odd_node")])
    with pytest.raises(UnsupportedLayerError, match=f"'odd_node' \\({op_type}\\)") as caught:
        read_onnx(save(tmp_path, model))
    assert "Supported operators" in caught.value.message


def test_control_flow_is_refused(tmp_path):
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4])])
    node = helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=branch, else_branch=branch)
    cond = numpy_helper.from_array(np.array(True), "cond")
    with pytest.raises(UnsupportedLayerError, match="subgraph"):
        read_onnx(save(tmp_path, make_model([node], initializers=[cond])))


@pytest.mark.parametrize("content", [b"", np.random.default_rng(0).bytes(4096), b"\x08\x07garbage" * 3])
def test_garbage_is_unreadable(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(UnreadableModelError):
        read_onnx(path)


def test_truncated_file_is_unreadable(tmp_path):
    weights = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], initializers=[weights])
    model.producer_name = "test"
    data = model.SerializeToString()
    path = tmp_path / "model.onnx"
    for cut in range(1, len(data), max(1, len(data) // 40)):
        path.write_bytes(data[:cut])
        with pytest.raises(UnreadableModelError):
            read_onnx(path)


def test_two_inputs_are_unsupported(tmp_path):
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 4]) for n in ("a", "b")]
    model = make_model([helper.make_node("Add", ["a", "b"], ["y"], name="add")], inputs=inputs)
    with pytest.raises(UnsupportedLayerError, match="single input"):
        read_onnx(save(tmp_path, model))


def test_two_outputs_are_unsupported(tmp_path):
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 4]) for n in ("y", "z")]
    model = make_model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["z"])],
                       outputs=outputs)
    with pytest.raises(UnsupportedLayerError, match="single output"):
        read_onnx(save(tmp_path, model))


@pytest.mark.parametrize("opset", [9, 23])
def test_opset_outside_the_supported_range(tmp_path, opset):
    model = relu_model()
    model.opset_import[0].version = opset
    with pytest.raises(UnsupportedLayerError, match=f"opset {opset}"):
        read_onnx(save(tmp_path, model))


def test_dynamic_sample_shape_is_unsupported(tmp_path):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])]
    with pytest.raises(UnsupportedLayerError, match="only the batch axis may be dynamic"):
        read_onnx(save(tmp_path, make_model([helper.make_node("Relu", ["x"], ["y"])], inputs=inputs)))


@pytest.mark.parametrize(("node", "initializer", "message"), [
    (helper.make_node("Reshape", ["x", "s"], ["y"], name="r"), np.array([-1, 2], np.int64), "mixes samples"),
    (helper.make_node("Reshape", ["x", "s"], ["y"], name="r"), np.array([2, 8], np.int64), "batch axis"),
    (helper.make_node("Transpose", ["x"], ["y"], name="t", perm=[1, 0]), None, "batch axis"),
    (helper.make_node("Flatten", ["x"], ["y"], name="f", axis=0), None, "batch axis"),
    (helper.make_node("Softmax", ["x"], ["y"], name="s", axis=0), None, "batch axis"),
    (helper.make_node("Add", ["x", "s"], ["y"], name="a"), np.ones((3, 4), np.float32), "across the batch axis"),
])
def test_nodes_that_mix_samples_are_unsupported(tmp_path, node, initializer, message):
    initializers = [] if initializer is None else [numpy_helper.from_array(initializer, "s")]
    with pytest.raises(UnsupportedLayerError, match=message):
        read_onnx(save(tmp_path, make_model([node], initializers=initializers)))


@pytest.mark.parametrize("node", [
    helper.make_node("Concat", ["x", "x"], ["y"], name="no_axis"),
    helper.make_node("Transpose", ["x"], ["y"], name="string_perm", perm=["a", "b"]),
    helper.make_node("Gemm", ["x"], ["y"], name="missing_b"),
])
def test_malformed_nodes_are_unreadable(tmp_path, node):
    with pytest.raises(UnreadableModelError, match=node.name):
        read_onnx(save(tmp_path, make_model([node])))


def test_layer_names_that_are_torch_attributes_still_work(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="eval"), helper.make_node("Relu", ["r"], ["y"], name="keys")]
    model = read_onnx(save(tmp_path, make_model(nodes)))
    assert [n.name for n in model.nodes] == ["x", "eval", "keys"]
