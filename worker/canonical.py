"""The one in-memory form of a model that every algorithm uses.

A :class:`CanonicalModel` is a torch module holding a directed acyclic graph of named layers, in
the source's names, always in eval mode. It takes a batch in the source's input layout (for Keras,
N x H x W x C) and returns what the source returns (for most uploads, softmax probabilities).
Format readers build one; writers read its parameters back; algorithms hook or re-run parts of it.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from schemas.models import ModelSignature
from worker.ops import Activation


@dataclass(frozen=True)
class GraphNode:
    """One layer of the graph: ``name`` as in the source, ``kind`` its source type, ``inputs`` by name."""

    name: str
    kind: str
    inputs: tuple[str, ...]


def module_key(name: str) -> str:
    """A torch-safe attribute name for a source layer name (torch forbids '.' and empty keys)."""
    key = name.replace(".", "_") or "_"
    return key


class CanonicalModel(nn.Module):
    """A DAG of named torch modules; ``nodes`` are in topological order, the first is the input."""

    def __init__(self, nodes: list[GraphNode], modules: Mapping[str, nn.Module], output: str,
                 signature: ModelSignature) -> None:
        super().__init__()
        self.nodes = list(nodes)
        self.output = output
        self.signature = signature
        self.layers = nn.ModuleDict({module_key(n.name): modules[n.name] for n in nodes})
        self._consumers = _count_consumers(self.nodes, output)
        self.eval()

    @property
    def input(self) -> str:
        return self.nodes[0].name

    def layer(self, name: str) -> nn.Module:
        """The module of the layer called ``name`` in the source."""
        return self.layers[module_key(name)]

    def node(self, name: str) -> GraphNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

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

    def run(self, feeds: Mapping[str, Tensor], keep: Iterable[str] = (), logits: bool = False) -> dict[str, Tensor]:
        """Evaluate the graph from ``feeds`` (values of any layers, by name) to the output.

        The input layer is fed the raw batch in the source's layout; any other layer its output.
        Layers whose value is fed are not recomputed, so feeding a layer's cached output re-runs only
        what lies after it. Returns the output and every layer named in ``keep``; other intermediate
        values are released as soon as their last consumer has run.
        """
        keep = set(keep) | {self.output}
        values: dict[str, Tensor] = dict(feeds)
        if self.input in values:  # the raw batch, in the source layout: the input layer converts it
            values[self.input] = self.layers[module_key(self.input)](values[self.input])
        remaining = dict(self._consumers)
        for node in self.nodes:
            if node.name not in values:
                missing = [i for i in node.inputs if i not in values]
                if missing or not node.inputs:
                    raise ValueError(f"layer '{node.name}' needs {missing or 'an input'} to be fed")
                module = self.layers[module_key(node.name)]
                args = [values[i] for i in node.inputs]
                if logits and node.name == self.output:
                    values[node.name] = _pre_softmax(module, args)
                else:
                    values[node.name] = module(*args)
            for i in node.inputs:
                remaining[i] -= 1
                if remaining[i] == 0 and i not in keep:
                    values.pop(i, None)
        return {name: values[name] for name in keep if name in values}

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


def _count_consumers(nodes: list[GraphNode], output: str) -> dict[str, int]:
    counts = {n.name: 0 for n in nodes}
    for node in nodes:
        for i in node.inputs:
            counts[i] += 1
    counts[output] += 1
    return counts


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
    xs = torch.as_tensor(x, dtype=torch.float32)
    outs = []
    for start in range(0, len(xs), batch_size):
        batch = xs[start:start + batch_size].to(device)
        outs.append((model.logits(batch) if logits else model(batch)).cpu())
    return torch.cat(outs) if outs else torch.empty(0)
