"""Tell what a model file is from its first bytes, without loading or executing anything.

File names are chosen by the uploader and prove nothing: a pickle renamed ``model.h5`` is still a pickle.
Sniffing reads a few KB (a little more for compressed streams and zip members) and decides between the
two formats bdscreen reads (Keras HDF5 and ONNX), formats it refuses because loading them can run code
(Python pickles, raw, compressed or inside a zip such as PyTorch's ``torch.save`` files, and NumPy object
arrays), and everything else, which it cannot read. A model is also refused when it is two formats at once
(foreign bytes in an HDF5 user block or past its end, a zip appended: :mod:`worker.core.polyglot`) and when an
ONNX model keeps weights in other files (:mod:`worker.core.onnx_external`, a walk of the whole protobuf).
"""

import bz2
import io
import lzma
import zipfile
import zlib
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from worker.core.errors import EXPORT_HINT, RefusedModelError, UnreadableModelError
from worker.core.onnx_external import MalformedProtobuf, external_tensors
from worker.core.pickles import is_pickle_bytes, pickle_protocol  # noqa: F401 - is_pickle_bytes is re-exported
from worker.core.polyglot import appended_zip, foreign_bytes, hdf5_signature_offset

#: Bytes read from the start of a file (or of a zip member) to recognise it.
HEAD_BYTES = 4096
#: Decompressed bytes examined for a pickle inside a compressed stream, and compressed bytes read to get them
#: (bzip2 emits nothing before a whole block of up to 900 KB is in).
DECOMPRESSED_PREFIX_BYTES = 64 * 1024
MAX_COMPRESSED_READ = 2 * 1024 * 1024
#: Members of a zip archive whose first bytes are examined; names are checked for all of them.
MAX_ZIP_MEMBERS_PEEKED = 64

ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
NPY_SIGNATURE = b"\x93NUMPY"
ACCEPTED_FORMATS = "Keras HDF5 (.h5) and ONNX (.onnx)"

# ModelProto field number -> protobuf wire type (0 varint, 2 length-delimited), from onnx.proto.
_MODEL_PROTO_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_MODEL_PROTO_STRINGS = frozenset({2, 3, 4, 6})
_MAX_IR_VERSION = 64
# What reading a damaged or exotic zip member can raise (zipfile surfaces its codecs' errors as they are).
_ZIP_MEMBER_ERRORS = (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError, zlib.error,
                      lzma.LZMAError, ValueError)


class FileKind(StrEnum):
    """A model format bdscreen reads."""

    hdf5 = "hdf5"
    onnx = "onnx"


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


def sniff_model_file(path: Path) -> FileKind:
    """Return the format of the model at ``path`` from its content, or raise why it is not read.

    Raises :class:`RefusedModelError` for anything whose loading can run code and
    :class:`UnreadableModelError` for empty files and unknown formats.
    """
    try:
        with path.open("rb") as file:
            size = file.seek(0, io.SEEK_END)
            file.seek(0)
            head = file.read(HEAD_BYTES)
            if not head:
                raise UnreadableModelError("The model file is empty.")
            # Pickles first: a file that starts as a pickle is refused even if an HDF5 user block follows.
            found = is_pickle_bytes(head) or _compressed_pickle(file, head)
            offset = hdf5_signature_offset(file, size)
            if found and offset:
                found += f" and, from byte {offset}, an HDF5 file at once (a polyglot)"
            if found:
                raise RefusedModelError(_refusal(found))
            if offset is not None:
                _refuse_polyglot(file, foreign_bytes(file, size, offset), "an HDF5 model")
                return FileKind.hdf5
            if head.startswith(ZIP_SIGNATURES):
                _raise_for_zip(file)
            if head.startswith(NPY_SIGNATURE):
                _raise_for_npy_objects(io.BytesIO(head), "a NumPy .npy file holding Python objects")
                raise UnreadableModelError(_unknown("it is a NumPy .npy array, which holds data, not a model"))
            if looks_like_onnx(head, size):
                _refuse_polyglot(file, None, "an ONNX model")
                _refuse_external_data(path)
                return FileKind.onnx
            _refuse_polyglot(file, None, "a file of unknown content")
    except OSError as error:
        raise UnreadableModelError(f"The model file cannot be read: {error.strerror or error}.") from error
    raise UnreadableModelError(_unknown("its content is none of them"))


def has_hdf5_signature(file: BinaryIO, size: int) -> bool:
    """True when the HDF5 signature is at offset 0 or at a user-block offset (512, 1024, ...)."""
    return hdf5_signature_offset(file, size) is not None


def _refuse_polyglot(file: BinaryIO, foreign: str | None, what: str) -> None:
    """Refuse a model that is also another format: bytes hidden where its format lets them lie, or a zip at its end."""
    if foreign is None and appended_zip(file):
        foreign = "a zip archive appended at its end"
    if foreign is not None:
        raise RefusedModelError(
            f"The file is {what} carrying {foreign}: a file that is two formats at once (a polyglot), which "
            "pickle.load, torch.load or unzip would read differently from bdscreen. bdscreen refuses it without "
            f"loading it. Save the model again with its own library, with nothing prepended or appended. {EXPORT_HINT}")


def _refuse_external_data(path: Path) -> None:
    """ONNX weights stored in other files are refused: a location is resolved on the server, never trusted."""
    try:
        found = external_tensors(path)
    except MalformedProtobuf:
        return  # the ONNX reader reports the damage with its own message
    if found:
        name, location = found[0]
        raise RefusedModelError(
            f"The ONNX model keeps tensor {name[:80]!r} in another file ({location[:80]!r}); bdscreen reads "
            "self-contained models only and never opens files an upload names. Save it as one file: "
            "onnx.save(model, path, save_as_external_data=False).")


