"""Shared machinery of the model readers: build a :class:`CanonicalModel` one layer at a time.

Readers translate each source layer into a torch module and hand it to :class:`GraphBuilder.add`,
which infers the layer's output shape without computing anything (meta tensors), checks it
against the limits and records the layer for the signature.
"""

from math import prod

import torch
from torch import nn

from schemas.models import InputLayout, LayerInfo, ModelFormat, ModelSignature
from worker.core.errors import UnreadableModelError, UnsupportedLayerError
from worker.core.limits import (
    FLOAT32_BYTES,
    MAX_ACTIVATION_ELEMENTS,
    MAX_MODEL_ELEMENTS,
    check_bytes,
    check_elements,
    check_node_count,
)
from worker.engine.canonical import CanonicalModel, GraphNode, output_activation


class GraphBuilder:
    """Accumulates nodes in topological order; ``channels_last`` reports shapes the Keras way."""

    def __init__(self, what: str, channels_last: bool) -> None:
        self.what = what
        self.channels_last = channels_last
        self.nodes: list[GraphNode] = []
        self.modules: dict[str, nn.Module] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}  # per-sample, channels-first
        self.infos: list[LayerInfo] = []
        self._parameters = 0
        self._activation_elements = 0  # per sample, over every layer: what one sample's forward pass can hold

    def add_input(self, name: str, kind: str, shape: tuple[int, ...], module: nn.Module,
                  internal_shape: tuple[int, ...]) -> None:
        """The graph's input: ``shape`` as the source states it, ``internal_shape`` channels-first."""
        check_elements(f"{self.what}: input '{name}'", shape, MAX_ACTIVATION_ELEMENTS)
        self._record(GraphNode(name, kind, ()), module, tuple(internal_shape), list(shape))

    def add(self, name: str, kind: str, inputs: list[str], module: nn.Module) -> tuple[int, ...]:
        """Add a layer fed by ``inputs``; returns its per-sample output shape (channels-first)."""
        if name in self.modules:
            raise UnreadableModelError(f"{self.what}: two layers are named '{name}'.")
        for i in inputs:
            if i not in self.shapes:
                raise UnreadableModelError(f"{self.what}: layer '{name}' reads '{i}', which is not defined before it.")
        shape = self._infer_shape(name, kind, inputs, module)
        self._record(GraphNode(name, kind, tuple(inputs)), module, shape, self._source_shape(shape))
        return shape

    def build(self, output: str, fmt: ModelFormat, producer: str | None, layout: InputLayout) -> CanonicalModel:
        check_node_count(self.what, len(self.nodes))
        if output not in self.shapes:
            raise UnreadableModelError(f"{self.what}: the output layer '{output}' is not defined.")
        out_shape = self.shapes[output]
        if len(out_shape) != 1:
            raise UnsupportedLayerError(
                f"{self.what}: the output '{output}' has per-sample shape {list(out_shape)}; bdscreen screens "
                "classifiers whose output is one vector of class scores."
            )
        reachable = _ancestors(self.nodes, output)
        nodes = [n for n in self.nodes if n.name in reachable]
        signature = ModelSignature(
            format=fmt, producer=producer, input_name=nodes[0].name, input_shape=self.infos[0].output_shape,
            input_layout=layout, num_classes=out_shape[0], output_activation=None,
            layers=[info for info in self.infos if info.name in reachable],
        )
        model = CanonicalModel(nodes, self.modules, output, signature)
        signature.output_activation = output_activation(model)
        return model

    @property
    def sample_bytes(self) -> int:
        """Bytes of float32 activations of one sample, summed over the layers added so far."""
        return self._activation_elements * FLOAT32_BYTES

    def _record(self, node: GraphNode, module: nn.Module, shape: tuple[int, ...], source_shape: list[int]) -> None:
        check_node_count(self.what, len(self.nodes) + 1)
        params = sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())
        self._parameters += params
        check_elements(f"{self.what}: all weights", (self._parameters,), MAX_MODEL_ELEMENTS)
        self._activation_elements += prod(shape)
        check_bytes(f"{self.what}: the activations of one input sample", self.sample_bytes)
        self.nodes.append(node)
        self.modules[node.name] = module
        self.shapes[node.name] = shape
        channels = getattr(module, "out_channels", None) or getattr(module, "out_features", None) \
            or getattr(module, "num_features", None)
        self.infos.append(LayerInfo(name=node.name, kind=node.kind, inputs=list(node.inputs),
                                    output_shape=source_shape, channels=channels, parameters=params))

    def _source_shape(self, shape: tuple[int, ...]) -> list[int]:
        if self.channels_last and len(shape) == 3:
            return [shape[1], shape[2], shape[0]]
        return list(shape)

    def _infer_shape(self, name: str, kind: str, inputs: list[str], module: nn.Module) -> tuple[int, ...]:
        # Meta tensors carry shapes and no data: a layer that would blow up memory is caught by the
        # limit below before anything real is computed.
        tensors = {k: torch.empty_like(v, device="meta") for k, v in module.state_dict(keep_vars=True).items()}
        args = tuple(torch.empty((1, *self.shapes[i]), device="meta") for i in inputs)
        try:
            out = torch.func.functional_call(module, tensors, args)
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            shapes = [list(self.shapes[i]) for i in inputs]
            raise UnreadableModelError(
                f"{self.what}: layer '{name}' ({kind}) cannot take inputs of shape {shapes} (channels-first): {exc}"
            ) from None
        shape = tuple(int(d) for d in out.shape[1:])
        check_elements(f"{self.what}: output of layer '{name}'", shape, MAX_ACTIVATION_ELEMENTS)
        return shape


def _ancestors(nodes: list[GraphNode], output: str) -> set[str]:
    by_name = {n.name: n for n in nodes}
    seen, stack = set(), [output]
    while stack:  # iterative: a hostile graph can be thousands deep
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(by_name[name].inputs)
    return seen
