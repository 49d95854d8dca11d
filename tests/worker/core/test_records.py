"""The record store on both databases: SQLite on the storage path and the real PostgreSQL on 127.0.0.1:5432.

The same semantics on each: an idempotency key returns the first scan (also when two inserts race), a claim
is exclusive and counts attempts, progress and finish only for the owning attempt, cancel, reconcile
queries, retention, counters, keys and worker heartbeats; and the options and report come back typed.
"""

import threading
import time
import uuid

import pytest
from databases import postgres_database
from sqlalchemy import update

from schemas.api import ScanCreate, ScanState
from schemas.models import ModelSignature
from schemas.report import ScanReport
from worker.core.store import open_store
from worker.core.store.records import Claim, ScanRecord
from worker.core.store.schema import MIGRATIONS, scans


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield open_store(tmp_path / "storage")
        assert (tmp_path / "storage/scans.db").is_file()
        return
    with postgres_database() as url:
        store = open_store(tmp_path / "storage", url)
        yield store
        store.records.database.dispose()
        open_store.cache_clear()
    assert not (tmp_path / "storage/scans.db").exists()  # with PostgreSQL no SQLite file is made


def new_record(key: str | None = None, sha: str = "ab" * 32, **options) -> ScanRecord:
    return ScanRecord(id=uuid.uuid4().hex, owner="alice", state=ScanState.queued,
                      options=ScanCreate.model_validate(options), created_at=time.time(), idempotency_key=key,
                      uploads=[{"field": "model", "filename": "m.h5", "bytes": 3, "sha256": sha}])


def test_migrations_are_recorded_once(store):
    from worker.core.store.database import Database
    from worker.core.store.schema import current_version

    again = Database(store.records.database.url)  # a second process starting on the same database
    with again.read() as db:
        assert current_version(db) == MIGRATIONS[-1][0]
    again.dispose()


def test_options_and_report_come_back_typed(store):
    record = store.records.insert(new_record(preprocessing={"divide_by": 255}, goodnet=False))
    got = store.records.get(record.id)
    assert isinstance(got.options, ScanCreate) and got.options.preprocessing.divide_by == 255
    assert got.options.goodnet is False and got.uploads[0]["filename"] == "m.h5"
    assert store.records.claim(record.id, 5, 3) == (Claim.claimed, 1)
    report = _minimal_report()
    assert store.records.finish(record.id, 1, ScanState.succeeded, report=report, artifacts=["cd" * 32],
                                timings={"load": 0.5})
    ended = store.records.get(record.id)
    assert isinstance(ended.report, ScanReport) and ended.progress == 1.0 and ended.state == ScanState.succeeded
    assert store.records.is_referenced("cd" * 32)
    assert store.records.stage_histogram((0.1, 1.0))["load"] == ([0, 1], 1, 0.5)


def test_an_idempotency_key_returns_the_first_scan_even_when_inserts_race(store):
    first = store.records.insert(new_record("k1"))
    assert store.records.insert(new_record("k1")).id == first.id
    results = []
    barrier = threading.Barrier(4)

    def insert() -> None:
        barrier.wait()
        results.append(store.records.insert(new_record("k2")).id)

    threads = [threading.Thread(target=insert) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and store.records.find_by_key("alice", "k2").id == results[0]
    assert store.records.page("alice", 10, 0)[1] == 2


def test_claims_are_exclusive_and_only_the_owner_may_progress_and_finish(store):
    record = store.records.insert(new_record())
    outcomes = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        outcomes.append(store.records.claim(record.id, lease=60, max_attempts=3)[0])

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == sorted([Claim.claimed] + [Claim.busy] * 3)
    assert store.records.progress(record.id, 1, "sweep", 0.5)
    assert not store.records.progress(record.id, 2, "sweep", 0.6)  # not its attempt
    assert store.records.claim(record.id, lease=0, max_attempts=3) == (Claim.claimed, 2)  # heartbeat expired
    assert not store.records.finish(record.id, 1, ScanState.failed, error={"category": "x", "message": "y"})
    assert store.records.claim(record.id, lease=0, max_attempts=2)[0] == Claim.exhausted
    assert store.records.get(record.id).error["category"] == "interrupted"


def test_cancel_stops_the_attempt_and_retention_purges(store):
    record = store.records.insert(new_record())
    store.records.claim(record.id, 60, 3)
    ended = store.delete_scan(record.id)
    assert ended.state == ScanState.canceled and store.records.get(record.id) is None
    assert store.records.get(record.id, deleted=True).deleted_at is not None
    assert not store.records.progress(record.id, 1) and not store.records.is_referenced("ab" * 32)
    with store.records.database.transaction() as db:
        db.execute(update(scans).where(scans.c.id == record.id).values(deleted_at=time.time() - 9 * 86400))
    old = store.records.insert(new_record(sha="ef" * 32))
    store.records.claim(old.id, 60, 3)
    store.records.finish(old.id, 1, ScanState.failed, error={"category": "x", "message": "y"})
    with store.records.database.transaction() as db:
        db.execute(update(scans).where(scans.c.id == old.id).values(ended_at=time.time() - 8 * 86400))
    assert store.expire(retention_days=7) == 1
    assert store.records.get(record.id, deleted=True) is None  # the old tombstone purged
    assert store.records.get(old.id, deleted=True).deleted_at is not None


def test_counters_keys_and_worker_heartbeats(store):
    store.records.add("upload_bytes", 10)
    store.records.add("upload_bytes", 5)
    assert store.records.counter("upload_bytes") == 15 and store.records.counter("nothing") == 0
    store.records.add_key("team-a", "11" * 32)
    assert store.records.key_owner("11" * 32) == "team-a" and store.records.key_names() == ["team-a"]
    assert store.records.remove_key("team-a") and not store.records.remove_key("team-a")
    store.records.beat_worker("gpu-1@h", ["gpu"], 1, "h")
    store.records.beat_worker("cpu-2@h", ["cpu"], 2, "h")
    store.records.beat_worker("gpu-1@h", ["gpu"], 1, "h")  # a refresh, not a second worker
    assert store.records.live_workers(lease=5) == {"gpu": 1, "cpu": 1}
    store.records.remove_worker("cpu-2@h")
    time.sleep(0.05)
    assert store.records.live_workers(lease=5) == {"gpu": 1} and store.records.live_workers(lease=0.01) == {}


def _minimal_report() -> ScanReport:
    signature = ModelSignature(format="onnx", input_name="x", input_shape=[28, 28, 1], input_layout="NHWC",
                               num_classes=10, layers=[])
    return ScanReport(bdscreen_version="0", model=signature, verdict="clean", score=0.1)
