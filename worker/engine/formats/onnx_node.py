"""What the ONNX converters see of one node: its attributes and the values of its inputs.

A tensor of the ONNX graph is, at conversion time, one of three things:

* :class:`Dynamic`: it depends on the model input; it is the output of a canonical layer, and its
  shape is known for one sample (axis 0 of the ONNX tensor is always the batch axis);
* a numpy array: a constant (initializer, Constant node, or folded from those);
* :class:`ShapeValue`: an integer tensor computed from tensor shapes, constant except for the
  entries that equal the batch size, which only becomes known when the model runs.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from worker.core.errors import UnreadableModelError, UnsupportedLayerError


@dataclass(frozen=True)
class Dynamic:
    layer: str
    shape: tuple[int, ...]  # one sample's shape: the ONNX shape without its batch axis

    @property
    def rank(self) -> int:
        return len(self.shape) + 1


@dataclass(frozen=True)
class ShapeValue:
    values: np.ndarray  # int64; the entries where ``is_batch`` holds are placeholders (-1)
    is_batch: np.ndarray  # bool, same shape


Value = Dynamic | np.ndarray | ShapeValue


class NodeView:
    """One node with its input values; ``name`` is its canonical layer name."""

    def __init__(self, node: onnx.NodeProto, name: str, what: str, opset: int, inputs: list[Value | None],
                 static_batch: int | None, read_tensor: Callable[[onnx.TensorProto, str], np.ndarray]) -> None:
        self.node, self.name, self.opset, self.inputs = node, name, opset, inputs
        self.op = node.op_type
        self.where = f"{what}: node '{name}' ({self.op})"
        self.static_batch = static_batch
        self._read_tensor = read_tensor
        self._attributes = {a.name: a for a in node.attribute}

    def unsupported(self, reason: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"{self.where} {reason}")

    def unreadable(self, reason: str) -> UnreadableModelError:
        return UnreadableModelError(f"{self.where} {reason}")

    def has_attr(self, name: str) -> bool:
        return name in self._attributes

    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute's Python value (str for strings, numpy array for tensors), or ``default``."""
        attribute = self._attributes.get(name)
        if attribute is None:
            return default
        if attribute.type == onnx.AttributeProto.TENSOR:
            return self._read_tensor(attribute.t, f"{self.where}, attribute '{name}'")
        value = onnx.helper.get_attribute_value(attribute)
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value

    def input(self, index: int) -> Value | None:
        return self.inputs[index] if index < len(self.inputs) else None

    def dynamic(self, index: int = 0) -> Dynamic:
        value = self.input(index)
        if not isinstance(value, Dynamic):
            raise self.unsupported(f"needs input {index} to depend on the model input.")
        return value

    def const(self, index: int, what: str) -> np.ndarray:
        """Input ``index`` as a constant array; a missing input or one computed at run time is refused."""
        value = self.input(index)
        if value is None:
            raise self.unreadable(f"lacks its {what} input.")
        if not isinstance(value, np.ndarray):
            raise self.unsupported(
                f"computes its {what} at run time; bdscreen needs it constant (known when the file is read)."
            )
        return value

    def optional_const(self, index: int, what: str) -> np.ndarray | None:
        return None if self.input(index) is None else self.const(index, what)

    def axes_operand(self, since_opset: int, index: int = 1) -> list[int] | None:
        """Axes given as input ``index`` from ``since_opset`` on, as the ``axes`` attribute before."""
        if self.opset >= since_opset:
            axes = self.optional_const(index, "axes")
            return None if axes is None else [int(a) for a in axes.reshape(-1)]
        axes = self.attr("axes")
        return None if axes is None else [int(a) for a in axes]

    def axis(self, axis: int, rank: int) -> int:
        """``axis`` made non-negative for a tensor of ``rank``."""
        if not -rank <= axis < rank:
            raise self.unreadable(f"uses axis {axis} on a tensor of rank {rank}.")
        return axis % rank

    def non_batch_axis(self, axis: int, rank: int) -> int:
        normalized = self.axis(axis, rank)
        if normalized == 0:
            raise self.unsupported("acts on the batch axis (axis 0); bdscreen needs every sample handled alike.")
        return normalized


def slice_range(dim: int, start: int, end: int, step: int) -> range:
    """The indices ONNX Slice keeps on an axis of length ``dim`` (clamping as the operator specifies)."""
    if step == 0:
        raise UnreadableModelError("a Slice node has a step of 0.")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)


def slice_ranges(view: NodeView, shape: tuple[int, ...]) -> dict[int, range]:
    """Axis -> kept indices for the Slice node ``view`` on a tensor of full ``shape``."""
    starts = [int(v) for v in view.const(1, "starts").reshape(-1)]
    ends = [int(v) for v in view.const(2, "ends").reshape(-1)]
    axes_array = view.optional_const(3, "axes")
    steps_array = view.optional_const(4, "steps")
    axes = list(range(len(starts))) if axes_array is None else [int(v) for v in axes_array.reshape(-1)]
    steps = [1] * len(starts) if steps_array is None else [int(v) for v in steps_array.reshape(-1)]
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise view.unreadable("has starts, ends, axes and steps of different lengths.")
    ranges: dict[int, range] = {}
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = view.axis(axis, len(shape))
        if axis in ranges:
            raise view.unreadable(f"slices axis {axis} twice.")
        ranges[axis] = slice_range(shape[axis], start, end, step)
    return ranges
