"""Raw pixels (N x H x W x C, 0-255) to what a model takes: its preprocessing, then its input layout.

Litmus patterns and zoo data live in raw pixel space, so that one bank serves models with different
preprocessing; these differentiable torch versions of :meth:`worker.engine.data.Preprocessing.apply` sit between the
pixels and the model, for training patterns as well as for scanning.
"""

import math

import numpy as np
import torch
from torch import Tensor

from schemas.models import InputLayout, ModelSignature
from worker.core.errors import OptionError
from worker.engine.data import Preprocessing


def channel_values(name: str, values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """``values`` (one, or one per channel) spread over ``channels``."""
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise OptionError(f"{name} has {len(values)} values but the images have {channels} channels.")
    return values


def preprocess(x: Tensor, preprocessing: Preprocessing) -> Tensor:
    """``(x / divide_by - mean) / std`` per channel on N x H x W x C raw pixels (after RGB -> BGR if asked)."""
    channels = x.shape[-1]
    if preprocessing.bgr:
        if channels != 3:
            raise OptionError(f"bgr swaps 3 colour channels but the images have {channels}.")
        x = x.flip(-1)
    mean = torch.tensor(channel_values("mean", preprocessing.mean, channels), dtype=x.dtype, device=x.device)
    std = torch.tensor(channel_values("std", preprocessing.std, channels), dtype=x.dtype, device=x.device)
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
