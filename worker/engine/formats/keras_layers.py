"""Keras layer configs to canonical torch modules, and Keras weights to and from torch tensors.

Each builder gets the layer's config and its inputs' per-sample shapes (channels-first, as inside the
canonical graph) and returns a module. Weighted builders check the declared weight sizes against the
limits before constructing anything. :data:`WEIGHT_MAPS` is the one place that says how a Keras
weight tensor becomes a torch parameter and back; the reader and the HDF5 writer both use it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from math import ceil
from typing import Any

import numpy as np
from torch import nn

from worker.core.errors import UnreadableModelError, UnsupportedLayerError
from worker.core.limits import check_elements
from worker.engine import ops

Shape = tuple[int, ...]
Config = dict[str, Any]


@dataclass(frozen=True)
class WeightMap:
    """One Keras weight (``keras``, e.g. 'kernel') and the torch tensor it becomes (``torch``)."""

    keras: str
    torch: str
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_keras: Callable[[np.ndarray], np.ndarray]


def _same(a: np.ndarray) -> np.ndarray:
    return a


WEIGHT_MAPS: dict[str, list[WeightMap]] = {
    # Keras kernels are (kh, kw, in, out); torch's are (out, in, kh, kw).
    "Conv2D": [WeightMap("kernel", "weight", lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0)),
               WeightMap("bias", "bias", _same, _same)],
    "Dense": [WeightMap("kernel", "weight", lambda a: a.T, lambda a: a.T),
              WeightMap("bias", "bias", _same, _same)],
    "BatchNormalization": [WeightMap("gamma", "weight", _same, _same), WeightMap("beta", "bias", _same, _same),
                           WeightMap("moving_mean", "running_mean", _same, _same),
                           WeightMap("moving_variance", "running_var", _same, _same)],
}

IDENTITY_LAYERS = {"Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                   "ActivityRegularization", "InputLayer"}
MERGE_LAYERS = {"Add": "add", "Multiply": "multiply", "Subtract": "subtract", "Average": "average",
                "Maximum": "maximum", "Minimum": "minimum"}


def _pair(cfg: Config, key: str, default: Any, where: str) -> tuple[int, int]:
    """A Keras size pair (kernel, stride, pool, dilation, upsampling): one or two whole numbers, each >= 1."""
    value = cfg.get(key, default)
    if value is None:
        value = default
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise UnreadableModelError(f"{where}: {key} is {value!r}; it must be one or two whole numbers of at least 1.")
    return values[0], values[1]


def _same_padding(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                  dilation: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """TensorFlow's 'same' padding: the extra pixel, if any, goes after (bottom/right)."""
    pads = []
    for n, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        total = max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


def _channel_axis(cfg: Config, rank: int, where: str) -> int:
    """Map a Keras channels-last axis of a tensor of ``rank`` (with batch) to the canonical axis."""
    axis = cfg.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise UnsupportedLayerError(f"{where}: normalisation over axes {axis} is not supported.")
        axis = axis[0]
    axis = int(axis) % rank
    if rank == 4 and cfg.get("_channels_last", True):
        return {1: 2, 2: 3, 3: 1}[axis] if axis else 0
    return axis


def _padding_spec(value: Any) -> tuple[int, int, int, int]:
    """Keras ZeroPadding2D/Cropping2D forms -> (top, bottom, left, right)."""
    if isinstance(value, int):
        return value, value, value, value
    first, second = value
    if isinstance(first, int):
        return first, first, int(second), int(second)
    return int(first[0]), int(first[1]), int(second[0]), int(second[1])


