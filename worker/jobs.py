"""What the Celery tasks do, as plain functions of a scan id (the tasks in :mod:`worker.tasks` only wrap them).

Every function loads what it needs from the store and is idempotent: running it again for the same scan,
as a redelivered or duplicated message does, changes nothing once the scan has ended. A scan attempt
claims the record (:meth:`Records.claim`), proves it is alive with a heartbeat, checks at every progress
report that it still owns the scan (a ``DELETE`` cancels it there), works in its own folder and commits
artifacts and report together at the end, so a crash at any point leaves either nothing or the whole result.
"""

import shutil
import threading
from pathlib import Path

from schemas.api import ScanError, ScanState, UploadCheck
from schemas.problems import ErrorCategory, FailureCategory, ScanFailure
from worker.core.errors import InputError
from worker.core.settings import Settings
from worker.core.store import Store
from worker.core.store.records import Claim, ScanRecord


class ScanCanceled(Exception):
    """The scan was deleted (or taken over) while this attempt ran it."""


class ScanBusy(Exception):
    """Another attempt holds a fresh heartbeat on this scan; try again after the lease."""


def scan_inputs(store: Store, record: ScanRecord):
    from worker.engine.stages import ScanInputs

    paths = {name: store.input_path(record, name) for name in ("architecture", "clean_data", "eval_data",
                                                               "poisoned_data")}
    model_name = (record.upload("model") or {}).get("filename")
    return ScanInputs(model=store.input_path(record, "model"), model_name=model_name, **paths)


def check_inputs(store: Store, record: ScanRecord) -> dict[str, str]:
    """Read the model and run the preflight checks (:mod:`worker.engine.preflight`); raises InputError.

    Returns the requested detectors that cannot judge the model, with the reason."""
    from worker.engine.formats import read_model
    from worker.engine.preflight import preflight

    inputs = scan_inputs(store, record)
    model = read_model(inputs.model, inputs.architecture)
    return preflight(model, inputs, record.options).not_applicable


def _upload_check(record: ScanRecord | None) -> UploadCheck | None:
    return None if record is None or record.validation is None else UploadCheck.model_validate(record.validation)


def validate_scan(store: Store, scan_id: str, max_attempts: int = 3) -> None:
    """The upload check on the cpu queue; its outcome goes to the record, where the gateway waits for it.

    Each start is counted in the record before the check runs. A check that kills its worker (an unforeseen
    memory bomb) leaves the count behind, and its message comes back (acks_late): after ``max_attempts``
    starts the upload is refused with the reason instead of being checked again, so a poison message cannot
    take down every worker in turn."""
    record = store.records.get(scan_id)
    earlier = _upload_check(record)
    if record is None or (earlier is not None and earlier.finished):
        return
    attempts = (earlier.attempts if earlier else 0) + 1
    if attempts > max_attempts:
        store.records.set_validation(scan_id, UploadCheck(ok=False, category=ErrorCategory.too_large, message=(
            f"The upload check was started {attempts - 1} times and its worker died each time, most likely out "
            "of memory: the model or data needs more than a worker has. Send smaller files."), attempts=attempts - 1))
        return
    store.records.set_validation(scan_id, UploadCheck(attempts=attempts))
    try:
        not_applicable = check_inputs(store, record)
    except InputError as exc:
        store.records.set_validation(scan_id, UploadCheck(ok=False, category=exc.category, message=exc.message,
                                                           attempts=attempts))
        return
    except MemoryError:
        store.records.set_validation(scan_id, UploadCheck(ok=False, category=ErrorCategory.too_large, message=(
            "Checking the upload needed more memory than this worker may use (its address-space limit, "
            "BDSCREEN_WORKER_ADDRESS_SPACE_MB); send smaller files."), attempts=attempts))
        return
    store.records.set_validation(scan_id, UploadCheck(ok=True, attempts=attempts, not_applicable=not_applicable))


class Heartbeat:
    """Refreshes the claim every ``interval`` seconds in a thread while the engine runs."""

    def __init__(self, store: Store, scan_id: str, attempt: int, interval: float) -> None:
        self.store, self.scan_id, self.attempt, self.interval = store, scan_id, attempt, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{scan_id}")

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            if not self.store.records.progress(self.scan_id, self.attempt):
                return

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.thread.join()


def execute_scan(store: Store, settings: Settings, scan_id: str, device=None) -> ScanState | None:
    """Run one attempt of a scan; returns how it ended, or None when there was nothing to do."""
    claim, attempt = store.records.claim(scan_id, settings.lease_seconds, settings.max_attempts)
    if claim == Claim.busy:
        raise ScanBusy(scan_id)
    if claim != Claim.claimed:
        return ScanState.failed if claim == Claim.exhausted else None
    record = store.records.get(scan_id)
    if record is None:  # deleted right after the claim
        return None
    check = _upload_check(record)
    if check is not None and check.ok is False:
        # The upload check refused it after the gateway had stopped waiting and queued it: no need to run it.
        return _fail(store, scan_id, attempt, check.category or ErrorCategory.bad_option,
                     check.message or "the upload check refused the input")
    work = store.work_dir(scan_id, attempt)
    shutil.rmtree(work, ignore_errors=True)

    def progress(stage: str, fraction: float) -> None:
        if not store.records.progress(scan_id, attempt, stage, fraction):
            raise ScanCanceled(scan_id)

    try:
        with Heartbeat(store, scan_id, attempt, settings.heartbeat_seconds):
            return _run_and_commit(store, record, attempt, work, progress, device)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_and_commit(store: Store, record: ScanRecord, attempt: int, work: Path, progress, device) -> ScanState | None:
    from celery.exceptions import SoftTimeLimitExceeded

    from worker.engine.scan import run_scan

    options = record.options
    try:
        report = run_scan(scan_inputs(store, record), options, work, progress, device=device)
    except ScanCanceled:
        return None
    except InputError as exc:
        return _fail(store, record.id, attempt, exc.category, exc.message)
    except MemoryError:
        return _fail(store, record.id, attempt, ErrorCategory.too_large, "The scan needed more memory than "
                     "this worker may use (BDSCREEN_WORKER_ADDRESS_SPACE_MB); send fewer or smaller data files.")
    except SoftTimeLimitExceeded:
        return _fail(store, record.id, attempt, ScanFailure.time_limit, "The scan ran past its time limit "
                     "(BDSCREEN_SCAN_TIME_LIMIT). Send fewer clean samples or fewer thresholds, or skip fine-tuning.")
    except Exception as exc:  # noqa: BLE001 - recorded as the scan's failure; the worker goes on
        return _fail(store, record.id, attempt, ScanFailure.internal,
                     f"The engine failed: {type(exc).__name__}: {exc}. This is a bug in bdscreen; please report it "
                     "with the model's 'bdscreen inspect' output.")
    with store.blobs.lock():
        digests = [store.blobs.put_file(work / artifact.name)[0] for artifact in report.artifacts]
        ended = store.records.finish(record.id, attempt, ScanState.succeeded, report=report,
                                     artifacts=digests, timings=report.timings)
    if not ended:  # canceled between the last progress report and now
        store.release(digests)
        return None
    return ScanState.succeeded


def _fail(store: Store, scan_id: str, attempt: int, category: FailureCategory, message: str) -> ScanState | None:
    error = ScanError(category=category, message=message).model_dump(mode="json")
    ended = store.records.finish(scan_id, attempt, ScanState.failed, error=error)
    return ScanState.failed if ended else None