def looks_like_onnx(head: bytes, size: int) -> bool:
    """True when ``head`` parses as the start of a protobuf ModelProto (the ONNX reader does the real parse).

    Every field in ``head`` must be a ModelProto field with its wire type, length-delimited fields must fit in
    the file, strings that lie wholly in ``head`` must be UTF-8, and ir_version must be plausible.
    """
    position = 0
    fields = 0
    while position < len(head):
        tag, position = _read_varint(head, position)
        if tag is None:
            return fields > 0
        number, wire_type = tag >> 3, tag & 7
        if _MODEL_PROTO_FIELDS.get(number) != wire_type:
            return False
        value, position = _read_varint(head, position)
        if value is None:
            return fields > 0
        if number == 1 and not 1 <= value <= _MAX_IR_VERSION:
            return False
        if wire_type == 2:
            if value > size - position:
                return False
            if number in _MODEL_PROTO_STRINGS and position + value <= len(head):
                try:
                    head[position:position + value].decode("utf-8")
                except UnicodeDecodeError:
                    return False
            position += value
        fields += 1
    return fields > 0


def _read_varint(data: bytes, position: int) -> tuple[int | None, int]:
    """Decode a protobuf varint at ``position``; None when ``data`` ends first or it exceeds 64 bits."""
    value = 0
    for shift in range(0, 70, 7):
        if position >= len(data):
            return None, position
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value, position) if value < 1 << 64 else (None, position)
    return None, position


def _compressed_pickle(file: BinaryIO, head: bytes) -> str | None:
    """Describe a zlib, gzip, bzip2, xz or lzma stream (as joblib writes) whose content starts a pickle."""
    factory = _decompressor_for(head)
    if factory is None:
        return None
    name, make = factory
    file.seek(0)
    decompressor = make()
    prefix = bytearray()
    consumed = 0
    while len(prefix) < DECOMPRESSED_PREFIX_BYTES and consumed < MAX_COMPRESSED_READ and not decompressor.eof:
        chunk = file.read(HEAD_BYTES * 16)
        if not chunk:
            break
        consumed += len(chunk)
        try:
            prefix += decompressor.decompress(chunk, DECOMPRESSED_PREFIX_BYTES - len(prefix))
        except (zlib.error, OSError, EOFError, lzma.LZMAError):
            break
    protocol = pickle_protocol(bytes(prefix)) if prefix else None
    return None if protocol is None else f"a {name}-compressed Python pickle (protocol {protocol}), as joblib writes"


def _decompressor_for(head: bytes) -> tuple[str, Callable[[], _Decompressor]] | None:
    if head.startswith(b"\x1f\x8b"):
        return "gzip", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    if len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib", zlib.decompressobj
    if head.startswith(b"BZh") and head[3:4].isdigit() and head[3:4] != b"0":
        return "bzip2", bz2.BZ2Decompressor
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz", lzma.LZMADecompressor
    # lzma "alone" files start with the properties byte 0x5D and a little-endian dictionary size.
    if head.startswith(b"\x5d\x00\x00"):
        return "lzma", lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE)
    return None


def _raise_for_zip(file: BinaryIO) -> None:
    """Refuse a zip that holds a pickle (a PyTorch checkpoint, a pickled .npz); reject any other zip."""
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise UnreadableModelError(_unknown(f"it is a damaged zip archive ({error})")) from error
    holds_arrays = False
    with archive:
        members = archive.infolist()
        for member in members:
            if member.filename.endswith(".pkl"):
                raise RefusedModelError(_refusal(
                    f"a PyTorch checkpoint (a zip archive holding the Python pickle '{member.filename}')"))
        for member in members[:MAX_ZIP_MEMBERS_PEEKED]:
            try:
                with archive.open(member) as stream:
                    head = stream.read(HEAD_BYTES)
            except _ZIP_MEMBER_ERRORS:
                continue
            found = is_pickle_bytes(head)
            if found:
                raise RefusedModelError(_refusal(f"a zip archive holding {found} as '{member.filename}'"))
            if head.startswith(NPY_SIGNATURE):
                found = f"a NumPy .npz archive whose array '{member.filename}' holds Python objects"
                _raise_for_npy_objects(io.BytesIO(head), found)
                holds_arrays = True
    what = "a NumPy .npz archive, which holds data, not a model" if holds_arrays else "a zip archive"
    raise UnreadableModelError(_unknown(f"it is {what}"))


def npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a .npy header, read without reading the array.

    NumPy parses the header dict with ``ast.literal_eval`` and a size cap, so a hostile header runs nothing.
    Raises ValueError for a malformed header.
    """
    major, _minor = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    try:
        return read_header(stream)
    except (UnicodeDecodeError, SyntaxError) as error:
        raise ValueError(f"malformed .npy header: {error}") from error


def _raise_for_npy_objects(stream: BinaryIO, found: str) -> None:
    """Refuse a NumPy array whose dtype holds Python objects, which NumPy stores as a pickle."""
    try:
        _shape, _fortran_order, dtype = npy_header(stream)
    except ValueError:
        return
    if dtype.hasobject:
        raise RefusedModelError(_refusal(f"{found}, which NumPy stores as a pickle"))


def _refusal(found: str) -> str:
    return (f"The file is {found}. bdscreen refuses it without loading it, because unpickling runs arbitrary code "
            f"from the file. {EXPORT_HINT}")


def _unknown(why: str) -> str:
    return f"The file is not a model format bdscreen reads: {why}. Accepted formats: {ACCEPTED_FORMATS}."
