"""Scan records, the source of truth of every scan: SQLite on the storage path, or PostgreSQL when scaled out.

The broker only carries "run scan X" messages; the state, the claim of a worker, its heartbeat, the report
and the files a scan references live here, so a restart of the gateway, of a worker or of the broker loses
no scan (see :mod:`worker.core.reconcile`). A deleted scan stays as a tombstone (``deleted_at``) until the
retention sweep purges it, so a worker still running it, and its webhook, can see that it was canceled.

One implementation for both databases, through SQLAlchemy Core (:mod:`worker.core.store.database` makes the
engine, :mod:`worker.core.store.schema` holds the tables): a write is one transaction that takes the database's
write lock on SQLite (``BEGIN IMMEDIATE``) and locks the scan's row on PostgreSQL (``SELECT ... FOR
UPDATE``), so a claim, a cancel and a finish never interleave on either.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import ColumnElement, and_, bindparam, case, delete, func, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from schemas.api import ScanCreate, ScanState, UploadCheck
from schemas.problems import ScanFailure
from schemas.report import ScanReport
from worker.core.store.database import Database, upsert
from worker.core.store.schema import api_keys, counters, scan_blobs, scans, stage_durations, workers

ACTIVE = (ScanState.queued.value, ScanState.running.value)
#: Heartbeat rows of workers gone this long are deleted by the next heartbeat of any worker.
STALE_WORKER_SECONDS = 3600


@dataclass
class ScanRecord:
    id: str
    owner: str
    state: ScanState
    options: ScanCreate
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
    validation: UploadCheck | None = None
    error: dict | None = None
    report: ScanReport | None = None
    deleted_at: float | None = None

    def upload(self, name: str) -> dict | None:
        return next((u for u in self.uploads if u["field"] == name), None)


class Claim(StrEnum):
    claimed = "claimed"  # this attempt now runs it
    done = "done"  # ended, deleted or gone: nothing to do
    busy = "busy"  # another attempt holds a fresh heartbeat
    exhausted = "exhausted"  # started max_attempts times already; now failed


class Records:
    def __init__(self, database: Database) -> None:
        self.database = database
        self._tx, self._read = database.transaction, database.read

    # --- scans -------------------------------------------------------------------------------------------------
    def insert(self, record: ScanRecord) -> ScanRecord:
        """Insert a new scan; with an idempotency key already used by this owner, return that scan instead."""
        try:
            with self._tx() as db:
                if record.idempotency_key is not None:
                    existing = self._get(db, scans.c.owner == record.owner,
                                         scans.c.idempotency_key == record.idempotency_key)
                    if existing is not None:
                        return existing
                db.execute(scans.insert().values(
                    id=record.id, owner=record.owner, state=record.state.value,
                    options=record.options.model_dump_json(), uploads=json.dumps(record.uploads),
                    idempotency_key=record.idempotency_key, created_at=record.created_at))
                if record.uploads:
                    db.execute(scan_blobs.insert(), [{"scan_id": record.id, "sha256": u["sha256"]}
                                                     for u in record.uploads])
        except IntegrityError:  # PostgreSQL: a concurrent insert with the same key committed first
            with self._read() as db:
                existing = self._get(db, scans.c.owner == record.owner,
                                     scans.c.idempotency_key == record.idempotency_key)
            if existing is None:
                raise
            return existing
        return record

    def get(self, scan_id: str, owner: str | None = None, deleted: bool = False) -> ScanRecord | None:
        # The status read is the hot path: statements built once, so SQLAlchemy's compiled cache serves them.
        query = _BY_ID[(owner is not None, deleted)]
        with self._read() as db:
            row = db.execute(query, {"id": scan_id, "owner": owner}).mappings().first()
        return None if row is None else _record(row)

    def find_by_key(self, owner: str, key: str) -> ScanRecord | None:
        with self._read() as db:
            return self._get(db, scans.c.owner == owner, scans.c.idempotency_key == key, scans.c.deleted_at.is_(None))

    def page(self, owner: str | None, limit: int, offset: int) -> tuple[list[ScanRecord], int]:
        where = scans.c.deleted_at.is_(None) if owner is None else and_(scans.c.deleted_at.is_(None),
                                                                        scans.c.owner == owner)
        with self._read() as db:
            rows = db.execute(select(scans).where(where).order_by(scans.c.created_at.desc(), scans.c.id.desc())
                              .limit(limit).offset(offset)).mappings().all()
            count = db.execute(select(func.count()).select_from(scans).where(where)).scalar_one()
        return [_record(r) for r in rows], count

    @staticmethod
    def _get(db: Connection, *conditions: ColumnElement, lock: bool = False) -> ScanRecord | None:
        query = select(scans).where(*conditions)
        row = db.execute(query.with_for_update() if lock else query).mappings().first()
        return None if row is None else _record(row)

    def set_validation(self, scan_id: str, result: UploadCheck) -> None:
        with self._tx() as db:
            db.execute(update(scans).where(scans.c.id == scan_id).values(validation=result.model_dump_json()))

    def mark_dispatched(self, scan_id: str) -> None:
        with self._tx() as db:
            db.execute(update(scans).where(scans.c.id == scan_id).values(dispatched_at=time.time()))

    def claim(self, scan_id: str, lease: float, max_attempts: int) -> tuple[Claim, int]:
        """Take a scan for a new attempt, unless it ended or a live attempt holds it."""
        now = time.time()
        with self._tx() as db:
            rec = self._get(db, scans.c.id == scan_id, lock=True)
            if rec is None or rec.deleted_at is not None or rec.state.ended:
                return Claim.done, 0
            if rec.state == ScanState.running and (rec.heartbeat_at or 0) > now - lease:
                return Claim.busy, rec.attempt
            if rec.attempt >= max_attempts:
                error = {"category": ScanFailure.interrupted.value,
                         "message": f"The scan was started {rec.attempt} times and never "
                         "finished: its worker was lost or killed by the hard time limit each time. Retry with "
                         "fewer or smaller data files, or ask the operator to raise BDSCREEN_SCAN_TIME_LIMIT."}
                db.execute(update(scans).where(scans.c.id == scan_id).values(
                    state=ScanState.failed.value, error=json.dumps(error), ended_at=now))
                return Claim.exhausted, rec.attempt
            db.execute(update(scans).where(scans.c.id == scan_id).values(
                state=ScanState.running.value, attempt=scans.c.attempt + 1,
                started_at=func.coalesce(scans.c.started_at, now), heartbeat_at=now, stage=None, progress=0))
            return Claim.claimed, rec.attempt + 1

    def _owned(self, scan_id: str, attempt: int) -> ColumnElement:
        return and_(scans.c.id == scan_id, scans.c.attempt == attempt, scans.c.state == ScanState.running.value,
                    scans.c.deleted_at.is_(None))

    def progress(self, scan_id: str, attempt: int, stage: str | None = None, fraction: float | None = None) -> bool:
        """Record progress (or only a heartbeat); False when this attempt no longer owns the scan (canceled)."""
        values: dict[str, float | str] = {"heartbeat_at": time.time()}
        if stage is not None:
            values["stage"] = stage
        if fraction is not None:
            values["progress"] = fraction
        with self._tx() as db:
            return db.execute(update(scans).where(self._owned(scan_id, attempt)).values(**values)).rowcount == 1

    def finish(self, scan_id: str, attempt: int, state: ScanState, *, report: ScanReport | None = None,
               error: dict | None = None, artifacts: Sequence[str] = (),
               timings: dict[str, float] | None = None) -> bool:
        """End this attempt's scan; False (and nothing written) when it no longer owns it."""
        values = {"state": state.value, "report": None if report is None else report.model_dump_json(),
                  "error": None if error is None else json.dumps(error), "ended_at": time.time()}
        if state == ScanState.succeeded:
            values["progress"] = 1.0
        with self._tx() as db:
            if db.execute(update(scans).where(self._owned(scan_id, attempt)).values(**values)).rowcount != 1:
                return False
            if artifacts:
                db.execute(scan_blobs.insert(), [{"scan_id": scan_id, "sha256": sha} for sha in artifacts])
            if timings:
                db.execute(stage_durations.insert(), [{"scan_id": scan_id, "stage": stage, "seconds": seconds}
                                                      for stage, seconds in timings.items()])
        return True

    def delete(self, scan_id: str, hard: bool = False) -> ScanRecord | None:
        """Cancel the scan if it is still going, and release its files; returns the record as it ended."""
        now = time.time()
        with self._tx() as db:
            rec = self._get(db, scans.c.id == scan_id, scans.c.deleted_at.is_(None), lock=True)
            if rec is None:
                return None
            if not rec.state.ended:
                rec.state, rec.ended_at = ScanState.canceled, now
            db.execute(update(scans).where(scans.c.id == scan_id).values(state=rec.state.value, ended_at=rec.ended_at,
                                                                         deleted_at=now))
            db.execute(delete(scan_blobs).where(scan_blobs.c.scan_id == scan_id))
            if hard:
                db.execute(delete(scans).where(scans.c.id == scan_id))
        return rec

    def purge(self, scan_id: str) -> None:
        with self._tx() as db:
            db.execute(delete(scan_blobs).where(scan_blobs.c.scan_id == scan_id))
            db.execute(delete(scans).where(scans.c.id == scan_id))

    def ids(self, *conditions: ColumnElement) -> list[str]:
        """Ids of the scans matching every condition (expressions on :data:`worker.core.store.schema.scans`)."""
        with self._read() as db:
            return list(db.execute(select(scans.c.id).where(*conditions)).scalars())

    def is_referenced(self, sha256: str) -> bool:
        with self._read() as db:
            return db.execute(select(scan_blobs.c.scan_id).where(scan_blobs.c.sha256 == sha256).limit(1)).first() \
                is not None

    # --- metrics -----------------------------------------------------------------------------------------------
    def add(self, counter: str, value: float) -> None:
        with self._tx() as db:
            db.execute(upsert(db, counters, {"name": counter, "value": value}, ["name"],
                              {"value": counters.c.value + value}))

    def counter(self, name: str) -> float:
        with self._read() as db:
            return db.execute(select(counters.c.value).where(counters.c.name == name)).scalar() or 0.0

    def state_counts(self) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute(select(scans.c.state, func.count()).where(scans.c.deleted_at.is_(None))
                              .group_by(scans.c.state))
            return {state: count for state, count in rows}

    def stage_histogram(self, buckets: tuple[float, ...]) -> dict[str, tuple[list[int], int, float]]:
        """Per stage: cumulative counts at each bucket bound, total count, total seconds."""
        seconds = stage_durations.c.seconds
        columns = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in buckets]
        with self._read() as db:
            rows = db.execute(select(stage_durations.c.stage, *columns, func.count(), func.sum(seconds))
                              .group_by(stage_durations.c.stage)).all()
        return {r[0]: ([int(c) for c in r[1:1 + len(buckets)]], int(r[-2]), float(r[-1])) for r in rows}

    # --- worker heartbeats (worker.core.presence) ---------------------------------------------------------------------
    def beat_worker(self, name: str, kinds: list[str], pid: int, host: str) -> None:
        now = time.time()
        row = {"name": name, "queues": ",".join(kinds), "pid": pid, "host": host, "beat_at": now}
        with self._tx() as db:
            db.execute(upsert(db, workers, row, ["name"], {k: v for k, v in row.items() if k != "name"}))
            db.execute(delete(workers).where(workers.c.beat_at < now - STALE_WORKER_SECONDS))

    def remove_worker(self, name: str) -> None:
        with self._tx() as db:
            db.execute(delete(workers).where(workers.c.name == name))

    def live_workers(self, lease: float) -> dict[str, int]:
        """Per queue kind (gpu, cpu): the workers whose heartbeat is younger than ``lease`` seconds."""
        counts: dict[str, int] = {}
        with self._read() as db:
            for queues in db.execute(select(workers.c.queues).where(workers.c.beat_at > time.time() - lease)).scalars():
                for kind in filter(None, queues.split(",")):
                    counts[kind] = counts.get(kind, 0) + 1
        return counts

    # --- API keys ----------------------------------------------------------------------------------------------
    def add_key(self, name: str, key_hash: str) -> None:
        with self._tx() as db:
            db.execute(api_keys.insert().values(name=name, hash=key_hash, created_at=time.time()))

    def remove_key(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute(delete(api_keys).where(api_keys.c.name == name)).rowcount == 1

    def key_owner(self, key_hash: str) -> str | None:
        with self._read() as db:
            return db.execute(select(api_keys.c.name).where(api_keys.c.hash == key_hash)).scalar()

    def key_names(self) -> list[str]:
        with self._read() as db:
            return list(db.execute(select(api_keys.c.name).order_by(api_keys.c.name)).scalars())


def _by_id(with_owner: bool, deleted: bool):
    conditions = [scans.c.id == bindparam("id")]
    if with_owner:
        conditions.append(scans.c.owner == bindparam("owner"))
    if not deleted:
        conditions.append(scans.c.deleted_at.is_(None))
    return select(scans).where(*conditions)


_BY_ID = {(owner, deleted): _by_id(owner, deleted) for owner in (False, True) for deleted in (False, True)}


def _record(row: RowMapping) -> ScanRecord:
    values = dict(row)
    values["state"] = ScanState(values["state"])
    values["options"] = ScanCreate.model_validate_json(values["options"])
    values["uploads"] = json.loads(values["uploads"])
    values["report"] = None if values["report"] is None else ScanReport.model_validate_json(values["report"])
    check = values["validation"]
    values["validation"] = None if check is None else UploadCheck.model_validate_json(check)
    values["error"] = None if values["error"] is None else json.loads(values["error"])
    return ScanRecord(**values)
