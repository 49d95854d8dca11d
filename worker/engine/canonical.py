"""The one in-memory form of a model that every algorithm uses.

A :class:`CanonicalModel` is a torch module holding a directed acyclic graph of named layers, in
the source's names, always in eval mode. It takes a batch in the source's input layout (for Keras,
N x H x W x C) and returns what the source returns (for most uploads, softmax probabilities).
Format readers build one; writers read its parameters back; algorithms hook or re-run parts of it.
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from schemas.models import ModelSignature
from worker.core.limits import batch_within_budget
from worker.engine.ops import Activation


@dataclass(frozen=True)
class GraphNode:
    """One layer of the graph: ``name`` as in the source, ``kind`` its source type, ``inputs`` by name."""

    name: str
    kind: str
    inputs: tuple[str, ...]


def module_key(name: str) -> str:
    """A torch-safe attribute name for a source layer name (torch forbids '.' and empty keys)."""
    key = name.replace(".", "_") or "_"
    # ModuleDict also refuses keys that shadow its own attributes: a layer named 'eval' or 'keys'.
    return f"{key}_" if key in _MODULE_DICT_ATTRIBUTES else key


_MODULE_DICT_ATTRIBUTES = frozenset(dir(nn.ModuleDict()))


class CanonicalModel(nn.Module):
    """A DAG of named torch modules; ``nodes`` are in topological order, the first is the input."""

    def __init__(self, nodes: list[GraphNode], modules: Mapping[str, nn.Module], output: str,
                 signature: ModelSignature) -> None:
        super().__init__()
        self.nodes = list(nodes)
        self.output = output
        self.signature = signature
        self.layers = nn.ModuleDict({module_key(n.name): modules[n.name] for n in nodes})
        #: Bytes of float32 activations one sample needs across all layers (set by the reader): sizes batches.
        self.sample_bytes = 4 * sum(math.prod(layer.output_shape) for layer in signature.layers)
        self.eval()

    @property
    def input(self) -> str:
        return self.nodes[0].name

    def layer(self, name: str) -> nn.Module:
        """The module of the layer called ``name`` in the source."""
        return self.layers[module_key(name)]

    def train(self, mode: bool = True) -> "CanonicalModel":
        # Fine-tuning switches parameters to trainable, never layers to training behaviour: the
        # source's Dropout is an identity here, and BatchNorm must keep its stored statistics
        # unless an algorithm asks for that explicitly on the layer itself.
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.run({self.input: x})[self.output]

    def logits(self, x: Tensor) -> Tensor:
        """The pre-softmax output when the model ends in a softmax, else the output itself."""
        return self.run({self.input: x}, logits=True)[self.output]

    def run(self, feeds: Mapping[str, Tensor], outputs: Iterable[str] | None = None,
            logits: bool = False) -> dict[str, Tensor]:
        """Evaluate the layers named in ``outputs`` (default: the model's output) from ``feeds``.

        ``feeds`` holds values of any layers by name: the input layer is fed the raw batch in the
        source's layout, any other layer its output. Only the layers that the outputs depend on and
        that are not fed are computed, so feeding a layer's cached output re-runs only what lies after
        it; intermediate values are released as soon as their last consumer has run.
        """
        wanted = [self.output] if outputs is None else list(outputs)
        values: dict[str, Tensor] = dict(feeds)
        if self.input in values:  # the raw batch, in the source layout: the input layer converts it
            values[self.input] = self.layers[module_key(self.input)](values[self.input])
        todo = self._needed(wanted, values)
        remaining = {name: 0 for name in values}
        for node in self.nodes:
            if node.name in todo:
                for i in node.inputs:
                    remaining[i] = remaining.get(i, 0) + 1
        for node in self.nodes:
            if node.name not in todo:
                continue
            missing = [i for i in node.inputs if i not in values]
            if missing or not node.inputs:
                raise ValueError(f"layer '{node.name}' needs {missing or 'the input'} to be fed")
            module = self.layers[module_key(node.name)]
            args = [values[i] for i in node.inputs]
            if logits and node.name == self.output:
                values[node.name] = _pre_softmax(module, args)
            else:
                values[node.name] = module(*args)
            for i in node.inputs:
                remaining[i] -= 1
                if remaining[i] == 0 and i not in wanted:
                    del values[i]
        return {name: values[name] for name in wanted}

    def _needed(self, wanted: list[str], available: Mapping[str, Tensor]) -> set[str]:
        """The layers to compute so that ``wanted`` are known, given the ``available`` values."""
        by_name = {n.name: n for n in self.nodes}
        needed: set[str] = set()
        stack = [w for w in wanted if w not in available]
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            if name not in by_name:
                raise KeyError(f"the model has no layer '{name}'")
            needed.add(name)
            stack.extend(i for i in by_name[name].inputs if i not in available)
        return needed

    def downstream(self, name: str) -> list[str]:
        """Names of the layers whose value depends on layer ``name`` (excluding it)."""
        affected = {name}
        for node in self.nodes:
            if any(i in affected for i in node.inputs):
                affected.add(node.name)
        affected.discard(name)
        return [n.name for n in self.nodes if n.name in affected]


def _pre_softmax(module: nn.Module, args: list[Tensor]) -> Tensor:
    if isinstance(module, Activation) and module.name == "softmax":
        return args[0]
    fused = getattr(module, "activation", None)
    if isinstance(fused, Activation) and fused.name == "softmax":
        return module.pre_activation(*args)
    return module(*args)


def output_activation(model: CanonicalModel) -> str | None:
    """'softmax' when the model's output layer is (or ends in) a softmax."""
    module = model.layer(model.output)
    act = module if isinstance(module, Activation) else getattr(module, "activation", None)
    return "softmax" if isinstance(act, Activation) and act.name == "softmax" else None


def default_device() -> torch.device:
    """CUDA when present, CPU otherwise: the same code path either way."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict(model: nn.Module, x: "Tensor | object", batch_size: int = 1024, device: torch.device | None = None,
            logits: bool = False) -> Tensor:
    """Outputs of ``model`` for a whole array, in batches, on ``device``; returned on the CPU."""
    device = device or next(model.parameters(), torch.empty(0)).device
    batch_size = batch_within_budget(getattr(model, "sample_bytes", 0), batch_size)
    xs = torch.as_tensor(x, dtype=torch.float32)
    outs = []
    for start in range(0, len(xs), batch_size):
        batch = xs[start:start + batch_size].to(device)
        outs.append((model.logits(batch) if logits else model(batch)).cpu())
    return torch.cat(outs) if outs else torch.empty(0)
