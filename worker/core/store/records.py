"""Scan records in SQLite (stdlib ``sqlite3``, WAL) on the storage path: the source of truth of every scan.

The broker only carries "run scan X" messages; the state, the claim of a worker, its heartbeat, the report
and the files a scan references live here, so a restart of the gateway, of a worker or of Redis loses no
scan (see :mod:`worker.core.reconcile`). A deleted scan stays as a tombstone (``deleted_at``) until the retention
sweep purges it, so a worker still running it, and its webhook, can see that it was canceled.
"""

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from schemas.api import ScanState, UploadCheck
from schemas.problems import ScanFailure

SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, state TEXT NOT NULL, stage TEXT, progress REAL NOT NULL DEFAULT 0,
    options TEXT NOT NULL, uploads TEXT NOT NULL, idempotency_key TEXT, created_at REAL NOT NULL,
    dispatched_at REAL, started_at REAL, ended_at REAL, heartbeat_at REAL, attempt INTEGER NOT NULL DEFAULT 0,
    validation TEXT, error TEXT, report TEXT, deleted_at REAL);
CREATE UNIQUE INDEX IF NOT EXISTS scans_idempotency ON scans(owner, idempotency_key);
CREATE INDEX IF NOT EXISTS scans_owner_created ON scans(owner, created_at);
CREATE INDEX IF NOT EXISTS scans_state ON scans(state);
CREATE TABLE IF NOT EXISTS scan_blobs (scan_id TEXT NOT NULL, sha256 TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS scan_blobs_scan ON scan_blobs(scan_id);
CREATE INDEX IF NOT EXISTS scan_blobs_sha ON scan_blobs(sha256);
CREATE TABLE IF NOT EXISTS stage_durations (scan_id TEXT NOT NULL, stage TEXT NOT NULL, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (name TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
"""
ACTIVE = (ScanState.queued.value, ScanState.running.value)


@dataclass
class ScanRecord:
    id: str
    owner: str
    state: ScanState
    options: str
    uploads: list[dict]
    created_at: float
    stage: str | None = None
    progress: float = 0.0
    idempotency_key: str | None = None
    dispatched_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    heartbeat_at: float | None = None
    attempt: int = 0
    validation: dict | None = None
    error: dict | None = None
    report: str | None = None
    deleted_at: float | None = None

    def upload(self, name: str) -> dict | None:
        return next((u for u in self.uploads if u["field"] == name), None)


class Claim(StrEnum):
    claimed = "claimed"  # this attempt now runs it
    done = "done"  # ended, deleted or gone: nothing to do
    busy = "busy"  # another attempt holds a fresh heartbeat
    exhausted = "exhausted"  # started max_attempts times already; now failed


class Records:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._db().executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout = 30000")
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- scans -------------------------------------------------------------------------------------------------
    def insert(self, record: ScanRecord) -> ScanRecord:
        """Insert a new scan; with an idempotency key already used by this owner, return that scan instead."""
        with self._tx() as db:
            if record.idempotency_key is not None:
                existing = self._get(db, "owner = ? AND idempotency_key = ?", (record.owner, record.idempotency_key))
                if existing is not None:
                    return existing
            db.execute("INSERT INTO scans (id, owner, state, options, uploads, idempotency_key, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (record.id, record.owner, record.state.value, record.options, json.dumps(record.uploads),
                        record.idempotency_key, record.created_at))
            db.executemany("INSERT INTO scan_blobs VALUES (?, ?)", [(record.id, u["sha256"]) for u in record.uploads])
        return record

    def get(self, scan_id: str, owner: str | None = None, deleted: bool = False) -> ScanRecord | None:
        where, args = "id = ?", [scan_id]
        if owner is not None:
            where, args = where + " AND owner = ?", [*args, owner]
        if not deleted:
            where += " AND deleted_at IS NULL"
        return self._get(self._db(), where, tuple(args))

    def find_by_key(self, owner: str, key: str) -> ScanRecord | None:
        return self._get(self._db(), "owner = ? AND idempotency_key = ? AND deleted_at IS NULL", (owner, key))

    def page(self, owner: str | None, limit: int, offset: int) -> tuple[list[ScanRecord], int]:
        where, args = ("deleted_at IS NULL", ()) if owner is None else ("deleted_at IS NULL AND owner = ?", (owner,))
        db = self._db()
        rows = db.execute(f"SELECT * FROM scans WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                          (*args, limit, offset)).fetchall()
        count = db.execute(f"SELECT COUNT(*) FROM scans WHERE {where}", args).fetchone()[0]
        return [_record(r) for r in rows], count

    def _get(self, db: sqlite3.Connection, where: str, args: tuple) -> ScanRecord | None:
        row = db.execute(f"SELECT * FROM scans WHERE {where}", args).fetchone()
        return None if row is None else _record(row)

    def set_validation(self, scan_id: str, result: UploadCheck) -> None:
        self._db().execute("UPDATE scans SET validation = ? WHERE id = ?", (result.model_dump_json(), scan_id))

    def mark_dispatched(self, scan_id: str) -> None:
        self._db().execute("UPDATE scans SET dispatched_at = ? WHERE id = ?", (time.time(), scan_id))

    def claim(self, scan_id: str, lease: float, max_attempts: int) -> tuple[Claim, int]:
        """Take a scan for a new attempt, unless it ended or a live attempt holds it."""
        now = time.time()
        with self._tx() as db:
            rec = self._get(db, "id = ?", (scan_id,))
            if rec is None or rec.deleted_at is not None or rec.state.ended:
                return Claim.done, 0
            if rec.state == ScanState.running and (rec.heartbeat_at or 0) > now - lease:
                return Claim.busy, rec.attempt
            if rec.attempt >= max_attempts:
                error = {"category": ScanFailure.interrupted.value,
                         "message": f"The scan was started {rec.attempt} times and never "
                         "finished: its worker was lost or killed by the hard time limit each time. Retry with "
                         "fewer or smaller data files, or ask the operator to raise BDSCREEN_SCAN_TIME_LIMIT."}
                db.execute("UPDATE scans SET state = ?, error = ?, ended_at = ? WHERE id = ?",
                           (ScanState.failed.value, json.dumps(error), now, scan_id))
                return Claim.exhausted, rec.attempt
            db.execute("UPDATE scans SET state = ?, attempt = attempt + 1, started_at = COALESCE(started_at, ?), "
                       "heartbeat_at = ?, stage = NULL, progress = 0 WHERE id = ?",
                       (ScanState.running.value, now, now, scan_id))
            return Claim.claimed, rec.attempt + 1

    def progress(self, scan_id: str, attempt: int, stage: str | None = None, fraction: float | None = None) -> bool:
        """Record progress (or only a heartbeat); False when this attempt no longer owns the scan (canceled)."""
        cursor = self._db().execute(
            "UPDATE scans SET heartbeat_at = ?, stage = COALESCE(?, stage), progress = COALESCE(?, progress) "
            "WHERE id = ? AND attempt = ? AND state = ? AND deleted_at IS NULL",
            (time.time(), stage, fraction, scan_id, attempt, ScanState.running.value))
        return cursor.rowcount == 1

    def finish(self, scan_id: str, attempt: int, state: ScanState, *, report: str | None = None,
               error: dict | None = None, artifacts: Sequence[str] = (),
               timings: dict[str, float] | None = None) -> bool:
        """End this attempt's scan; False (and nothing written) when it no longer owns it."""
        now = time.time()
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE scans SET state = ?, report = ?, error = ?, ended_at = ?, progress = CASE WHEN ? THEN 1 "
                "ELSE progress END WHERE id = ? AND attempt = ? AND state = ? AND deleted_at IS NULL",
                (state.value, report, None if error is None else json.dumps(error), now,
                 state == ScanState.succeeded, scan_id, attempt, ScanState.running.value))
            if cursor.rowcount != 1:
                return False
            db.executemany("INSERT INTO scan_blobs VALUES (?, ?)", [(scan_id, sha) for sha in artifacts])
            db.executemany("INSERT INTO stage_durations VALUES (?, ?, ?)",
                           [(scan_id, stage, seconds) for stage, seconds in (timings or {}).items()])
        return True

    def delete(self, scan_id: str, hard: bool = False) -> ScanRecord | None:
        """Cancel the scan if it is still going, and release its files; returns the record as it ended."""
        now = time.time()
        with self._tx() as db:
            rec = self._get(db, "id = ? AND deleted_at IS NULL", (scan_id,))
            if rec is None:
                return None
            if not rec.state.ended:
                rec.state, rec.ended_at = ScanState.canceled, now
            db.execute("UPDATE scans SET state = ?, ended_at = ?, deleted_at = ? WHERE id = ?",
                       (rec.state.value, rec.ended_at, now, scan_id))
            db.execute("DELETE FROM scan_blobs WHERE scan_id = ?", (scan_id,))
            if hard:
                db.execute("DELETE FROM scans WHERE id = ?", (scan_id,))
        return rec

    def purge(self, scan_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM scan_blobs WHERE scan_id = ?", (scan_id,))
            db.execute("DELETE FROM scans WHERE id = ?", (scan_id,))

    def ids(self, where: str, args: tuple = ()) -> list[str]:
        return [row[0] for row in self._db().execute(f"SELECT id FROM scans WHERE {where}", args)]

    def is_referenced(self, sha256: str) -> bool:
        return self._db().execute("SELECT 1 FROM scan_blobs WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone() is not None

    # --- metrics -----------------------------------------------------------------------------------------------
    def add(self, counter: str, value: float) -> None:
        self._db().execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                           (counter, value, value))

    def counter(self, name: str) -> float:
        row = self._db().execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0.0 if row is None else row[0]

    def state_counts(self) -> dict[str, int]:
        rows = self._db().execute("SELECT state, COUNT(*) FROM scans WHERE deleted_at IS NULL GROUP BY state")
        return dict(rows.fetchall())

    def stage_histogram(self, buckets: tuple[float, ...]) -> dict[str, tuple[list[int], int, float]]:
        """Per stage: cumulative counts at each bucket bound, total count, total seconds."""
        cases = ", ".join(f"SUM(seconds <= {float(b)!r})" for b in buckets)
        rows = self._db().execute(f"SELECT stage, {cases}, COUNT(*), SUM(seconds) FROM stage_durations GROUP BY stage")
        return {r[0]: (list(r[1:1 + len(buckets)]), r[-2], r[-1]) for r in rows.fetchall()}

    # --- API keys ----------------------------------------------------------------------------------------------
    def add_key(self, name: str, key_hash: str) -> None:
        self._db().execute("INSERT INTO api_keys VALUES (?, ?, ?)", (name, key_hash, time.time()))

    def remove_key(self, name: str) -> bool:
        return self._db().execute("DELETE FROM api_keys WHERE name = ?", (name,)).rowcount == 1

    def key_owner(self, key_hash: str) -> str | None:
        row = self._db().execute("SELECT name FROM api_keys WHERE hash = ?", (key_hash,)).fetchone()
        return None if row is None else row[0]

    def key_names(self) -> list[str]:
        return [row[0] for row in self._db().execute("SELECT name FROM api_keys ORDER BY name")]


def _record(row: sqlite3.Row) -> ScanRecord:
    values = dict(row)
    values["state"] = ScanState(values["state"])
    values["uploads"] = json.loads(values["uploads"])
    for name in ("validation", "error"):
        values[name] = None if values[name] is None else json.loads(values[name])
    return ScanRecord(**values)
