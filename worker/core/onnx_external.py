"""Find ONNX tensors stored as external data by walking the protobuf wire format, torch- and onnx-free.

The gateway must refuse an ONNX model whose weights live in other files before the upload is stored: such a
``location`` is resolved against the server's folders, where it could name another tenant's upload. Parsing
the whole ModelProto would hold the upload in memory; this walk reads the file through ``mmap`` and descends
only into the messages that can hold tensors (ModelProto -> GraphProto/FunctionProto -> NodeProto ->
AttributeProto -> TensorProto, initializers and sparse initializers), skipping every other field by length.
Field numbers are those of onnx.proto.
"""

import mmap
from pathlib import Path

# message kind -> {field number: kind of the embedded message}
_CHILDREN = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 9: "tensor", 10: "graph", 11: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
    "entry": {},
}
_TENSOR_NAME, _TENSOR_LOCATION_FIELD, _EXTERNAL = 8, 14, 1
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
#: Nested messages followed; a real model nests a few levels, a hostile one could nest thousands.
MAX_DEPTH = 64
#: Fields looked at in the messages walked; past it the walk stops (the gateway's time is bounded) and the
#: worker's ONNX reader, which refuses external data too and limits nodes, decides.
MAX_FIELDS = 2_000_000


class MalformedProtobuf(ValueError):
    """The bytes are not a well-formed protobuf message."""


def external_tensors(path: Path, limit: int = 3) -> list[tuple[str, str]]:
    """(tensor name, location) of up to ``limit`` tensors that keep their data outside the file."""
    with path.open("rb") as file:
        if file.seek(0, 2) == 0:
            return []
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = memoryview(data)
            try:
                return _walk(view, limit)
            finally:
                view.release()


def _walk(data: memoryview, limit: int) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    stack = [("model", 0, len(data), 0)]
    fields = 0
    while stack and len(found) < limit:
        kind, start, end, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MalformedProtobuf("messages nested too deeply")
        children = _CHILDREN[kind]
        name, location, external = "", "", False
        for number, wire, value in _fields(data, start, end):
            fields += 1
            if fields > MAX_FIELDS:
                raise MalformedProtobuf(f"more than {MAX_FIELDS:,} fields")
            if wire == 2 and number in children:
                stack.append((children[number], value[0], value[1], depth + 1))
            if kind == "tensor" and number == _TENSOR_NAME and wire == 2:
                name = _text(data, value)
            if kind == "tensor" and number == _TENSOR_LOCATION_FIELD and wire == 0 and value == _EXTERNAL:
                external = True
            if kind == "tensor" and number == 13 and wire == 2:
                key, entry_value = _entry(data, value)
                if key == "location":
                    location = entry_value
                external = True
        if external:
            found.append((name, location))
    return found


def _entry(data: memoryview, span: tuple[int, int]) -> tuple[str, str]:
    key = value = ""
    for number, wire, field in _fields(data, *span):
        if wire == 2 and number == _ENTRY_KEY:
            key = _text(data, field)
        elif wire == 2 and number == _ENTRY_VALUE:
            value = _text(data, field)
    return key, value


def _text(data: memoryview, span: tuple[int, int]) -> str:
    return bytes(data[span[0]:min(span[1], span[0] + 512)]).decode("utf-8", "replace")


def _fields(data: memoryview, start: int, end: int):
    """Yield (field number, wire type, value): an int for varints, a (start, end) span for length-delimited."""
    position = start
    value: int | tuple[int, int] | None
    while position < end:
        tag, position = _varint(data, position, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, position = _varint(data, position, end)
        elif wire == 2:
            length, position = _varint(data, position, end)
            if length > end - position:
                raise MalformedProtobuf("a field runs past the end of its message")
            value, position = (position, position + length), position + length
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
            value = None
        else:
            raise MalformedProtobuf(f"wire type {wire} is not used by ONNX")
        if position > end:
            raise MalformedProtobuf("a field runs past the end of its message")
        yield number, wire, value


def _varint(data: memoryview, position: int, end: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if position >= end:
            raise MalformedProtobuf("the file ends inside a number")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
    raise MalformedProtobuf("a number is longer than 10 bytes")
