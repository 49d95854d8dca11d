"""Converters for the ONNX operators that carry weights, normalize, pool or resize.

Each converter takes a :class:`NodeView` whose input 0 depends on the model input and returns the
torch module of its canonical layer. Weights are copied as stored (as float32) into
:class:`worker.engine.ops.Conv2d` / :class:`worker.engine.ops.Linear`, so that later pruning finds them.
"""

import math

import numpy as np
import torch
from torch import nn

from worker.engine import ops
from worker.engine.formats import onnx_ops
from worker.engine.formats.onnx_node import Dynamic, NodeView, ShapeValue


def float_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 torch copy of ``array`` (a copy, so the module owns writable memory)."""
    return torch.from_numpy(np.array(array, dtype=np.float32))


def conv(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    weight, bias = view.const(1, "weight"), view.optional_const(2, "bias")
    if x.rank != 4 or weight.ndim != 4:
        raise view.unsupported(f"is a {x.rank - 2}-D convolution; bdscreen supports 2-D convolutions (4-D input).")
    out_channels, group_channels, *kernel = (int(d) for d in weight.shape)
    groups = int(view.attr("group", 1))
    strides, dilations = _pair(view, "strides"), _pair(view, "dilations")
    if view.has_attr("kernel_shape") and list(view.attr("kernel_shape")) != kernel:
        raise view.unreadable(f"declares kernel_shape {view.attr('kernel_shape')} but its weight is {kernel}.")
    if groups < 1 or x.shape[0] != group_channels * groups or out_channels % groups:
        raise view.unreadable(f"has {groups} groups and weight {list(weight.shape)} for {x.shape[0]} input channels.")
    top, left, bottom, right = explicit_pads(view, x.shape[1:], kernel, strides, dilations)
    symmetric = top == bottom and left == right
    module = ops.Conv2d(
        x.shape[0], out_channels, tuple(kernel), stride=strides, dilation=dilations, groups=groups,
        bias=bias is not None, padding=(top, left) if symmetric else 0,
        pad=(0, 0, 0, 0) if symmetric else (left, right, top, bottom), where=view.where, device="meta",
    )
    module.weight = nn.Parameter(float_tensor(weight))
    if bias is not None:
        module.bias = nn.Parameter(float_tensor(_vector(view, bias, out_channels, "bias")))
    return module


def gemm(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    if x.rank != 2 or view.attr("transA", 0):
        raise view.unsupported("multiplies a transposed or non-2-D input; bdscreen needs Gemm on (batch, features).")
    matrix = view.const(1, "B")
    if matrix.ndim != 2:
        raise view.unreadable(f"has a B input of shape {list(matrix.shape)}.")
    weight = matrix if view.attr("transB", 0) else matrix.T  # torch stores (out_features, in_features)
    alpha, beta = float(view.attr("alpha", 1.0)), float(view.attr("beta", 1.0))
    bias = view.optional_const(2, "C")
    if bias is not None and bias.ndim == 2 and bias.shape[0] != 1:
        raise view.unsupported("adds a C input with one row per sample; bdscreen needs a per-feature bias.")
    module = ops.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, where=view.where, device="meta")
    module.weight = nn.Parameter(float_tensor(weight * alpha if alpha != 1.0 else weight))
    if bias is not None:
        module.bias = nn.Parameter(float_tensor(beta * _vector(view, bias, weight.shape[0], "C")))
    return module


def matmul(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    other = view.input(1)
    if not isinstance(other, np.ndarray):
        right = view.dynamic(1)
        if x.rank != right.rank or x.rank < 3:
            raise view.unsupported("multiplies two run-time tensors whose batch axes do not line up.")
        return onnx_ops.MatMul()
    if other.ndim != 2 or x.rank < 2:
        raise view.unsupported("multiplies by a constant that is not a matrix, or a 1-D input.")
    linear_class = ops.Linear if x.rank <= 3 else onnx_ops.LastAxisLinear
    module = linear_class(other.shape[0], other.shape[1], bias=False, where=view.where, device="meta")
    module.weight = nn.Parameter(float_tensor(other.T))
    return module


def batch_norm(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    if view.attr("training_mode", 0):
        raise view.unsupported("is in training mode; export the model in eval mode (model.eval()).")
    if x.rank not in (2, 3, 4):
        raise view.unsupported(f"normalizes a rank-{x.rank} tensor; bdscreen supports ranks 2 to 4.")
    channels = x.shape[0]
    module = (nn.BatchNorm2d if x.rank == 4 else nn.BatchNorm1d)(channels, eps=float(view.attr("epsilon", 1e-5)))
    with torch.no_grad():
        for index, (what, target) in enumerate(
            [("scale", module.weight), ("B", module.bias), ("mean", module.running_mean), ("var", module.running_var)],
            start=1,
        ):
            target.copy_(float_tensor(_vector(view, view.const(index, what), channels, what)))
    return module


def pool(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    if x.rank != 4:
        raise view.unsupported("pools a tensor that is not 4-D; bdscreen supports 2-D pooling.")
    kernel, strides = list(view.attr("kernel_shape", [])), _pair(view, "strides")
    if len(kernel) != 2:
        raise view.unreadable(f"has kernel_shape {kernel}.")
    if _pair(view, "dilations") != (1, 1):
        raise view.unsupported("uses dilated pooling, which bdscreen does not support.")
    ceil_mode = bool(view.attr("ceil_mode", 0))
    top, left, bottom, right = explicit_pads(view, x.shape[1:], kernel, strides, (1, 1))
    if not onnx_ops.torch_can_pad(tuple(kernel), (left, right, top, bottom)):
        bottom = _pool_tail(view, x.shape[1], kernel[0], strides[0], top, bottom, ceil_mode)
        right = _pool_tail(view, x.shape[2], kernel[1], strides[1], left, right, ceil_mode)
    kind = "max" if view.op == "MaxPool" else "avg"
    return onnx_ops.Pool(kind, tuple(kernel), strides, (left, right, top, bottom), ceil_mode,
                         bool(view.attr("count_include_pad", 0)), input_size=x.shape[1:])


def global_pool(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    kind = "max" if view.op == "GlobalMaxPool" else "mean"
    if x.rank == 4:
        return ops.GlobalPool2d("max" if kind == "max" else "avg", keepdims=True)
    if x.rank < 3:
        raise view.unsupported("pools a tensor without spatial axes.")
    return onnx_ops.Reduce(kind, tuple(range(2, x.rank)), keepdims=True)


def resize(view: NodeView) -> nn.Module:
    x = view.dynamic(0)
    if x.rank != 4:
        raise view.unsupported("resizes a tensor that is not 4-D; bdscreen supports 2-D resizing.")
    scale = _resize_scale(view, x.shape)
    mode = view.attr("mode", "nearest")
    transform = view.attr("coordinate_transformation_mode", "half_pixel")
    nearest = view.attr("nearest_mode", "round_prefer_floor")
    # With integer scales these coordinate rules all pick source pixel floor(i / scale): plain repetition.
    if mode == "nearest" and (transform in ("half_pixel", "pytorch_half_pixel") or
                              (transform in ("asymmetric", "tf_half_pixel_for_nn") and nearest == "floor")):
        return onnx_ops.Upsample(scale, "nearest")
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel"):
        return onnx_ops.Upsample(scale, "bilinear")
    raise view.unsupported(
        f"resizes with mode '{mode}', coordinate_transformation_mode '{transform}' and nearest_mode '{nearest}'; "
        "bdscreen supports nearest (half_pixel, or asymmetric with floor) and linear (half_pixel) upsampling "
        "by integer factors."
    )


def explicit_pads(view: NodeView, spatial: tuple[int, ...], kernel: list[int], strides: tuple[int, int],
                  dilations: tuple[int, int]) -> list[int]:
    """ONNX pads [top, left, bottom, right], worked out from ``auto_pad`` when that is set."""
    auto_pad = view.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = [int(p) for p in view.attr("pads", [0, 0, 0, 0])]
        if len(pads) != 4 or min(pads) < 0:
            raise view.unreadable(f"has pads {pads}; expected four non-negative numbers.")
        return pads
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise view.unreadable(f"has unknown auto_pad '{auto_pad}'.")
    begins, ends = [], []
    for size, k, stride, dilation in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return [*begins, *ends]


def _pool_tail(view: NodeView, size: int, kernel: int, stride: int, begin: int, end: int, ceil_mode: bool) -> int:
    """The end padding that makes torch, on an input padded beforehand, produce ONNX's output length.

    In ceil mode, ONNX drops a last window that would start inside the end padding; torch, seeing
    the padding as part of the input, would keep it. Trimming the end padding to what the last kept
    window covers makes the two agree without changing any kept window.
    """
    span = size + begin + end - kernel
    if span < 0 or stride < 1:
        raise view.unreadable(f"has a kernel of {kernel} over an input of {size} padded by {begin}+{end}.")
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + begin:
        out -= 1
    return max(0, min(end, (out - 1) * stride + kernel - size - begin))


def _resize_scale(view: NodeView, shape: tuple[int, ...]) -> tuple[int, int]:
    if view.attr("coordinate_transformation_mode") == "tf_crop_and_resize":
        raise view.unsupported("crops and resizes, which bdscreen does not support.")
    if view.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise view.unsupported("keeps the aspect ratio, which bdscreen does not support.")
    axes = [view.axis(int(a), 4) for a in view.attr("axes", [0, 1, 2, 3])]
    scales, sizes = view.input(2), view.input(3)
    full = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    if scales is not None and not isinstance(scales, np.ndarray) or sizes is not None and isinstance(sizes, Dynamic):
        raise view.unsupported("computes its scales or sizes at run time.")
    if scales is not None and scales.size:
        factors = [float(s) for s in scales.reshape(-1)]
    elif sizes is not None:
        values = sizes.values if isinstance(sizes, ShapeValue) else sizes
        is_batch = sizes.is_batch if isinstance(sizes, ShapeValue) else np.zeros(values.shape, bool)
        if any(batch and axis != 0 for axis, batch in zip(axes, is_batch.reshape(-1), strict=False)):
            raise view.unsupported("computes its output size from the batch size.")
        dims = (1, *shape)  # the batch entry is never used: axis 0 must keep its size
        factors = [1.0 if axis == 0 else int(size) / dims[axis] for axis, size in zip(axes, values.reshape(-1),
                                                                                     strict=False)]
    else:
        raise view.unreadable("has neither scales nor sizes.")
    if len(factors) != len(axes):
        raise view.unreadable(f"gives {len(factors)} scales or sizes for {len(axes)} axes.")
    full.update(zip(axes, factors, strict=True))
    if full[0] != 1.0 or full[1] != 1.0:
        raise view.unsupported("resizes the batch or channel axis.")
    if any(full[a] < 1 or full[a] != int(full[a]) for a in (2, 3)):
        raise view.unsupported(f"resizes by {full[2]} x {full[3]}; bdscreen supports integer upsampling factors.")
    return int(full[2]), int(full[3])


def _pair(view: NodeView, name: str) -> tuple[int, int]:
    values = [int(v) for v in view.attr(name, [1, 1])]
    if len(values) != 2 or min(values) < 1:
        raise view.unreadable(f"has {name} {values}; expected two positive numbers.")
    return values[0], values[1]


def _vector(view: NodeView, array: np.ndarray, length: int, what: str) -> np.ndarray:
    """``array`` as a vector of ``length`` (a single value is repeated)."""
    if array.size not in (1, length):
        raise view.unreadable(f"has a {what} of shape {list(array.shape)}; expected {length} values.")
    return np.broadcast_to(array.reshape(-1), (length,))
