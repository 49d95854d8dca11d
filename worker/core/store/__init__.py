"""Storage shared by the gateway and the workers (torch-free): blobs, scan records and working folders.

Layout under the storage path (a shared volume when processes run on several machines)::

    blobs/ab/abcd...   uploads and artifacts, named by sha256       (worker.core.store.blobs)
    tmp/               uploads being received
    work/<id>.<n>/     attempt n of a scan, until its artifacts are committed
    scans.db           scan records, API keys, counters, worker heartbeats (worker.core.store.records),
                       unless BDSCREEN_DATABASE_URL puts them on PostgreSQL (worker.core.store.database)
    broker/            the embedded broker's message folders (no Redis)
"""

import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from worker.core.store.blobs import BlobStore, remove_older
from worker.core.store.database import Database
from worker.core.store.database import database_url as database_url_of
from worker.core.store.records import Records, ScanRecord
from worker.core.store.schema import scans

__all__ = ["Store", "open_store", "store_for", "ScanRecord"]


@dataclass
class Store:
    root: Path
    blobs: BlobStore
    records: Records

    @property
    def work(self) -> Path:
        return self.root / "work"

    def work_dir(self, scan_id: str, attempt: int) -> Path:
        return self.work / f"{scan_id}.{attempt}"

    def input_path(self, record: ScanRecord, name: str) -> Path | None:
        upload = record.upload(name)
        return None if upload is None else self.blobs.path(upload["sha256"])

    def release(self, digests: Iterable[str]) -> None:
        """Delete the blobs among ``digests`` that no live scan references any more."""
        with self.blobs.lock():
            for sha256 in set(digests):
                if not self.records.is_referenced(sha256):
                    self.blobs.delete(sha256)

    def delete_scan(self, scan_id: str, hard: bool = False) -> ScanRecord | None:
        """Cancel (if still going) and delete a scan's files; the record stays as a tombstone unless ``hard``."""
        record = self.records.delete(scan_id, hard=hard)
        if record is not None:
            self.release(u["sha256"] for u in record.uploads)
            self.release(artifact_digests(record))
            for work in self.work.glob(f"{scan_id}.*"):
                shutil.rmtree(work, ignore_errors=True)
        return record

    def expire(self, retention_days: float) -> int:
        """Delete ended scans older than the retention, purge old tombstones and stray files; returns scans gone."""
        if retention_days <= 0:
            return 0
        before = time.time() - retention_days * 86400
        gone = self.records.ids(scans.c.deleted_at.is_(None), scans.c.ended_at.is_not(None), scans.c.ended_at < before)
        for scan_id in gone:
            self.delete_scan(scan_id)
        for scan_id in self.records.ids(scans.c.deleted_at.is_not(None), scans.c.deleted_at < before):
            self.records.purge(scan_id)
        return len(gone)

    def sweep_leftovers(self) -> None:
        """Uploads cut off with their gateway (a day old), messages the embedded broker handed out, and its
        half-written puts of a process that died mid-write (the message never entered the queue)."""
        remove_older(self.blobs.tmp, time.time() - 86400)
        remove_older(self.root / "broker/processed", time.time() - 600)
        remove_older(self.root / "broker/incoming", time.time() - 600)


def artifact_digests(record: ScanRecord) -> list[str]:
    return [] if record.report is None else [a.sha256 for a in record.report.artifacts]


@lru_cache
def open_store(root: Path, database_url: str | None = None) -> Store:
    """The store under ``root``; its records in ``root/scans.db``, or in the PostgreSQL at ``database_url``."""
    from worker.core.embedded_broker import make_folders  # here: importing kombu is not needed to read records

    (root / "work").mkdir(parents=True, exist_ok=True)
    make_folders(root / "broker")
    return Store(root=root, blobs=BlobStore(root), records=Records(Database(database_url_of(root, database_url))))


def store_for(settings) -> Store:
    """The deployment's store: the storage path and database of ``settings`` (a worker.core.settings.Settings)."""
    return open_store(settings.storage, settings.database_url)
