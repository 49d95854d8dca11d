"""Torch modules for ONNX operators that have no counterpart in :mod:`worker.engine.ops`.

Each module implements its operator exactly as ONNX defines it on the tensor as ONNX lays it out,
with axis 0 always the batch axis (the reader refuses any node that would move or mix it). Static
operands (axes, indices, target shapes) are plain Python values, so they are not counted as
weights and trace into constants when the model is exported back to ONNX.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine.ops import Linear, Pool2d, Upsample2d


class Arithmetic(nn.Module):
    """Element-wise Add/Sub/Mul/Div of two graph tensors, or of one graph tensor and a constant.

    ``constant_first`` keeps the operand order of Sub and Div when the constant is the left operand.
    """

    def __init__(self, op: str, constant: Tensor | None = None, constant_first: bool = False) -> None:
        super().__init__()
        self.op, self.constant_first = op, constant_first
        self.register_buffer("constant", constant)

    def forward(self, *xs: Tensor) -> Tensor:
        if self.constant is None:
            left, right = xs
        elif self.constant_first:
            left, right = self.constant, xs[0]
        else:
            left, right = xs[0], self.constant
        if self.op == "add":
            return left + right
        if self.op == "sub":
            return left - right
        if self.op == "mul":
            return left * right
        return left / right


class MatMul(nn.Module):
    """MatMul of two graph tensors (numpy semantics, batch axes broadcast)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.matmul(a, b)


class LastAxisLinear(Linear):
    """MatMul by a constant matrix on a tensor of rank 4 or more: ONNX acts on the last axis.

    :class:`worker.engine.ops.Linear` acts on the channel axis of a 4-D tensor (the Keras convention), so
    ONNX needs this variant; it is still a ``Linear``, so code that prunes dense layers finds it.
    """

    def pre_activation(self, x: Tensor) -> Tensor:
        return nn.Linear.forward(self, x)


class Reshape(nn.Module):
    """Reshape to a static per-sample ``target``, keeping the batch axis (Reshape, Squeeze, Unsqueeze)."""

    def __init__(self, target: tuple[int, ...]) -> None:
        super().__init__()
        self.target = tuple(target)

    def forward(self, x: Tensor) -> Tensor:
        # -1 on the batch axis rather than x.shape[0]: the export then needs no Shape subgraph.
        return x.reshape((-1, *self.target))


class Transpose(nn.Module):
    def __init__(self, perm: tuple[int, ...]) -> None:
        super().__init__()
        self.perm = tuple(perm)

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(self.perm)


class Slice(nn.Module):
    """ONNX Slice with static bounds: ``ranges`` maps an axis to the indices it keeps, as a range."""

    def __init__(self, ranges: dict[int, range]) -> None:
        super().__init__()
        self.ranges = dict(ranges)

    def forward(self, x: Tensor) -> Tensor:
        for axis, kept in self.ranges.items():
            if kept.step > 0:
                x = x[(slice(None),) * axis + (slice(kept.start, kept.stop, kept.step),)]
            else:  # torch slicing has no negative step
                x = x.index_select(axis, torch.tensor(list(kept), dtype=torch.long, device=x.device))
        return x


class Gather(nn.Module):
    """ONNX Gather with static, already non-negative ``indices`` of shape ``indices_shape`` along ``axis``."""

    def __init__(self, axis: int, indices: tuple[int, ...], indices_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.axis, self.indices, self.indices_shape = axis, tuple(indices), tuple(indices_shape)

    def forward(self, x: Tensor) -> Tensor:
        if not self.indices_shape:  # a scalar index removes the axis
            return x.select(self.axis, self.indices[0])
        index = torch.tensor(self.indices, dtype=torch.long, device=x.device)
        return x.index_select(self.axis, index).unflatten(self.axis, self.indices_shape)


class Pad(nn.Module):
    """ONNX Pad; ``pad`` is in torch order (last axis first: begin, end, then the axis before, ...)."""

    def __init__(self, pad: tuple[int, ...], mode: str, value: float = 0.0) -> None:
        super().__init__()
        self.pad, self.mode, self.value = tuple(pad), mode, value

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "constant":
            return F.pad(x, self.pad, value=self.value)
        return F.pad(x, self.pad, mode=self.mode)


class Clamp(nn.Module):
    """ONNX Clip with constant bounds other than the ReLU and ReLU6 ones."""

    def __init__(self, low: float | None, high: float | None) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x, self.low, self.high)


