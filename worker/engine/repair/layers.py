"""Choosing and editing the convolutional layer that pruning works on."""

import copy

import torch
from torch import Tensor, nn

from worker.core.errors import OptionError
from worker.engine.canonical import CanonicalModel


def conv_layers(model: CanonicalModel) -> list[str]:
    """Names of the convolutional layers, in graph order."""
    return [n.name for n in model.nodes if isinstance(model.layer(n.name), nn.Conv2d)]


def default_prune_layer(model: CanonicalModel) -> str:
    """The last convolutional layer on the way to the output.

    "Last" is in topological order among the conv layers the output depends on. In a branching graph
    such as DeepID (conv_3 feeds both a dense branch and conv_4) this picks conv_4 only if every path
    runs through it; otherwise the last conv layer whose output reaches *all* classifier paths wins,
    which is conv_3 there: pruning a channel of a layer that some path bypasses cannot remove a
    feature from that path.
    """
    convs = conv_layers(model)
    if not convs:
        raise OptionError("the model has no convolutional layer to prune; name one with --layer.")
    for name in reversed(convs):
        if _dominates_output(model, name):
            return name
    return convs[-1]


def resolve_prune_layer(model: CanonicalModel, name: str | None) -> str:
    if name is None:
        return default_prune_layer(model)
    convs = conv_layers(model)
    if name not in convs:
        raise OptionError(f"layer '{name}' is not a convolutional layer of the model "
                          f"(convolutional layers: {', '.join(convs) or 'none'}).")
    return name


def _dominates_output(model: CanonicalModel, name: str) -> bool:
    """True when every path from the input to the output passes through layer ``name``."""
    reachable = {model.input}
    for node in model.nodes[1:]:
        if node.name != name and any(i in reachable for i in node.inputs):
            reachable.add(node.name)
    return model.output not in reachable


def resting_value(model: CanonicalModel, layer: str) -> float:
    """The output of a pruned channel: the layer's fused activation applied to 0 (0 for ReLU)."""
    module = model.layer(layer)
    with torch.no_grad():
        return float(module.activation(torch.zeros(1)).item())


def pruned_copy(model: CanonicalModel, layer: str, channels: list[int]) -> CanonicalModel:
    """A deep copy of ``model`` with the kernel and bias of ``channels`` of ``layer`` set to zero."""
    repaired = copy.deepcopy(model)
    zero_channels(repaired.layer(layer), channels)
    return repaired


def zero_channels(conv: nn.Conv2d, channels: list[int]) -> None:
    with torch.no_grad():
        conv.weight[channels] = 0
        if conv.bias is not None:
            conv.bias[channels] = 0


def channel_mask(n: int, pruned: list[int], device: torch.device) -> Tensor:
    mask = torch.ones(n, device=device)
    mask[pruned] = 0
    return mask
