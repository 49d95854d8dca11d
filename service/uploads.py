"""Receiving a scan upload: the multipart body is parsed as it streams in and each file goes straight to disk.

Nothing holds a whole file in memory: chunks go from the socket through ``python_multipart``'s streaming
parser into a :class:`~worker.core.store.blobs.BlobWriter` (which hashes as it writes). The size limit is
checked against ``Content-Length`` before a byte is read (so a client sending ``Expect: 100-continue``
learns of a 413 before it sends the body), and against the bytes actually received for chunked bodies.
"""

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from schemas.api import UPLOAD_FIELDS
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from worker.core.store.blobs import BlobStore, BlobWriter

OPTIONS_FIELD = "options"
MAX_OPTIONS_BYTES = 256 * 1024


@dataclass
class ReceivedUpload:
    files: dict[str, BlobWriter] = field(default_factory=dict)
    filenames: dict[str, str | None] = field(default_factory=dict)
    options: bytearray | None = None
    bytes: int = 0

    def discard(self) -> None:
        for writer in self.files.values():
            writer.discard()


class _Parts:
    """python_multipart callbacks that route each part to a blob writer or the options buffer."""

    def __init__(self, blobs: BlobStore, upload: ReceivedUpload) -> None:
        self.blobs, self.upload = blobs, upload
        self.header_field, self.header_value = bytearray(), bytearray()
        self.disposition = b""
        self.target: BlobWriter | bytearray | None = None

    def callbacks(self) -> Any:  # python-multipart's MultipartCallbacks, a TypedDict of these methods
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data}

    def on_part_begin(self) -> None:
        self.disposition, self.target = b"", None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self.header_field).lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_field, self.header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name in self.upload.files or (name == OPTIONS_FIELD and self.upload.options is not None):
            raise BadRequest(f"the field '{name}' appears twice; send each file once.")
        if name in UPLOAD_FIELDS:
            self.target = self.upload.files[name] = self.blobs.writer()
            filename = params.get(b"filename")
            self.upload.filenames[name] = None if filename is None else filename.decode("utf-8", "replace")[:255]
        elif name == OPTIONS_FIELD:
            self.target = self.upload.options = bytearray()
        else:
            raise BadRequest(f"unknown field '{name}'; the fields are {', '.join(UPLOAD_FIELDS)} and "
                             f"'{OPTIONS_FIELD}' (JSON).")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if isinstance(self.target, bytearray):
            if len(self.target) + end - start > MAX_OPTIONS_BYTES:
                raise BadRequest(f"the '{OPTIONS_FIELD}' field is larger than {MAX_OPTIONS_BYTES} bytes.")
            self.target += data[start:end]
        elif self.target is not None:
            self.target.write(data[start:end])


def check_declared_size(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(too_large_message(int(declared), max_bytes))


def too_large_message(size: int, max_bytes: int) -> str:
    return (f"the request body is {size:,} bytes or more, above this server's limit of {max_bytes:,} bytes "
            "(BDSCREEN_MAX_UPLOAD_MB); send fewer clean samples, or ask the operator to raise the limit.")


async def receive_upload(request: Request, blobs: BlobStore, max_bytes: int) -> ReceivedUpload:
    """Stream a multipart/form-data body into blob writers; the caller commits or discards them."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise UnsupportedMediaType("send the scan as multipart/form-data with a 'model' file (curl -F model=@FILE).")
    check_declared_size(request, max_bytes)
    upload = ReceivedUpload()
    parser = MultipartParser(params[b"boundary"], _Parts(blobs, upload).callbacks())
    try:
        async for chunk in request.stream():
            upload.bytes += len(chunk)
            if upload.bytes > max_bytes:
                raise PayloadTooLarge(too_large_message(upload.bytes, max_bytes))
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        upload.discard()
        raise BadRequest(f"the multipart body is malformed ({exc}).") from None
    except BaseException:
        upload.discard()
        raise
    return upload
