"""Torch modules for the layers of the canonical graph.

Tensors inside the canonical graph are channels-first (N, C, H, W) whatever the source layout;
modules that depend on axis order (flatten, reshape, dense on images) carry the source's
convention explicitly, so that weights are used exactly as stored and no weight is permuted.
Fused activations (Keras ``activation=`` on Conv2D/Dense) live inside the layer, so a hook on a
layer sees the same output as the source framework's layer output.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.core.errors import UnsupportedLayerError

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda x: x,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
    "selu": F.selu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "swish": F.silu,
    "silu": F.silu,
    "relu6": F.relu6,
    "exponential": torch.exp,
}


def activation_function(name: str, where: str) -> Callable[[Tensor], Tensor]:
    """The element-wise function for an activation name (softmax is handled by :class:`Activation`)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        supported = ", ".join(sorted([*_ACTIVATIONS, "softmax"]))
        raise UnsupportedLayerError(
            f"{where}: activation '{name}' is not supported (supported: {supported})."
        ) from None


class Activation(nn.Module):
    """An activation, element-wise or softmax over ``dim``."""

    def __init__(self, name: str, where: str, dim: int = 1, negative_slope: float = 0.0,
                 max_value: float | None = None, threshold: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.dim = dim
        self.negative_slope = negative_slope
        self.max_value = max_value
        self.threshold = threshold
        self._fn = None if name in ("softmax", "leaky_relu", "relu_ext") else activation_function(name, where)

    def forward(self, x: Tensor) -> Tensor:
        if self.name == "softmax":
            return torch.softmax(x, dim=self.dim)
        if self.name == "leaky_relu":
            return F.leaky_relu(x, self.negative_slope)
        if self.name == "relu_ext":  # Keras ReLU(max_value, negative_slope, threshold)
            y = torch.where(x >= self.threshold, x, self.negative_slope * (x - self.threshold))
            return y if self.max_value is None else torch.clamp(y, max=self.max_value)
        return self._fn(x)


class Conv2d(nn.Conv2d):
    """A 2-D convolution with explicit (left, right, top, bottom) padding and a fused activation."""

    def __init__(self, *args, pad: tuple[int, int, int, int] = (0, 0, 0, 0), activation: str = "linear",
                 where: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pad = tuple(pad)
        self.activation = Activation(activation, where)

    def pre_activation(self, x: Tensor) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return super().forward(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.pre_activation(x))


class Linear(nn.Linear):
    """A dense layer with a fused activation; on a 4-D input it acts on the channel axis."""

    def __init__(self, *args, activation: str = "linear", where: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.activation = Activation(activation, where)

    def pre_activation(self, x: Tensor) -> Tensor:
        if x.dim() == 4:  # Keras Dense on an image acts on the last (channel) axis
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.pre_activation(x))


class Pool2d(nn.Module):
    """Max or average pooling with explicit, possibly asymmetric padding.

    Padded cells never win a max and never count in an average (TensorFlow's 'same' semantics).
    """

    def __init__(self, kind: str, kernel: tuple[int, int], stride: tuple[int, int],
                 pad: tuple[int, int, int, int] = (0, 0, 0, 0), ceil_mode: bool = False,
                 count_include_pad: bool = False) -> None:
        super().__init__()
        self.kind, self.kernel, self.stride, self.pad = kind, tuple(kernel), tuple(stride), tuple(pad)
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "max":
            if any(self.pad):
                x = F.pad(x, self.pad, value=float("-inf"))
            return F.max_pool2d(x, self.kernel, self.stride, ceil_mode=self.ceil_mode)
        if not any(self.pad) or self.count_include_pad:
            x = F.pad(x, self.pad) if any(self.pad) else x
            return F.avg_pool2d(x, self.kernel, self.stride, ceil_mode=self.ceil_mode)
        summed = F.avg_pool2d(F.pad(x, self.pad), self.kernel, self.stride, ceil_mode=self.ceil_mode,
                              divisor_override=1)
        ones = F.pad(torch.ones_like(x[:1, :1]), self.pad)
        counts = F.avg_pool2d(ones, self.kernel, self.stride, ceil_mode=self.ceil_mode, divisor_override=1)
        return summed / counts


class GlobalPool2d(nn.Module):
    def __init__(self, kind: str, keepdims: bool = False) -> None:
        super().__init__()
        self.kind, self.keepdims = kind, keepdims

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "max":
            return torch.amax(x, dim=(2, 3), keepdim=self.keepdims)
        return torch.mean(x, dim=(2, 3), keepdim=self.keepdims)


class Flatten(nn.Module):
    """Flatten from ``start_dim``; ``channels_last`` flattens an image in H, W, C order (Keras)."""

    def __init__(self, channels_last: bool, start_dim: int = 1) -> None:
        super().__init__()
        self.channels_last, self.start_dim = channels_last, start_dim

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return torch.flatten(x, self.start_dim)


class ChannelsLastReshape(nn.Module):
    """Keras Reshape: the target shape is in channels-last terms; 3-D results go back to channels-first."""

    def __init__(self, target: tuple[int, ...]) -> None:
        super().__init__()
        self.target = tuple(target)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        y = x.reshape((x.shape[0], *self.target))
        return y.permute(0, 3, 1, 2) if y.dim() == 4 else y


class ToChannelsFirst(nn.Module):
    """The input of a channels-last model: N, H, W, C in; N, C, H, W inside the graph."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


class Merge(nn.Module):
    """Element-wise merge of several inputs, or concatenation along ``dim``."""

    def __init__(self, kind: str, dim: int = 1) -> None:
        super().__init__()
        self.kind, self.dim = kind, dim

    def forward(self, *xs: Tensor) -> Tensor:
        if self.kind == "concat":
            return torch.cat(xs, dim=self.dim)
        out = xs[0]
        for x in xs[1:]:
            if self.kind == "add":
                out = out + x
            elif self.kind == "multiply":
                out = out * x
            elif self.kind == "subtract":
                out = out - x
            elif self.kind == "maximum":
                out = torch.maximum(out, x)
            elif self.kind == "minimum":
                out = torch.minimum(out, x)
            elif self.kind == "average":
                out = out + x
        return out / len(xs) if self.kind == "average" else out


class Pad2d(nn.Module):
    """Constant padding by (left, right, top, bottom)."""

    def __init__(self, pad: tuple[int, int, int, int], value: float = 0.0) -> None:
        super().__init__()
        self.pad, self.value = tuple(pad), value

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, self.pad, value=self.value)


class Crop2d(nn.Module):
    """Cropping by (top, bottom, left, right)."""

    def __init__(self, crop: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.crop = tuple(crop)

    def forward(self, x: Tensor) -> Tensor:
        top, bottom, left, right = self.crop
        return x[:, :, top: x.shape[2] - bottom, left: x.shape[3] - right]


class Upsample2d(nn.Module):
    def __init__(self, scale: tuple[int, int], mode: str) -> None:
        super().__init__()
        self.scale, self.mode = tuple(scale), mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "nearest":
            return x.repeat_interleave(self.scale[0], dim=2).repeat_interleave(self.scale[1], dim=3)
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


class Identity(nn.Module):
    """Layers that do nothing at inference (InputLayer of a channels-first model, Dropout, ...)."""

    def forward(self, x: Tensor) -> Tensor:
        return x
