"""Converters for element-wise and shape-manipulating ONNX operators on run-time tensors.

Axis 0 of every run-time tensor is the batch axis, and bdscreen keeps it that way: a node that
would reshape, slice, transpose or broadcast across it is refused rather than converted, since
the canonical model must treat each sample of a batch alike.
"""

from math import prod

import numpy as np
from torch import nn

from worker.engine import ops
from worker.engine.formats import onnx_ops
from worker.engine.formats.onnx_layers import float_tensor
from worker.engine.formats.onnx_node import Dynamic, NodeView, ShapeValue, slice_ranges

# Stands for the unknown batch size where a Slice needs an axis length: larger than any real
# batch, so that only a Slice keeping the whole batch axis maps it to range(0, _BATCH, 1).
_BATCH = 2**62


def arithmetic(view: NodeView) -> nn.Module:
    op = view.op.lower()
    left, right = view.input(0), view.input(1)
    if isinstance(left, Dynamic) and isinstance(right, Dynamic):
        if left.rank != right.rank:
            raise view.unsupported("combines run-time tensors of different ranks, so their batch axes do not align.")
        return onnx_ops.Arithmetic(op)
    constant_first = not isinstance(left, Dynamic)
    x, constant = (right, left) if constant_first else (left, right)
    if not isinstance(constant, np.ndarray):
        raise view.unsupported("combines a tensor with a value computed from the batch size.")
    if constant.ndim > x.rank or constant.ndim == x.rank and constant.shape[0] != 1:
        raise view.unsupported(f"broadcasts a constant of shape {list(constant.shape)} across the batch axis.")
    return onnx_ops.Arithmetic(op, float_tensor(constant), constant_first)


def concat(view: NodeView) -> nn.Module:
    inputs = [view.dynamic(i) for i in range(len(view.inputs))]
    if len({x.rank for x in inputs}) != 1:
        raise view.unreadable("concatenates tensors of different ranks.")
    return ops.Merge("concat", dim=view.non_batch_axis(int(view.attr("axis")), inputs[0].rank))


def reshape(view: NodeView) -> nn.Module:
    x, shape = view.dynamic(0), view.input(1)
    if isinstance(shape, ShapeValue):
        values, is_batch = shape.values.reshape(-1), shape.is_batch.reshape(-1)
    elif isinstance(shape, np.ndarray):
        values, is_batch = shape.reshape(-1), np.zeros(shape.size, bool)
    else:
        raise view.unsupported("computes its target shape from run-time values.")
    target = [int(v) for v in values]
    if not target or is_batch[1:].any():
        raise view.unsupported(f"moves the batch axis (target shape {target}).")
    allow_zero = bool(view.attr("allowzero", 0))
    first = target[0]
    keeps_batch = bool(is_batch[0]) or (first == 0 and not allow_zero) or first == -1 or first == view.static_batch
    if not keeps_batch:
        raise view.unsupported(f"reshapes to {target}, which fixes or changes the batch axis.")
    rest = [x.shape[i] if d == 0 and not allow_zero and i < len(x.shape) else d for i, d in enumerate(target[1:])]
    samples = prod(x.shape)
    first_inferred = first == -1 and not is_batch[0]  # a batch entry of a ShapeValue holds -1 too
    if rest.count(-1) + first_inferred > 1 or any(d < -1 for d in rest):
        raise view.unreadable(f"has an invalid target shape {target}.")
    if -1 in rest:
        known = prod(d for d in rest if d != -1)
        if known == 0 or samples % known:
            raise view.unreadable(f"cannot reshape {list(x.shape)} per sample to {target}.")
        rest[rest.index(-1)] = samples // known
    if prod(rest) != samples:
        raise view.unsupported(f"reshapes {list(x.shape)} per sample to {target}, which mixes samples of a batch.")
    return onnx_ops.Reshape(tuple(rest))


