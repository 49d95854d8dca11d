"""Read an ONNX classifier (opsets 11 to 22) into a :class:`CanonicalModel`, without onnx2torch.

The file is vetted before anything is converted (see :mod:`worker.engine.formats.onnx_load`). Each node
that depends on the model input becomes one canonical layer named after the node, implementing
the operator as ONNX defines it on the tensor as ONNX lays it out (no layout conversion); every
other node is folded into a constant when the file is read (see :mod:`worker.engine.formats.onnx_fold`).
Constants become parameters or buffers of the layer that uses them. Opsets 13 to 20 are the ones
tested; 11, 12, 21 and 22 are accepted because the supported operators read the same there (the
few pre-13 differences, Softmax and the axes of Squeeze/Unsqueeze, are handled or refused).
"""

import pathlib
from collections.abc import Callable

import numpy as np
import onnx
from torch import nn

from schemas.models import InputLayout, ModelFormat
from worker.core.errors import UnreadableModelError, UnsupportedLayerError
from worker.core.limits import MAX_INPUT_ELEMENTS, check_elements
from worker.engine import ops
from worker.engine.canonical import CanonicalModel, module_key
from worker.engine.formats import onnx_layers as layers
from worker.engine.formats import onnx_tensors as tensors
from worker.engine.formats.graph import GraphBuilder
from worker.engine.formats.onnx_fold import fold
from worker.engine.formats.onnx_load import default_opset, load_model, tensor_to_array, vet_model
from worker.engine.formats.onnx_node import Dynamic, NodeView, Value

MIN_OPSET, MAX_OPSET = 11, 22

CONVERTERS: dict[str, Callable[[NodeView], nn.Module]] = {
    "Conv": layers.conv, "Gemm": layers.gemm, "MatMul": layers.matmul, "BatchNormalization": layers.batch_norm,
    "MaxPool": layers.pool, "AveragePool": layers.pool, "GlobalAveragePool": layers.global_pool,
    "GlobalMaxPool": layers.global_pool, "Resize": layers.resize,
    "Add": tensors.arithmetic, "Sub": tensors.arithmetic, "Mul": tensors.arithmetic, "Div": tensors.arithmetic,
    "Concat": tensors.concat, "Reshape": tensors.reshape, "Flatten": tensors.flatten, "Squeeze": tensors.squeeze,
    "Unsqueeze": tensors.unsqueeze, "Transpose": tensors.transpose, "Slice": tensors.slice_layer,
    "Gather": tensors.gather, "Pad": tensors.pad, "Cast": tensors.cast, "Identity": tensors.identity,
    "Dropout": tensors.identity, "ReduceMean": tensors.reduce, "ReduceMax": tensors.reduce,
    "ReduceSum": tensors.reduce, "Relu": tensors.activation, "LeakyRelu": tensors.activation,
    "Sigmoid": tensors.activation, "Tanh": tensors.activation, "Elu": tensors.activation,
    "Selu": tensors.activation, "Softplus": tensors.activation, "Softsign": tensors.activation,
    "HardSigmoid": tensors.activation, "HardSwish": tensors.activation, "Softmax": tensors.softmax,
    "LogSoftmax": tensors.softmax, "Clip": tensors.clip, "PRelu": tensors.prelu,
}
# Operators whose layer takes several run-time tensors; all others take input 0 only.
_MULTI_INPUT_OPS = ("Add", "Sub", "Mul", "Div", "Concat", "MatMul")
_FLOAT_INPUT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def read_onnx(path: pathlib.Path) -> CanonicalModel:
    """Convert the ONNX classifier at ``path``; raises an :class:`~worker.core.errors.InputError` if it cannot."""
    path = pathlib.Path(path)
    what = f"ONNX model {path.name}"
    model = load_model(path)
    opset = default_opset(model, what)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedLayerError(
            f"{what} uses opset {opset}; bdscreen reads opsets {MIN_OPSET} to {MAX_OPSET}. Re-export it, for "
            "example with torch.onnx.export(..., opset_version=17)."
        )
    vet_model(model, what)
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    input_info = _single_input(graph, initializers, what)
    output_name = _single_output(graph, what)
    shape, static_batch = _input_shape(input_info, what)

    builder = GraphBuilder(what=what, channels_last=False)
    builder.add_input(input_info.name, "Input", shape, ops.Identity(), internal_shape=shape)
    values: dict[str, Value] = {input_info.name: Dynamic(input_info.name, shape)}

    def read_tensor(tensor: onnx.TensorProto, where: str) -> np.ndarray:
        return tensor_to_array(tensor, where)

    def value_of(tensor_name: str, view_where: str) -> Value | None:
        if not tensor_name:  # an omitted optional input
            return None
        if tensor_name not in values and tensor_name in initializers:
            values[tensor_name] = read_tensor(initializers[tensor_name], f"{what}: initializer '{tensor_name}'")
        if tensor_name not in values:
            raise UnreadableModelError(f"{view_where} reads '{tensor_name}', which no earlier node produces.")
        return values[tensor_name]

    needed_nodes, needed_tensors = _needed(graph, output_name, what)
    names = _layer_names(graph, reserved={module_key(input_info.name)})
    for index, node in enumerate(graph.node):
        if index not in needed_nodes:
            continue
        where = f"{what}: node '{names[index]}' ({node.op_type})"
        inputs = [value_of(name, where) for name in node.input]
        view = NodeView(node, names[index], what, opset, inputs, static_batch, read_tensor)
        if any(name in needed_tensors for name in node.output[1:]):
            raise view.unsupported("is used for an output other than its first; bdscreen supports only that one.")
        values[node.output[0]] = _convert(builder, view)

    output = values.get(output_name)
    if output is None:
        raise UnreadableModelError(f"{what}: no node produces the output '{output_name}'.")
    if not isinstance(output, Dynamic):
        raise UnsupportedLayerError(f"{what}: the output '{output_name}' does not depend on the model input.")
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p) or "unknown producer"
    return builder.build(output=output.layer, fmt=ModelFormat.onnx, producer=f"{producer}, opset {opset}",
                         layout=_layout(graph, input_info.name, len(shape) + 1))


