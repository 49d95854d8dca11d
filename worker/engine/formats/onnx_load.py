"""Load an ONNX file and vet it before anything is converted or allocated.

The protobuf is parsed without its external data, which is refused. Every declaration that could cost
memory, run foreign code or read other files is checked first: node count, operator domains, subgraphs,
tensor sizes and external data. Tensors are then turned into numpy
arrays one at a time by :func:`tensor_to_array`, which re-checks sizes against the bytes present.
"""

import pathlib

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from worker.core.errors import RefusedModelError, UnreadableModelError, UnsupportedLayerError
from worker.core.limits import MAX_MODEL_ELEMENTS, check_elements, check_node_count

STANDARD_DOMAINS = ("", "ai.onnx")
SUBGRAPH_OPS = ("If", "Loop", "Scan", "SequenceMap")
_SUBGRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
ONE_FILE_HINT = "save the model as one file: onnx.save(model, path, save_as_external_data=False)"

# Numeric element types; strings, complex and 8/4-bit floats have no use in an image classifier.
_DTYPES = {
    onnx.TensorProto.FLOAT: np.dtype("<f4"), onnx.TensorProto.DOUBLE: np.dtype("<f8"),
    onnx.TensorProto.FLOAT16: np.dtype("<f2"), onnx.TensorProto.INT8: np.dtype("i1"),
    onnx.TensorProto.UINT8: np.dtype("u1"), onnx.TensorProto.INT16: np.dtype("<i2"),
    onnx.TensorProto.UINT16: np.dtype("<u2"), onnx.TensorProto.INT32: np.dtype("<i4"),
    onnx.TensorProto.UINT32: np.dtype("<u4"), onnx.TensorProto.INT64: np.dtype("<i8"),
    onnx.TensorProto.UINT64: np.dtype("<u8"), onnx.TensorProto.BOOL: np.dtype("?"),
}
_KNOWN_TYPES = set(onnx.TensorProto.DataType.values())


def load_model(path: pathlib.Path) -> onnx.ModelProto:
    """Parse ``path`` as an ONNX model without touching external data files."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as exc:
        raise UnreadableModelError(f"{path.name} is not a valid ONNX file (protobuf parse failed: {exc}).") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise UnreadableModelError(f"{path.name} cannot be read as an ONNX file: {exc}") from None
    # Empty or random bytes can parse as a protobuf message with no graph in it.
    if not model.HasField("graph") or not model.graph.node:
        raise UnreadableModelError(
            f"{path.name} is not a valid ONNX file (it contains no graph); the file may be empty or truncated."
        )
    return model


def default_opset(model: onnx.ModelProto, what: str) -> int:
    for entry in model.opset_import:
        if entry.domain in STANDARD_DOMAINS:
            return int(entry.version)
    raise UnreadableModelError(f"{what} declares no opset for the standard ONNX domain; the file may be truncated.")


def vet_model(model: onnx.ModelProto, what: str) -> None:
    """Refuse what could run code, read other files or allocate too much; nothing is loaded."""
    graph = model.graph
    check_node_count(what, len(graph.node))
    total = 0
    for index, node in enumerate(graph.node):
        where = f"{what}: node '{node.name or index}' ({node.op_type})"
        if node.domain not in STANDARD_DOMAINS:
            raise RefusedModelError(
                f"{where} is in the custom operator domain '{node.domain}'. Custom operators can load native "
                "code in an ONNX runtime, so bdscreen does not run them; export the model with standard ONNX "
                "operators only."
            )
        if node.op_type in SUBGRAPH_OPS or any(a.type in _SUBGRAPH_ATTRIBUTES for a in node.attribute):
            raise UnsupportedLayerError(
                f"{where} contains a subgraph (control flow); bdscreen supports feed-forward classifiers only. "
                "Export the model without data-dependent control flow."
            )
        for attribute in node.attribute:
            tensors = [attribute.t] if attribute.type == onnx.AttributeProto.TENSOR else list(attribute.tensors)
            for tensor in tensors:
                total += vet_tensor(tensor, f"{where}, attribute '{attribute.name}'")
    if graph.sparse_initializer:
        raise UnsupportedLayerError(f"{what} stores sparse initializers; save the weights as dense tensors.")
    for tensor in graph.initializer:
        total += vet_tensor(tensor, f"{what}: initializer '{tensor.name}'")
    check_elements(f"{what}: all initializers and constants together", (total,), MAX_MODEL_ELEMENTS)


def vet_tensor(tensor: onnx.TensorProto, where: str) -> int:
    """Check a tensor's declared size, type and data location; returns its element count."""
    count = check_elements(where, tuple(tensor.dims))
    if tensor.data_type not in _DTYPES:
        name = onnx.TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in _KNOWN_TYPES else "unknown"
        raise UnsupportedLayerError(f"{where} has element type {name}, which bdscreen does not read.")
    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
        _refuse_external(tensor, where)
    if tensor.HasField("raw_data") and len(tensor.raw_data) != count * _DTYPES[tensor.data_type].itemsize:
        raise UnreadableModelError(
            f"{where} declares shape {list(tensor.dims)} but holds {len(tensor.raw_data):,} bytes of data; "
            "the file is corrupt or truncated."
        )
    return count


def tensor_to_array(tensor: onnx.TensorProto, where: str) -> np.ndarray:
    """A numpy copy of ``tensor``, read only after :func:`vet_tensor` has passed."""
    count = vet_tensor(tensor, where)
    try:
        array = numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as exc:
        raise UnreadableModelError(f"{where} cannot be decoded: {exc}") from None
    if array.size != count:
        raise UnreadableModelError(f"{where} declares {count:,} elements but holds {array.size:,}.")
    return array


def _refuse_external(tensor: onnx.TensorProto, where: str) -> None:
    """External data is never read: a location is a path on the server, and uploads share the blob store.

    An upload naming another upload's digest would read another tenant's file; only a self-contained model
    is read, in the CLI as in the service, so no file name in an upload is ever opened."""
    location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
    raise RefusedModelError(
        f"{where} keeps its data in another file ({location[:80]!r}); bdscreen reads self-contained models only "
        f"and never opens files a model names. {ONE_FILE_HINT[0].upper()}{ONE_FILE_HINT[1:]}."
    )
