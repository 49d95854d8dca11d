"""Constant folding: evaluate, when the file is read, the nodes that do not depend on the model input.

Exporters compute shapes and padding amounts with small subgraphs (``x.view(x.size(0), -1)``
becomes Shape, Gather, Unsqueeze, Concat, Reshape). Since one sample's shape is static, these
subgraphs are evaluated here with numpy; the batch size, the one unknown, is carried symbolically
in a :class:`ShapeValue` so that the Reshape consuming it knows which entry is the batch axis.
Anything that would compute with the batch size itself is refused. Sizes are checked before any
array is created, since a constant subgraph can ask for a huge tensor (ConstantOfShape).
"""

from collections.abc import Callable

import numpy as np
import onnx

from worker.core.limits import MAX_TENSOR_ELEMENTS, check_elements
from worker.engine.formats.onnx_node import Dynamic, NodeView, ShapeValue, slice_ranges

FOLDABLE_OPS = (
    "Add", "Cast", "Concat", "Constant", "ConstantOfShape", "Div", "Dropout", "Gather", "Identity", "Mul",
    "Reshape", "Shape", "Slice", "Squeeze", "Sub", "Transpose", "Unsqueeze",
)


def fold(view: NodeView) -> np.ndarray | ShapeValue:
    """The value of a node whose inputs are all constants or shapes (``Shape`` may read a layer)."""
    op = view.op
    if op == "Constant":
        return _constant(view)
    if op == "Shape":
        return _shape(view)
    if op in ("Identity", "Dropout"):
        return _static(view, 0)
    if op == "Cast":
        return _cast(view)
    if op == "ConstantOfShape":
        return _constant_of_shape(view)
    if op in ("Add", "Sub", "Mul", "Div"):
        return _arithmetic(view)
    transform = _structural_transform(view)
    if transform is None:
        raise view.unsupported(
            f"is computed from constants only, and bdscreen cannot evaluate {op} at read time "
            f"(it folds {', '.join(FOLDABLE_OPS)})."
        )
    operands = [_static(view, 0)] if op != "Concat" else [_static(view, i) for i in range(len(view.inputs))]
    try:
        if not any(isinstance(v, ShapeValue) for v in operands):
            return transform(operands)
        values = transform([v.values if isinstance(v, ShapeValue) else v for v in operands])
        is_batch = transform([v.is_batch if isinstance(v, ShapeValue) else np.zeros(v.shape, bool) for v in operands])
    except (ValueError, IndexError) as exc:  # numpy's AxisError is both
        raise view.unreadable(f"cannot be evaluated on its constant inputs: {exc}") from None
    return shape_value(values, is_batch)


def shape_value(values: np.ndarray, is_batch: np.ndarray) -> np.ndarray | ShapeValue:
    """A plain array once no entry depends on the batch size any more."""
    return ShapeValue(values, is_batch) if is_batch.any() else values


def _static(view: NodeView, index: int) -> np.ndarray | ShapeValue:
    value = view.input(index)
    if value is None:
        raise view.unreadable(f"lacks input {index}.")
    if isinstance(value, Dynamic):
        raise view.unsupported(f"needs input {index} to be constant.")
    return value


def _constant(view: NodeView) -> np.ndarray:
    if view.has_attr("value"):
        return view.attr("value")
    for name, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                        ("value_int", np.int64), ("value_ints", np.int64)):
        if view.has_attr(name):
            return np.array(view.attr(name), dtype=dtype)
    raise view.unsupported("holds no numeric tensor (sparse or string constants are not supported).")


def _shape(view: NodeView) -> np.ndarray | ShapeValue:
    value = view.input(0)
    if value is None:
        raise view.unreadable("lacks its input.")
    start, end = view.attr("start", 0), view.attr("end", None)
    if isinstance(value, Dynamic):
        values = np.array([-1, *value.shape], dtype=np.int64)
        is_batch = np.array([True] + [False] * len(value.shape))
        return shape_value(values[start:end], is_batch[start:end])
    shape = value.values.shape if isinstance(value, ShapeValue) else value.shape
    return np.array(shape, dtype=np.int64)[start:end]


