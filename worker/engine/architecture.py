"""What kind of network a model is, in the two traits that decide whether a detector learned on a zoo transfers.

ULP's litmus patterns are learned on the models of one zoo and read the answers of networks like them; on a model
unlike every architecture of its zoo the score is less reliable (on the detection benchmark's zoos the shipped bank,
learned on ReLU CNNs, scored clean MLPs and tanh LeNets up to 0.94 and 0.96, though it still ranked them). The
traits are deliberately coarse, so that a model made with another framework or other layer sizes still matches:
whether it convolves, and which hidden non-linearities it uses. Any torch module is described, a canonical model
(uploads) as well as a zoo member.
"""

from collections.abc import Iterable

from torch import nn

from worker.engine.formats.onnx_ops import Elementwise
from worker.engine.ops import Activation

#: Outputs that only rescale the logits, and the identity: not a hidden non-linearity.
_NOT_HIDDEN = frozenset({"linear", "softmax", "log_softmax", "logsoftmax"})
#: Other spellings of the plain ReLU.
_RELU = frozenset({"relu", "relu_ext"})


def architecture_of(module: nn.Module) -> dict:
    """``{"convolutional": bool, "activations": [sorted names]}`` of ``module``'s layers."""
    convolutional = any(isinstance(layer, nn.modules.conv._ConvNd) for layer in module.modules())
    names = {_activation_name(layer) for layer in module.modules()}
    return {"convolutional": convolutional, "activations": sorted(names - {None} - _NOT_HIDDEN)}


def unlike(model: dict, architectures: Iterable[dict]) -> str | None:
    """Why an architecture ``model`` (as :func:`architecture_of` gives it) is unlike all of ``architectures``, or None
    when one of them convolves as it does and uses every non-linearity it uses."""
    architectures = list(architectures)
    if any(a["convolutional"] == model["convolutional"] and set(model["activations"]) <= set(a["activations"])
           for a in architectures):
        return None
    if not any(a["convolutional"] == model["convolutional"] for a in architectures):
        return "it has convolutions and they have none" if model["convolutional"] else \
            "it has no convolutions (a dense network) and they all convolve"
    used = ", ".join(model["activations"]) or "none"
    known = ", ".join(sorted({n for a in architectures for n in a["activations"]})) or "none"
    return f"it uses the non-linearities {used} and they use only {known}"


def _activation_name(layer: nn.Module) -> str | None:
    if isinstance(layer, Activation):
        if layer.name == "relu_ext" and (layer.negative_slope or layer.threshold or layer.max_value is not None):
            return "relu_ext"  # a leaky, shifted or capped ReLU
        return "relu" if layer.name in _RELU else layer.name
    if isinstance(layer, Elementwise):  # element-wise ONNX activations that Activation lacks (hard swish, ...)
        return layer.name
    if not list(layer.children()) and type(layer).__module__.startswith("torch.nn.modules.activation"):
        return type(layer).__name__.lower()  # nn.ReLU -> 'relu', nn.Tanh -> 'tanh'
    return None  # not an activation; a fused one (conv or dense ``activation=``) is its own child module
