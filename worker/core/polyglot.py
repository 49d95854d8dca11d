"""Foreign bytes in a model file: the places a format leaves for them, checked before the file is accepted.

An HDF5 file may start with a user block (512, 1024, ... bytes that HDF5 ignores) and may carry bytes past
its end-of-file address; a file can also end with a zip archive, whose directory readers look for at the end.
Such a file is two formats at once: bdscreen would read it as Keras while ``pickle.load``, ``torch.load`` or
``unzip`` on the same bytes would read what was hidden there. Keras never writes a user block or trailing
bytes, so any non-zero byte in them refuses the file, and the message names what was found.
"""

import struct
import zipfile
from typing import BinaryIO

from worker.core.pickles import is_pickle_bytes

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: HDF5 files with a user block keep their signature at 512, 1024, 2048, ... bytes; the largest checked.
MAX_HDF5_SIGNATURE_OFFSET = 1 << 20
_CHUNK = 1 << 16
_OFFSET_FORMATS = {2: "<H", 4: "<I", 8: "<Q"}
# Leading bytes of formats whose loaders can run code or unpack archives, as named in refusals.
_SIGNATURES = ((b"PK\x03\x04", "a zip archive (as torch.save writes)"), (b"PK\x05\x06", "a zip archive"),
               (b"\x1f\x8b", "a gzip stream"), (b"BZh", "a bzip2 stream"), (b"\xfd7zXZ\x00", "an xz stream"),
               (b"\x93NUMPY", "a NumPy array"), (b"\x7fELF", "an ELF executable"), (b"MZ", "a Windows executable"),
               (b"#!", "a script"), (HDF5_SIGNATURE, "another HDF5 file"))


def hdf5_signature_offset(file: BinaryIO, size: int) -> int | None:
    """Where the HDF5 signature is: 0 or a user-block size (512, 1024, ...); None when it is nowhere."""
    offset = 0
    while offset <= min(size - len(HDF5_SIGNATURE), MAX_HDF5_SIGNATURE_OFFSET):
        file.seek(offset)
        if file.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


def hdf5_end_of_file(file: BinaryIO, signature_offset: int) -> int | None:
    """The end-of-file address the HDF5 superblock declares (the library counts the user block in it)."""
    file.seek(signature_offset)
    block = file.read(64)
    if len(block) < 16:
        return None
    version = block[8]
    if version in (0, 1):
        offset_size, first = block[13], 24 + (4 if version == 1 else 0)
    elif version in (2, 3):
        offset_size, first = block[9], 12
    else:
        return None
    layout = _OFFSET_FORMATS.get(offset_size)
    # base address, then free-space/extension address, then the end-of-file address
    position = first + 2 * offset_size
    if layout is None or len(block) < position + offset_size:
        return None
    return struct.unpack_from(layout, block, position)[0]


def foreign_bytes(file: BinaryIO, size: int, signature_offset: int) -> str | None:
    """Describe foreign content in an HDF5 file's user block or past its end, or None when there is none."""
    if signature_offset:
        found = _nonzero_region(file, 0, signature_offset)
        if found is not None:
            return f"{_describe(found)} in its {signature_offset}-byte HDF5 user block"
    end = hdf5_end_of_file(file, signature_offset)
    if end is not None and end < size:
        found = _nonzero_region(file, end, size)
        if found is not None:
            return f"{_describe(found)} in {size - end:,} bytes after the end of the HDF5 data"
    return None


def appended_zip(file: BinaryIO) -> bool:
    """True when zip readers (``zipfile``, ``torch.load``'s archive reader, ``unzip``) find an archive at the end."""
    file.seek(0)
    return zipfile.is_zipfile(file)


def _nonzero_region(file: BinaryIO, start: int, end: int) -> bytes | None:
    """The first 4 KB from the first non-zero byte in [start, end), or None when the region is all zeros."""
    file.seek(start)
    position = start
    while position < end:
        chunk = file.read(min(_CHUNK, end - position))
        if not chunk:
            return None
        stripped = chunk.lstrip(b"\0")
        if stripped:
            first = position + len(chunk) - len(stripped)
            file.seek(first)
            return file.read(min(4096, end - first))
        position += len(chunk)
    return None


def _describe(content: bytes) -> str:
    found = is_pickle_bytes(content)
    if found:
        return found
    for signature, name in _SIGNATURES:
        if content.startswith(signature):
            return name
    return "foreign bytes (not HDF5 data)"