def _cast(view: NodeView) -> np.ndarray | ShapeValue:
    value = _static(view, 0)
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(int(view.attr("to")))
    except (KeyError, TypeError, ValueError):
        raise view.unsupported(f"casts to ONNX type {view.attr('to')}, which bdscreen does not handle.") from None
    if isinstance(value, ShapeValue):
        if not np.issubdtype(dtype, np.integer):
            raise view.unsupported("converts the batch size to a non-integer type.")
        return ShapeValue(value.values.astype(dtype), value.is_batch)
    return value.astype(dtype)


def _constant_of_shape(view: NodeView) -> np.ndarray:
    shape = [int(d) for d in view.const(0, "shape").reshape(-1)]
    check_elements(f"{view.where}: output", shape, MAX_TENSOR_ELEMENTS)
    fill = view.attr("value")
    fill = np.zeros(1, np.float32) if fill is None else fill.reshape(-1)
    if fill.size != 1:
        raise view.unreadable("has a fill value that is not a single element.")
    return np.full(shape, fill[0], dtype=fill.dtype)


def _arithmetic(view: NodeView) -> np.ndarray:
    left, right = _static(view, 0), _static(view, 1)
    if isinstance(left, ShapeValue) or isinstance(right, ShapeValue):
        raise view.unsupported("computes with the batch size; bdscreen needs per-sample shapes that do not.")
    try:
        shape = np.broadcast_shapes(left.shape, right.shape)
    except ValueError:
        raise view.unreadable(f"cannot broadcast shapes {list(left.shape)} and {list(right.shape)}.") from None
    check_elements(f"{view.where}: output", shape, MAX_TENSOR_ELEMENTS)
    with np.errstate(all="ignore"):
        if view.op == "Add":
            return left + right
        if view.op == "Sub":
            return left - right
        if view.op == "Mul":
            return left * right
        if np.issubdtype(left.dtype, np.integer):  # ONNX integer division truncates toward zero
            return (np.abs(left) // np.maximum(np.abs(right), 1) * np.sign(left) * np.sign(right)).astype(left.dtype)
        return left / right


Transform = Callable[[list[np.ndarray]], np.ndarray]


def _structural_transform(view: NodeView) -> Transform | None:
    """Ops that only move entries: the same function applies to values and to the batch mask."""
    op = view.op
    try:
        if op == "Concat":
            axis = int(view.attr("axis"))
            return lambda arrays: np.concatenate(arrays, axis=axis)
        if op == "Gather":
            indices, axis = view.const(1, "indices"), int(view.attr("axis", 0))
            return lambda arrays: _gather(view, arrays[0], indices, axis)
        if op == "Unsqueeze":
            axes = view.axes_operand(since_opset=13)
            return lambda arrays: np.expand_dims(arrays[0], tuple(axes or ()))
        if op == "Squeeze":
            axes = view.axes_operand(since_opset=13)
            return lambda arrays: np.squeeze(arrays[0], None if axes is None else tuple(axes))
        if op == "Transpose":
            perm = view.attr("perm")
            return lambda arrays: np.transpose(arrays[0], perm)
        if op == "Slice":
            return lambda arrays: _slice(view, arrays[0])
        if op == "Reshape":
            target = [int(d) for d in view.const(1, "shape").reshape(-1)]
            allow_zero = bool(view.attr("allowzero", 0))
            return lambda arrays: _reshape(arrays[0], target, allow_zero)
    except (TypeError, ValueError) as exc:
        raise view.unreadable(f"has malformed attributes: {exc}") from None
    return None


def _slice(view: NodeView, array: np.ndarray) -> np.ndarray:
    for axis, kept in slice_ranges(view, array.shape).items():
        array = np.take(array, np.array(list(kept), dtype=np.int64), axis=axis)
    return array


def _gather(view: NodeView, array: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
    # The only structural op whose output can outgrow its inputs: check before np.take allocates.
    rows = array.shape[axis] if -array.ndim <= axis < array.ndim else 1
    check_elements(f"{view.where}: output", (indices.size, array.size // max(rows, 1)), MAX_TENSOR_ELEMENTS)
    return np.take(array, indices.astype(np.int64), axis=axis)


def _reshape(array: np.ndarray, target: list[int], allow_zero: bool) -> np.ndarray:
    if not allow_zero:  # 0 copies the input's dimension at the same position
        target = [array.shape[i] if d == 0 and i < array.ndim else d for i, d in enumerate(target)]
    return array.reshape(target)
