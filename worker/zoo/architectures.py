"""Architecture families of the model zoos: small built-in CNNs, and the uploaded model's own graph re-initialised.

ULP patterns learned on one family transfer poorly to very different ones, so a zoo mixes families that differ in
depth, width, kernel size, pooling kind (max, average, strided convolutions) and with or without BatchNorm. A
built-in family takes a preprocessed batch N x C x H x W and returns logits; it is defined for any input size its
stages do not shrink below one pixel.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn

from schemas.models import InputLayout
from worker.core.errors import OptionError
from worker.engine.canonical import CanonicalModel

#: The family name that stands for "the uploaded model's own architecture, re-initialised".
OWN_ARCHITECTURE = "own"


@dataclass(frozen=True)
class ConvStage:
    """One convolution + ReLU, optionally BatchNorm before the ReLU and a 2x2 pooling ('max' or 'avg') after."""

    channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: str | None = None


@dataclass(frozen=True)
class Family:
    """A family: its conv stages (none for an MLP), BatchNorm or not, an optional hidden dense layer before the
    output, and the activation after every conv and hidden layer ('relu' or 'tanh')."""

    name: str
    stages: tuple[ConvStage, ...]
    batchnorm: bool = False
    hidden: int | None = None
    activation: str = "relu"


FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("cnn2-max", (ConvStage(8, 3, pool="max"), ConvStage(16, 3, pool="max"))),
    Family("cnn2-avg-bn", (ConvStage(8, 3, padding=1, pool="avg"), ConvStage(16, 3, padding=1, pool="avg")),
           batchnorm=True, hidden=32),
    Family("cnn3-stride", (ConvStage(8, 3), ConvStage(16, 3, stride=2), ConvStage(24, 3, stride=2))),
    Family("cnn1-bn", (ConvStage(16, 3, padding=1, pool="max"),), batchnorm=True),
    Family("lenet5", (ConvStage(6, 5, pool="max"), ConvStage(16, 5, pool="max")), hidden=64),
    # LeNet as LeCun drew it: tanh and average pooling (uploads made outside the project are often like this).
    Family("lenet-tanh", (ConvStage(6, 5, padding=2, pool="avg"), ConvStage(16, 5, pool="avg")), hidden=84,
           activation="tanh"),
    Family("mlp", (), hidden=128),
)}

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def family_names() -> list[str]:
    return list(FAMILIES)


def feature_size(family: Family, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Channels, height and width after the last stage for an H x W x C input; refuses sizes that vanish."""
    height, width, channels = input_shape
    for stage in family.stages:
        height = (height + 2 * stage.padding - stage.kernel) // stage.stride + 1
        width = (width + 2 * stage.padding - stage.kernel) // stage.stride + 1
        if stage.pool is not None:
            height, width = height // 2, width // 2
        channels = stage.channels
        if height < 1 or width < 1:
            raise OptionError(f"architecture family '{family.name}' does not fit {input_shape[0]}x{input_shape[1]} "
                              "inputs: its stages shrink them below one pixel; choose another family.")
    return channels, height, width


def build_family(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """A freshly initialised member of family ``name`` (from torch's global RNG) for H x W x C inputs."""
    if name not in FAMILIES:
        raise OptionError(f"unknown architecture family '{name}' (known: {', '.join(FAMILIES)}, "
                          f"or '{OWN_ARCHITECTURE}' with a model).")
    family = FAMILIES[name]
    channels, height, width = feature_size(family, input_shape)
    layers: list[nn.Module] = []
    in_channels = input_shape[2]
    for stage in family.stages:
        layers.append(nn.Conv2d(in_channels, stage.channels, stage.kernel, stage.stride, stage.padding,
                                bias=not family.batchnorm))
        if family.batchnorm:
            layers.append(nn.BatchNorm2d(stage.channels))
        layers.append(_ACTIVATIONS[family.activation]())
        if stage.pool == "max":
            layers.append(nn.MaxPool2d(2))
        elif stage.pool == "avg":
            layers.append(nn.AvgPool2d(2))
        in_channels = stage.channels
    layers.append(nn.Flatten())
    features = channels * height * width
    if family.hidden is not None:
        layers += [nn.Linear(features, family.hidden), _ACTIVATIONS[family.activation]()]
        features = family.hidden
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def seeded_family(name: str, input_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    """:func:`build_family` with its initial weights drawn from ``seed``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_family(name, input_shape, num_classes)


class LogitsOf(nn.Module):
    """A canonical model seen as a module returning its pre-softmax outputs (what zoo training needs)."""

    def __init__(self, model: CanonicalModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x)


_RESETTABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def reinitialised_copy(model: CanonicalModel, seed: int) -> LogitsOf:
    """A deep copy of ``model`` with every convolution, dense and BatchNorm layer re-initialised from ``seed``.

    Only these layers are reset (torch's default initialisation; BatchNorm statistics back to 0 and 1); other
    parameters and constant buffers (a PReLU slope, a folded normalisation) are kept as uploaded. A canonical model
    never switches to training behaviour, so its BatchNorm layers train as affine layers on the reset statistics.
    """
    if model.signature.input_layout == InputLayout.flat:
        raise OptionError("the model takes flat vectors; the zoo's image triggers need an image input.")
    copied = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in copied.modules():
            if isinstance(module, _RESETTABLE):
                module.reset_parameters()
    copied.requires_grad_(True)
    return LogitsOf(copied)


def member_layout(module: nn.Module) -> InputLayout:
    """The input layout a zoo member takes: the uploaded model's own, NCHW for the built-in families."""
    if isinstance(module, LogitsOf):
        return module.model.signature.input_layout
    return InputLayout.nchw
