"""The work behind the Celery tasks, in-process on a real store: claims, idempotency, cancel, reconcile, retention."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from schemas.api import ScanCreate, ScanState
from worker.core.reconcile import lost_scans
from worker.core.settings import Settings
from worker.core.store import ScanRecord, open_store
from worker.core.store.records import Claim
from worker.core.store.schema import scans
from worker.jobs import ScanBusy, execute_scan, validate_scan

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path):
    return open_store(tmp_path / "storage")


@pytest.fixture
def settings(tmp_path):
    return Settings(storage=tmp_path / "storage", heartbeat_seconds=0.5, max_attempts=2, validate_timeout=1)


def add_scan(store, model: Path, options: str = '{"detectors": []}', **files: Path) -> ScanRecord:
    uploads = []
    with store.blobs.lock():
        for name, path in {"model": model, **files}.items():
            writer = store.blobs.writer()
            writer.write(path.read_bytes())
            uploads.append({"field": name, "filename": path.name, "bytes": writer.size,
                            "sha256": store.blobs.commit(writer)})
        record = ScanRecord(id=f"scan{time.monotonic_ns()}", owner="t", state=ScanState.queued,
                            options=ScanCreate.model_validate_json(options),
                            uploads=uploads, created_at=time.time())
        return store.records.insert(record)


@pytest.fixture(scope="module")
def mnist(fixtures) -> Path:
    return fixtures / "mnist/csaw_c_clean_label_bd_net.h5"


def test_a_scan_runs_once_and_a_redelivered_message_changes_nothing(store, settings, mnist):
    record = add_scan(store, mnist)
    assert execute_scan(store, settings, record.id) == ScanState.succeeded
    done = store.records.get(record.id)
    assert execute_scan(store, settings, record.id) is None
    again = store.records.get(record.id)
    assert done.state == again.state == ScanState.succeeded and again.attempt == 1 and again.report == done.report
    assert not list(store.work.iterdir())


def test_a_live_attempt_keeps_its_scan_and_a_stale_one_loses_it(store, settings, mnist):
    record = add_scan(store, mnist)
    assert store.records.claim(record.id, settings.lease_seconds, 5) == (Claim.claimed, 1)
    with pytest.raises(ScanBusy):
        execute_scan(store, settings, record.id)
    assert store.records.claim(record.id, lease=0, max_attempts=5) == (Claim.claimed, 2)
    assert not store.records.progress(record.id, 1, "load", 0.0)  # the first attempt no longer owns it


def test_a_scan_interrupted_max_attempts_times_fails_saying_why(store, settings, mnist):
    record = add_scan(store, mnist)
    for _ in range(settings.max_attempts):
        store.records.claim(record.id, lease=0, max_attempts=settings.max_attempts)
    assert store.records.claim(record.id, lease=0, max_attempts=settings.max_attempts)[0] == Claim.exhausted
    failed = store.records.get(record.id)
    assert failed.state == ScanState.failed and failed.error["category"] == "interrupted"


def test_a_deleted_scan_is_not_run_and_its_files_are_gone(store, settings, mnist):
    record = add_scan(store, mnist)
    store.delete_scan(record.id)
    assert execute_scan(store, settings, record.id) is None
    assert not store.blobs.exists(record.uploads[0]["sha256"])
    assert store.records.get(record.id) is None and store.records.get(record.id, deleted=True).state == "canceled"


def test_bad_input_fails_the_scan_with_its_category(store, settings, mnist, tmp_path):
    import numpy as np

    np.savez(tmp_path / "faces.npz", x=np.zeros((20, 55, 47, 3), np.uint8), y=np.zeros(20, np.int64))
    record = add_scan(store, mnist, clean_data=tmp_path / "faces.npz")
    validate_scan(store, record.id)
    assert store.records.get(record.id).validation.category == "bad-data"
    assert execute_scan(store, settings, record.id) == ScanState.failed
    assert store.records.get(record.id).error["category"] == "bad-data"


def test_reconcile_finds_stale_undispatched_and_lost_scans(store, settings, mnist):
    stale, undispatched, waiting = (add_scan(store, mnist) for _ in range(3))
    store.records.claim(stale.id, settings.lease_seconds, 5)
    store.records.mark_dispatched(waiting.id)
    old = time.time() - 3600
    with store.records.database.transaction() as db:
        db.execute(update(scans).where(scans.c.id == stale.id).values(heartbeat_at=old))
        db.execute(update(scans).where(scans.c.id != stale.id).values(created_at=old))
        db.execute(update(scans).where(scans.c.id == waiting.id).values(dispatched_at=old))
    assert lost_scans(store, settings, lambda: 1) == [stale.id, undispatched.id]
    assert sorted(lost_scans(store, settings, lambda: 0)) == sorted([stale.id, undispatched.id, waiting.id])


def test_retention_deletes_old_scans_but_not_files_a_newer_scan_shares(store, settings, mnist):
    old, new = add_scan(store, mnist), add_scan(store, mnist)
    for record in (old, new):
        execute_scan(store, settings, record.id)
    with store.records.database.transaction() as db:
        db.execute(update(scans).where(scans.c.id == old.id).values(ended_at=time.time() - 8 * 86400))
    assert store.expire(retention_days=7) == 1
    assert store.records.get(old.id) is None and store.records.get(new.id) is not None
    assert store.blobs.exists(new.uploads[0]["sha256"])


def test_settings_refuse_open_mode_on_a_public_address(tmp_path):
    with pytest.raises(ValueError, match="BDSCREEN_AUTH=keys"):
        Settings(storage=tmp_path, host="0.0.0.0", auth="open")
    assert Settings(storage=tmp_path, host="0.0.0.0").auth == "keys"
    assert Settings(storage=tmp_path).auth == "open"


def test_celery_app_routes_queues_and_acks_late(tmp_path):
    code = ("import json; from worker.core.celery_app import app; c = app.conf; "
            "print(json.dumps({'routes': c.task_routes,"
            " 'acks_late': c.task_acks_late, 'lost': c.task_reject_on_worker_lost, "
            "'prefetch': c.worker_prefetch_multiplier, 'prefix': c.broker_transport_options.get('global_keyprefix')}))")
    env = {"BDSCREEN_STORAGE": str(tmp_path), "BDSCREEN_BROKER": "redis://127.0.0.1:6379/0",
           "BDSCREEN_QUEUE_PREFIX": "team-a", "PATH": "/usr/bin:/bin"}
    conf = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                                     text=True, check=True).stdout)
    assert conf["routes"] == {"bdscreen.scan": {"queue": "team-a.gpu"}, "bdscreen.validate": {"queue": "team-a.cpu"},
                              "bdscreen.notify": {"queue": "team-a.cpu"}}
    assert conf["acks_late"] and conf["lost"] and conf["prefetch"] == 1 and conf["prefix"] == "team-a:"