class PRelu(nn.Module):
    """ONNX PRelu: ``slope`` broadcasts against the input as numpy does (right-aligned)."""

    def __init__(self, slope: Tensor) -> None:
        super().__init__()
        self.slope = nn.Parameter(slope)

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, x, x * self.slope)


class Elementwise(nn.Module):
    """ONNX activations that :class:`worker.engine.ops.Activation` lacks (hard sigmoid, hard swish) or has only with
    other constants (elu with alpha != 1, selu with non-default alpha/gamma, the latter held in ``beta``)."""

    def __init__(self, name: str, alpha: float = 0.0, beta: float = 0.0) -> None:
        super().__init__()
        self.name, self.alpha, self.beta = name, alpha, beta

    def forward(self, x: Tensor) -> Tensor:
        if self.name == "elu":
            return F.elu(x, self.alpha)
        if self.name == "selu":  # ONNX Selu: gamma * (alpha * (exp(x) - 1) for x <= 0, x for x > 0)
            return self.beta * torch.where(x > 0, x, self.alpha * (torch.exp(x) - 1))
        if self.name == "hard_sigmoid":
            return torch.clamp(self.alpha * x + self.beta, 0.0, 1.0)
        # hard_swish: ONNX fixes its constants (alpha 1/6, beta 0.5), as torch does
        return F.hardswish(x)


class LogSoftmax(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return torch.log_softmax(x, dim=self.dim)


class Reduce(nn.Module):
    """ReduceMean/ReduceMax/ReduceSum over static ``axes`` (never the batch axis)."""

    def __init__(self, kind: str, axes: tuple[int, ...], keepdims: bool) -> None:
        super().__init__()
        self.kind, self.axes, self.keepdims = kind, tuple(axes), keepdims

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "mean":
            return torch.mean(x, dim=self.axes, keepdim=self.keepdims)
        if self.kind == "max":
            return torch.amax(x, dim=self.axes, keepdim=self.keepdims)
        return torch.sum(x, dim=self.axes, keepdim=self.keepdims)


class Upsample(Upsample2d):
    """Integer-factor Resize. Nearest uses ``F.interpolate`` (equal to repetition for integer factors)
    rather than the parent's ``repeat_interleave``, because it exports back to a single Resize node."""

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return super().forward(x)


def torch_can_pad(kernel: tuple[int, int], pad: tuple[int, int, int, int]) -> bool:
    """Whether torch's own pooling padding can express ``pad`` (left, right, top, bottom): even, at most k/2."""
    left, right, top, bottom = pad
    return left == right and top == bottom and 2 * top <= kernel[0] and 2 * left <= kernel[1]


class Pool(Pool2d):
    """:class:`worker.engine.ops.Pool2d` that exports back to one ONNX pooling node (after a Pad if uneven).

    Even padding goes to torch's pooling, whose ceil mode and divisors are ONNX's. Uneven padding is
    applied first; an average that must not count padded cells is then rescaled by a constant
    ``correction`` (computed for the static ``input_size``), since the parent's way of counting
    cells slices the batch axis in the exported graph.
    """

    def __init__(self, kind: str, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int, int, int],
                 ceil_mode: bool, count_include_pad: bool, input_size: tuple[int, int]) -> None:
        super().__init__(kind, kernel, stride, pad, ceil_mode, count_include_pad)
        self.native = torch_can_pad(self.kernel, self.pad)
        correction = None
        if kind == "avg" and not count_include_pad and not self.native:
            # torch divides each window by its cells inside the padded input; ONNX by its unpadded cells.
            ones = F.pad(torch.ones((1, 1, *input_size)), self.pad)
            correction = 1.0 / F.avg_pool2d(ones, kernel, stride, ceil_mode=ceil_mode)
        self.register_buffer("correction", correction)

    def forward(self, x: Tensor) -> Tensor:
        if self.native:
            padding = (self.pad[2], self.pad[0])
            if self.kind == "max":
                return F.max_pool2d(x, self.kernel, self.stride, padding, ceil_mode=self.ceil_mode)
            return F.avg_pool2d(x, self.kernel, self.stride, padding, ceil_mode=self.ceil_mode,
                                count_include_pad=self.count_include_pad)
        if self.correction is None:
            return super().forward(x)
        pooled = F.avg_pool2d(F.pad(x, self.pad), self.kernel, self.stride, ceil_mode=self.ceil_mode)
        return pooled * self.correction