def _conv2d(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    (cin, h, w), = shapes
    kernel, stride = _pair(cfg, "kernel_size", None, where), _pair(cfg, "strides", 1, where)
    dilation, groups = _pair(cfg, "dilation_rate", 1, where), int(cfg.get("groups", 1))
    filters = int(cfg["filters"])
    if groups < 1 or cin % groups or filters % groups:
        raise UnsupportedLayerError(f"{where}: groups={groups} does not divide {cin} inputs and {filters} filters.")
    check_elements(f"{where}: kernel", (*kernel, cin // groups, filters))
    padding = cfg.get("padding", "valid")
    if padding == "same":
        pad = _same_padding((h, w), kernel, stride, dilation)
    elif padding == "valid":
        pad = (0, 0, 0, 0)
    else:
        raise UnsupportedLayerError(f"{where}: padding '{padding}' is not supported (valid, same).")
    return ops.Conv2d(cin, filters, kernel, stride=stride, dilation=dilation, groups=groups,
                      bias=bool(cfg.get("use_bias", True)), pad=pad, activation=_activation_name(cfg, where),
                      where=where)


def _dense(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    (shape,) = shapes
    units, fan_in = int(cfg["units"]), shape[0]
    check_elements(f"{where}: kernel", (fan_in, units))
    return ops.Linear(fan_in, units, bias=bool(cfg.get("use_bias", True)),
                      activation=_activation_name(cfg, where), where=where)


def _batch_norm(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    (shape,) = shapes
    axis = _channel_axis(cfg, len(shape) + 1, where)
    if axis != 1:
        raise UnsupportedLayerError(f"{where}: BatchNormalization over a non-channel axis is not supported.")
    cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
    norm = cls(shape[0], eps=float(cfg.get("epsilon", 1e-3)))
    norm.center, norm.scale = bool(cfg.get("center", True)), bool(cfg.get("scale", True))
    return norm


def _pool(kind: str) -> Callable[[Config, list[Shape], str], nn.Module]:
    def build(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
        (_, h, w), = shapes
        kernel = _pair(cfg, "pool_size", 2, where)
        stride = _pair(cfg, "strides", kernel, where)
        pad = _same_padding((h, w), kernel, stride) if cfg.get("padding", "valid") == "same" else (0, 0, 0, 0)
        return ops.Pool2d(kind, kernel, stride, pad=pad)
    return build


def _global_pool(kind: str) -> Callable[[Config, list[Shape], str], nn.Module]:
    return lambda cfg, shapes, where: ops.GlobalPool2d(kind, keepdims=bool(cfg.get("keepdims", False)))


def _activation_name(cfg: Config, where: str) -> str:
    name = cfg.get("activation", "linear")
    if not isinstance(name, str):  # a serialized callable is a custom object
        raise UnsupportedLayerError(f"{where}: activation {name!r} is not a built-in Keras activation.")
    return name


def _activation(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    name = _activation_name(cfg, where)
    return ops.Activation(name, where, dim=1, negative_slope=0.2 if name == "leaky_relu" else 0.0)


def _softmax(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    (shape,) = shapes
    return ops.Activation("softmax", where, dim=_channel_axis(cfg, len(shape) + 1, where))


def _relu(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    max_value = cfg.get("max_value")
    return ops.Activation("relu_ext", where, negative_slope=float(cfg.get("negative_slope", 0.0)),
                          max_value=None if max_value is None else float(max_value),
                          threshold=float(cfg.get("threshold", 0.0)))


def _leaky_relu(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))  # Keras 3 renamed alpha
    return ops.Activation("leaky_relu", where, negative_slope=float(slope))


def _flatten(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    return ops.Flatten(channels_last=cfg.get("data_format", "channels_last") != "channels_first")


def _reshape(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    return ops.ChannelsLastReshape(tuple(int(d) for d in cfg["target_shape"]))


def _concatenate(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    return ops.Merge("concat", dim=_channel_axis(cfg, len(shapes[0]) + 1, where))


def _zero_padding(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    top, bottom, left, right = _padding_spec(cfg.get("padding", 1))
    return ops.Pad2d((left, right, top, bottom))


def _cropping(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    return ops.Crop2d(_padding_spec(cfg.get("cropping", 0)))


def _upsampling(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    (_, h, w), = shapes
    size = _pair(cfg, "size", 2, where)
    check_elements(f"{where}: output", (shapes[0][0], h * size[0], w * size[1]))
    mode = cfg.get("interpolation", "nearest")
    if mode not in ("nearest", "bilinear"):
        raise UnsupportedLayerError(f"{where}: interpolation '{mode}' is not supported (nearest, bilinear).")
    return ops.Upsample2d(size, mode)


def _merge(kind: str) -> Callable[[Config, list[Shape], str], nn.Module]:
    return lambda cfg, shapes, where: ops.Merge(kind)


def _identity(cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    return ops.Identity()


BUILDERS: dict[str, Callable[[Config, list[Shape], str], nn.Module]] = {
    "Conv2D": _conv2d, "Convolution2D": _conv2d,
    "Dense": _dense,
    "BatchNormalization": _batch_norm,
    "MaxPooling2D": _pool("max"), "MaxPool2D": _pool("max"),
    "AveragePooling2D": _pool("avg"), "AvgPool2D": _pool("avg"),
    "GlobalAveragePooling2D": _global_pool("avg"), "GlobalAvgPool2D": _global_pool("avg"),
    "GlobalMaxPooling2D": _global_pool("max"), "GlobalMaxPool2D": _global_pool("max"),
    "Activation": _activation, "Softmax": _softmax, "ReLU": _relu, "LeakyReLU": _leaky_relu,
    "Flatten": _flatten, "Reshape": _reshape, "Concatenate": _concatenate,
    "ZeroPadding2D": _zero_padding, "Cropping2D": _cropping, "UpSampling2D": _upsampling,
    **{name: _merge(kind) for name, kind in MERGE_LAYERS.items()},
    **{name: _identity for name in IDENTITY_LAYERS},
}

SUPPORTED = sorted(BUILDERS)


def build_layer(class_name: str, cfg: Config, shapes: list[Shape], where: str) -> nn.Module:
    """The module for one Keras layer, or :class:`UnsupportedLayerError` naming it."""
    builder = BUILDERS.get(class_name)
    if builder is None:
        raise UnsupportedLayerError(
            f"{where}: layer type {class_name} is not supported. Supported Keras layers: {', '.join(SUPPORTED)}."
        )
    if class_name not in MERGE_LAYERS and class_name != "Concatenate" and len(shapes) != 1:
        raise UnsupportedLayerError(f"{where}: a {class_name} layer with {len(shapes)} inputs is not supported.")
    return builder(cfg, shapes, where)


def weight_maps(class_name: str, module: nn.Module) -> list[WeightMap]:
    """The weights a layer stores in Keras order, honouring use_bias / center / scale."""
    maps = WEIGHT_MAPS.get({"Convolution2D": "Conv2D"}.get(class_name, class_name), [])
    present = []
    for m in maps:
        if m.torch == "bias" and isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is None:
            continue
        if m.keras == "gamma" and not getattr(module, "scale", True):
            continue
        if m.keras == "beta" and not getattr(module, "center", True):
            continue
        present.append(m)
    return present