def flatten(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    axis = int(view.attr("axis", 1))
    if (axis + x.rank if axis < 0 else axis) != 1:
        raise view.unsupported(f"flattens from axis {axis}, which merges the batch axis; only axis 1 is supported.")
    return ops.Flatten(channels_last=False, start_dim=1)


def squeeze(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    axes = view.axes_operand(since_opset=13)
    if axes is None:  # all unit axes of a sample; the batch axis is kept whatever its size
        dropped = {i + 1 for i, d in enumerate(x.shape) if d == 1}
    else:
        dropped = {view.non_batch_axis(a, x.rank) for a in axes}
    if any(x.shape[a - 1] != 1 for a in dropped):
        raise view.unreadable(f"squeezes axes {sorted(dropped)} of a tensor of shape [N, {list(x.shape)}].")
    return onnx_ops.Reshape(tuple(d for i, d in enumerate(x.shape, start=1) if i not in dropped))


def unsqueeze(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    axes = view.axes_operand(since_opset=13)
    if not axes:
        raise view.unreadable("names no axes.")
    rank = x.rank + len(axes)
    inserted = {view.non_batch_axis(a, rank) for a in axes}
    dims = iter(x.shape)
    return onnx_ops.Reshape(tuple(1 if i in inserted else next(dims) for i in range(1, rank)))


def transpose(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    perm = [int(p) for p in view.attr("perm", list(range(x.rank))[::-1])]
    if sorted(perm) != list(range(x.rank)):
        raise view.unreadable(f"has perm {perm} for a rank-{x.rank} tensor.")
    if perm[0] != 0:
        raise view.unsupported(f"moves the batch axis (perm {perm}).")
    return onnx_ops.Transpose(tuple(perm))


def slice_layer(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    ranges = slice_ranges(view, (_BATCH, *x.shape))
    if 0 in ranges and ranges.pop(0) != range(0, _BATCH, 1):
        raise view.unsupported("slices the batch axis; bdscreen needs every sample kept.")
    return onnx_ops.Slice({axis: kept for axis, kept in ranges.items() if kept != range(x.shape[axis - 1])})


def gather(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    axis = view.non_batch_axis(int(view.attr("axis", 0)), x.rank)
    indices = view.const(1, "indices")
    if not np.issubdtype(indices.dtype, np.integer):
        raise view.unreadable("has non-integer indices.")
    size = x.shape[axis - 1]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise view.unreadable(f"gathers indices outside an axis of length {size}.")
    normalized = tuple(int(i) % size for i in indices.reshape(-1))
    return onnx_ops.Gather(axis, normalized, tuple(indices.shape))


def pad(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(view.attr("mode", "constant"))
    if mode is None:
        raise view.unsupported(f"pads in mode '{view.attr('mode')}'; supported: constant, reflect, edge.")
    amounts = [int(p) for p in view.const(1, "pads").reshape(-1)]
    value = view.optional_const(2, "constant_value")
    axes_array = view.optional_const(3, "axes")
    axes = list(range(x.rank)) if axes_array is None else [view.axis(int(a), x.rank) for a in axes_array.reshape(-1)]
    if len(amounts) != 2 * len(axes):
        raise view.unreadable(f"has {len(amounts)} pads for {len(axes)} axes.")
    begins, ends = dict(zip(axes, amounts[:len(axes)], strict=True)), dict(zip(axes, amounts[len(axes):], strict=True))
    if begins.get(0, 0) or ends.get(0, 0):
        raise view.unsupported("pads the batch axis.")
    padded = [a for a in range(1, x.rank) if begins.get(a, 0) or ends.get(a, 0)]
    if mode != "constant" and (any(a < 2 for a in padded) or min(amounts) < 0):
        raise view.unsupported(f"pads in mode '{view.attr('mode')}' outside the spatial axes or by negative amounts.")
    first = min(padded, default=x.rank - 1)
    torch_order = [n for a in range(x.rank - 1, first - 1, -1) for n in (begins.get(a, 0), ends.get(a, 0))]
    return onnx_ops.Pad(tuple(torch_order), mode, 0.0 if value is None else float(value.reshape(-1)[0]))


_FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16: all computed as float32


def cast(view: NodeView) -> nn.Module:
    if view.attr("to") not in _FLOAT_TYPES:
        raise view.unsupported("casts a run-time tensor to a non-float type; bdscreen computes in float32.")
    return ops.Identity()


def identity(view: NodeView) -> nn.Module:
    view.dynamic(0)
    return ops.Identity()


def reduce(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    kind = {"ReduceMean": "mean", "ReduceMax": "max", "ReduceSum": "sum"}[view.op]
    axes = view.axes_operand(since_opset=13 if view.op == "ReduceSum" else 18)
    if not axes:
        if view.attr("noop_with_empty_axes", 0):
            return ops.Identity()
        raise view.unsupported("reduces over all axes, the batch axis included.")
    return onnx_ops.Reduce(kind, tuple(sorted({view.non_batch_axis(a, x.rank) for a in axes})),
                           bool(view.attr("keepdims", 1)))


_SIMPLE_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus",
                       "Softsign": "softsign"}
_SELU_DEFAULTS = (1.67326319217681884765625, 1.05070102214813232421875)  # ONNX's Selu alpha and gamma


def activation(view: NodeView) -> nn.Module:
    view.dynamic(0)
    op = view.op
    if op in _SIMPLE_ACTIVATIONS:
        return ops.Activation(_SIMPLE_ACTIVATIONS[op], view.where)
    if op == "LeakyRelu":
        return ops.Activation("leaky_relu", view.where, negative_slope=float(view.attr("alpha", 0.01)))
    if op == "Elu":
        alpha = float(view.attr("alpha", 1.0))
        return ops.Activation("elu", view.where) if alpha == 1.0 else onnx_ops.Elementwise("elu", alpha)
    if op == "Selu":
        constants = (float(view.attr("alpha", _SELU_DEFAULTS[0])), float(view.attr("gamma", _SELU_DEFAULTS[1])))
        return ops.Activation("selu", view.where) if constants == _SELU_DEFAULTS else \
            onnx_ops.Elementwise("selu", *constants)
    if op == "HardSigmoid":
        return onnx_ops.Elementwise("hard_sigmoid", float(view.attr("alpha", 0.2)), float(view.attr("beta", 0.5)))
    return onnx_ops.Elementwise("hard_swish")


def softmax(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    axis = view.non_batch_axis(int(view.attr("axis", -1 if view.opset >= 13 else 1)), x.rank)
    # Before opset 13 the operator flattened every axis from ``axis`` on; that equals the modern
    # definition only on the last axis.
    if view.opset < 13 and axis != x.rank - 1:
        raise view.unsupported(f"uses the pre-opset-13 {view.op} over axes {axis} and beyond; re-export at opset 13+.")
    if view.op == "Softmax":
        return ops.Activation("softmax", view.where, dim=axis)
    return onnx_ops.LogSoftmax(axis)


def clip(view: NodeView) -> nn.Module:
    view.dynamic(0)
    bounds = []
    for index, what in ((1, "min"), (2, "max")):
        bound = view.optional_const(index, what)
        if bound is not None and bound.size != 1:
            raise view.unreadable(f"has a {what} bound that is not a single value.")
        bounds.append(None if bound is None else float(bound.reshape(-1)[0]))
    if bounds == [0.0, None]:
        return ops.Activation("relu", view.where)
    if bounds == [0.0, 6.0]:
        return ops.Activation("relu6", view.where)
    return onnx_ops.Clamp(*bounds)


def prelu(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    slope = view.const(1, "slope")
    if slope.ndim > x.rank or slope.ndim == x.rank and slope.shape[0] != 1:
        raise view.unsupported(f"broadcasts a slope of shape {list(slope.shape)} across the batch axis.")
    return onnx_ops.PRelu(float_tensor(slope))
