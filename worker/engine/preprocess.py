"""Raw values to what a model takes: the user's declared scaling (:class:`Preprocessing`), then the input layout.

One module for both forms: numpy (:meth:`Preprocessing.apply`, for data files) and differentiable torch on
N x H x W x C raw pixels (:func:`preprocess`, :func:`model_input`), which sits between pixels and the model for
litmus patterns, reversed triggers and zoo training. Triggers and patterns live in raw pixel space, so one serves
models with different preprocessing. Both take their per-channel values from :meth:`Preprocessing.per_channel`.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from schemas.models import InputLayout, ModelSignature
from schemas.scan import PreprocessingOptions
from worker.core.errors import OptionError


def channel_values(name: str, values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """``values`` (one, or one per channel) spread over ``channels``."""
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise OptionError(f"{name} has {len(values)} values but the images have {channels} channels.")
    return values


_DEFAULTS = PreprocessingOptions()


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects: ``(x / divide_by - mean) / std`` per channel, optionally after RGB -> BGR.

    ``mean`` and ``std`` hold one value or one per channel, in the model's channel order. The defaults are
    those of :class:`schemas.scan.PreprocessingOptions`, the only place they are defined.
    """

    divide_by: float = _DEFAULTS.divide_by
    mean: tuple[float, ...] = tuple(_DEFAULTS.mean)
    std: tuple[float, ...] = tuple(_DEFAULTS.std)
    bgr: bool = _DEFAULTS.bgr

    @classmethod
    def of(cls, options: PreprocessingOptions) -> "Preprocessing":
        """The engine's form of the declared options."""
        return cls(divide_by=options.divide_by, mean=tuple(options.mean), std=tuple(options.std), bgr=options.bgr)

    def __post_init__(self) -> None:
        # Accept lists from option parsers while keeping the instance hashable.
        object.__setattr__(self, "mean", _finite_values("mean", self.mean))
        object.__setattr__(self, "std", _finite_values("std", self.std))
        (divide_by,) = _finite_values("divide_by", (self.divide_by,))
        if divide_by == 0:
            raise OptionError("divide_by must not be 0.")
        if any(value == 0 for value in self.std):
            raise OptionError(f"std must not contain 0 (got {self.std}).")
        if len(self.mean) > 1 and len(self.std) > 1 and len(self.mean) != len(self.std):
            raise OptionError(f"mean has {len(self.mean)} values but std has {len(self.std)}.")

    def per_channel(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``mean`` and ``std`` spread over ``channels``; the one check that they and ``bgr`` fit the images."""
        if self.bgr and channels != 3:
            raise OptionError(f"bgr swaps 3 colour channels but the images have {channels}.")
        return channel_values("mean", self.mean, channels), channel_values("std", self.std, channels)

    def apply(self, x: np.ndarray, layout: InputLayout) -> np.ndarray:
        """Preprocess a batch ``x`` (N first, in ``layout``); returns a new float32 array."""
        per_channel = len(self.mean) > 1 or len(self.std) > 1 or self.bgr
        if layout == InputLayout.flat:
            if per_channel:
                raise OptionError("Per-channel mean/std and bgr need image input, but the model takes flat vectors.")
            return ((np.asarray(x, np.float32) / self.divide_by - self.mean[0]) / self.std[0]).astype(np.float32)
        axis = 1 if layout == InputLayout.nchw else x.ndim - 1
        mean_values, std_values = self.per_channel(x.shape[axis])
        out = np.asarray(x, np.float32)
        if self.bgr:
            out = np.flip(out, axis)
        broadcast = [1] * out.ndim
        broadcast[axis] = -1
        mean = np.asarray(mean_values, np.float32).reshape(broadcast)
        std = np.asarray(std_values, np.float32).reshape(broadcast)
        return np.ascontiguousarray((out / np.float32(self.divide_by) - mean) / std, dtype=np.float32)


def _finite_values(name: str, values: tuple[float, ...]) -> tuple[float, ...]:
    try:
        numbers = tuple(float(value) for value in values)
    except (TypeError, ValueError) as error:
        raise OptionError(f"{name} must be numbers (got {values!r}).") from error
    if not numbers or not all(math.isfinite(number) for number in numbers):
        raise OptionError(f"{name} must be one or more finite numbers (got {values!r}).")
    return numbers



def preprocess(x: Tensor, preprocessing: Preprocessing) -> Tensor:
    """``(x / divide_by - mean) / std`` per channel on N x H x W x C raw pixels (after RGB -> BGR if asked)."""
    mean_values, std_values = preprocessing.per_channel(x.shape[-1])
    if preprocessing.bgr:
        x = x.flip(-1)
    mean = torch.tensor(mean_values, dtype=x.dtype, device=x.device)
    std = torch.tensor(std_values, dtype=x.dtype, device=x.device)
    return (x / preprocessing.divide_by - mean) / std


def to_layout(x: Tensor, layout: InputLayout) -> Tensor:
    """N x H x W x C images in the model's layout: transposed for NCHW, flattened for flat single-channel input."""
    if layout == InputLayout.nhwc:
        return x
    if layout == InputLayout.nchw:
        return x.permute(0, 3, 1, 2)
    if x.shape[-1] != 1:
        raise OptionError("the model takes flat vectors; only single-channel images flatten unambiguously.")
    return x.reshape(len(x), -1)


def model_input(x: Tensor, preprocessing: Preprocessing, layout: InputLayout) -> Tensor:
    """Raw N x H x W x C pixels as the model takes them."""
    return to_layout(preprocess(x, preprocessing), layout).contiguous()


def image_shape_of(input_shape: list[int] | tuple[int, ...], layout: InputLayout) -> tuple[int, ...]:
    """A model's input shape (in its own layout) as H x W x C, or the flat length alone for flat models."""
    shape = tuple(int(d) for d in input_shape)
    if layout == InputLayout.nchw and len(shape) == 3:
        return shape[1], shape[2], shape[0]
    return shape


def image_shape(signature: ModelSignature) -> tuple[int, int, int]:
    """The model's input as H x W x C; a flat input of n = s * s values is read as an s x s single-channel image."""
    shape = image_shape_of(signature.input_shape, signature.input_layout)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    side = math.isqrt(int(np.prod(shape)))
    if len(shape) != 1 or side * side != shape[0]:
        raise OptionError(f"the model takes inputs of shape {tuple(signature.input_shape)}, which are not images.")
    return side, side, 1


def to_images(x: np.ndarray, signature: ModelSignature) -> np.ndarray:
    """Samples in the model's layout (raw values) as N x H x W x C images: the inverse of :func:`to_layout`."""
    x = np.asarray(x, np.float32)
    if signature.input_layout == InputLayout.nchw:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x.reshape(len(x), *image_shape(signature))
