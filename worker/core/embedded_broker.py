"""The embedded broker of ``bdscreen serve``: kombu's filesystem transport with an atomic put.

kombu's own ``_put`` creates the message file in the queue folder and only then writes it; a worker polling
the folder can take (rename) and read the file in between, read zero bytes and die on ``JSONDecodeError``
("Unrecoverable error" in Celery: the whole worker exits). Here a message is written and fsynced to
``<broker>/incoming`` first and then renamed into the queue folder, so a message is either absent or
complete there; the take was already an atomic rename. The exchange tables (``control/*.exchange``) are
rewritten the same way, under a lock file, since kombu's first write of one has the same gap.

A file that still fails to decode (a disk fault, a hand-made file) is moved to ``<broker>/corrupt`` and
logged, instead of ending the worker.
"""

import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

log = logging.getLogger("bdscreen.broker")

#: Folders of the embedded broker under ``<storage>/broker``; all on one filesystem, so moves are renames.
FOLDERS = ("queue", "incoming", "processed", "control", "corrupt")


def transport_options(broker_dir: Path, poll_interval: float) -> dict:
    return {"data_folder_in": str(broker_dir / "queue"), "data_folder_out": str(broker_dir / "queue"),
            "processed_folder": str(broker_dir / "processed"), "store_processed": True,
            "control_folder": str(broker_dir / "control"), "polling_interval": poll_interval}


def make_folders(broker_dir: Path) -> None:
    for folder in FOLDERS:
        (broker_dir / folder).mkdir(parents=True, exist_ok=True)


def _write_atomically(target: Path, data: bytes, staging: Path) -> None:
    """Write ``data`` to a temporary file in ``staging`` (same filesystem), fsync it, rename it to ``target``."""
    fd, temporary = tempfile.mkstemp(dir=staging, prefix=".put-")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Channel(filesystem.Channel):
    @property
    def _broker_dir(self) -> Path:
        return Path(self.data_folder_out).parent

    def _put(self, queue, payload, **kwargs):
        # The name sorts by time as kombu's does (``_get`` takes the smallest first) and ends in ``.<queue>.msg``.
        name = f"{int(round(monotonic() * 1000)):015d}_{uuid.uuid4()}.{queue}.msg"
        try:
            _write_atomically(Path(self.data_folder_out) / name, dumps(payload).encode(),
                              self._broker_dir / "incoming")
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add a message to {self.data_folder_out!r}") from exc

    def _get(self, queue):
        while True:
            try:
                return super()._get(queue)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                self._quarantine(queue, exc)

    def _quarantine(self, queue, exc: Exception) -> None:
        """Move the undecodable messages of ``queue`` out of ``processed/`` so they are not read again."""
        processed = Path(self.processed_folder)
        corrupt = self._broker_dir / "corrupt"
        for path in processed.glob(f"*.{queue}.msg"):
            try:
                loads(path.read_bytes().decode())
            except (ValueError, UnicodeDecodeError):
                os.replace(path, corrupt / path.name)
                log.error("broker message %s could not be decoded (%s); moved to %s", path.name, exc, corrupt)

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        value = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with open(self.control_folder / ".exchange.lock", "a") as lock:
            filesystem.lock(lock, filesystem.LOCK_EX)
            try:
                queues = self.get_table(exchange)
                if value not in queues:
                    _write_atomically(file, dumps([value, *queues]).encode(), self._broker_dir / "incoming")
            finally:
                filesystem.unlock(lock)


class Transport(filesystem.Transport):
    Channel = Channel
