"""A content-addressed file store on a filesystem path: uploads and artifacts, named by their sha256.

A file is written under ``tmp/`` while its digest is computed, then renamed into ``blobs/ab/abcdef...``:
a reader never sees a half-written blob, and the same content uploaded twice is stored once. Deleting
takes the store's lock (``flock`` on ``store.lock``) so that a blob about to be referenced by a new scan
record is never removed between its commit and the record's insert.
"""

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_DIGEST = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20


class BlobWriter:
    """A blob being written: ``write`` chunks, then the store's ``commit``; hashes as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        for folder in (self.blobs, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _DIGEST.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.blobs / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def writer(self) -> BlobWriter:
        handle, name = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        os.close(handle)
        return BlobWriter(Path(name))

    def commit(self, writer: BlobWriter) -> str:
        """Move a finished writer's file into place; returns its sha256. Call under :meth:`lock`."""
        writer.file.flush()
        os.fsync(writer.file.fileno())
        writer.file.close()
        return self._place(writer.path, writer.sha256)

    def put_file(self, path: Path) -> tuple[str, int]:
        """Move ``path`` (on the same filesystem) into the store; returns (sha256, bytes). Call under :meth:`lock`."""
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
        size = path.stat().st_size
        return self._place(path, digest.hexdigest()), size

    def _place(self, source: Path, sha256: str) -> str:
        target = self.path(sha256)
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            source.unlink()
        else:
            os.chmod(source, 0o644)
            os.replace(source, target)
        return sha256

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for path in self.blobs.glob("??/*"):
            if _DIGEST.fullmatch(path.name):
                yield path.name

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes (and machines, on a filesystem with working flock such as NFSv4)."""
        with (self.root / "store.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def remove_older(folder: Path, before: float) -> None:
    """Remove the entries of ``folder`` last modified before ``before`` (epoch seconds)."""
    for path in folder.iterdir() if folder.is_dir() else []:
        try:
            if path.stat().st_mtime < before:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        except FileNotFoundError:
            continue