def _convert(builder: GraphBuilder, view: NodeView) -> Value:
    """Fold the node into a constant, or add its layer when it depends on the model input."""
    try:
        if view.op == "Shape" or not any(isinstance(v, Dynamic) for v in view.inputs):
            return fold(view)
        return _add_layer(builder, view)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        # What a malformed node (an attribute missing or of the wrong type) raises in the converters;
        # the converters' own refusals are InputErrors and pass through.
        raise view.unreadable(f"is malformed ({type(exc).__name__}: {exc}).") from None


def _add_layer(builder: GraphBuilder, view: NodeView) -> Dynamic:
    converter = CONVERTERS.get(view.op)
    if converter is None:
        raise view.unsupported(
            f"is an operator bdscreen does not support. Supported operators: {', '.join(sorted(CONVERTERS))}."
        )
    if view.op not in _MULTI_INPUT_OPS and any(isinstance(v, Dynamic) for v in view.inputs[1:]):
        raise view.unsupported("takes a run-time tensor where bdscreen needs a constant (any input but the first).")
    module = converter(view).eval()  # eval: shape inference must not use training-mode BatchNorm
    inputs = [v.layer for v in view.inputs if isinstance(v, Dynamic)]
    return Dynamic(view.name, builder.add(view.name, view.op, inputs, module))


def _single_input(graph: onnx.GraphProto, initializers: dict, what: str) -> onnx.ValueInfoProto:
    # Old exporters also list initializers as graph inputs; those are weights, not inputs.
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UnsupportedLayerError(
            f"{what} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); bdscreen screens classifiers "
            "with a single input (a batch of images or feature vectors) and a single output."
        )
    return inputs[0]


def _single_output(graph: onnx.GraphProto, what: str) -> str:
    if len(graph.output) != 1:
        raise UnsupportedLayerError(
            f"{what} has {len(graph.output)} outputs; bdscreen screens classifiers with a single input and a single "
            "output (the class scores)."
        )
    return graph.output[0].name


def _input_shape(info: onnx.ValueInfoProto, what: str) -> tuple[tuple[int, ...], int | None]:
    """One sample's shape and, when the file fixes it, the batch size."""
    where = f"{what}: input '{info.name}'"
    tensor_type = info.type.tensor_type
    if not info.type.HasField("tensor_type") or tensor_type.elem_type not in _FLOAT_INPUT_TYPES:
        raise UnsupportedLayerError(f"{where} is not a float tensor; bdscreen feeds float32 images or features.")
    if not tensor_type.HasField("shape") or len(tensor_type.shape.dim) not in (2, 4):
        raise UnsupportedLayerError(
            f"{where} must be declared as (batch, features) or as a 4-D image batch (NCHW or NHWC)."
        )
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
    if any(d is None for d in dims[1:]):
        raise UnsupportedLayerError(
            f"{where} has shape {[d or '?' for d in dims]}; only the batch axis may be dynamic. Export with a fixed "
            "sample shape."
        )
    shape = tuple(int(d) for d in dims[1:])
    check_elements(where, shape, MAX_INPUT_ELEMENTS)
    return shape, dims[0]


def _layout(graph: onnx.GraphProto, input_name: str, rank: int) -> InputLayout:
    if rank == 2:
        return InputLayout.flat
    for node in graph.node:  # tf2onnx starts channels-last models with this transpose
        if node.op_type == "Transpose" and node.input[:1] == [input_name]:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm == [0, 3, 1, 2]:
                return InputLayout.nhwc
    return InputLayout.nchw


def _needed(graph: onnx.GraphProto, output_name: str, what: str) -> tuple[set[int], set[str]]:
    """Indices of the nodes the output depends on, and the tensors it depends on."""
    producers: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in filter(None, node.output):
            if name in producers:
                raise UnreadableModelError(f"{what}: tensor '{name}' is produced by two nodes.")
            producers[name] = index
    nodes: set[int] = set()
    tensors_seen: set[str] = set()
    stack = [output_name]
    while stack:  # iterative: a hostile graph can be thousands of nodes deep
        name = stack.pop()
        if name in tensors_seen:
            continue
        tensors_seen.add(name)
        if name in producers:
            nodes.add(producers[name])
            stack.extend(n for n in graph.node[producers[name]].input if n)
    return nodes, tensors_seen


def _layer_names(graph: onnx.GraphProto, reserved: set[str]) -> list[str]:
    """Node names as layer names; unnamed or clashing nodes get '<op>_<index>' (unique after module_key)."""
    used, names = set(reserved), []
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while module_key(name) in used:
            name = f"{name}_{index}"
        used.add(module_key(name))
        names.append(name)
    return names
