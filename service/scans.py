"""Admitting an upload as a scan, and showing a scan record as the public ``ScanPublic``.

Admission is the cheap, torch-free part of checking an upload, done in the gateway: the ``model`` field
is present, ``options`` is valid JSON for :class:`~schemas.api.ScanCreate`, and the model file is one of
the formats bdscreen reads (:func:`worker.core.sniff.sniff_model_file` refuses pickles, zips and unknown
files from their first bytes). Then the files are committed to the blob store and the record inserted,
under the store's lock. What needs torch (reading the model, checking the data against its signature)
runs next on the cpu queue (``bdscreen.validate``).
"""

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from schemas.api import ScanCreate, ScanError, ScanPublic, ScanState, UploadedFile
from service.errors import BadRequest, IdempotencyKeyReused
from service.options import api_message, effective_options, parse_options
from service.uploads import ReceivedUpload
from worker.core.errors import OptionError
from worker.core.settings import Settings
from worker.core.sniff import sniff_model_file
from worker.core.store import ScanRecord, Store
from worker.core.webhooks import check_callback_url


def replay(earlier: ScanRecord, upload: ReceivedUpload) -> ScanRecord:
    """The earlier scan of a retried POST; refuses a different request sent with the same Idempotency-Key."""
    upload.discard()
    try:
        options = effective_options(parse_options(upload.options), set(upload.files))
    except OptionError:
        options = None
    if not _same_request(earlier, {name: writer.sha256 for name, writer in upload.files.items()}, options):
        raise IdempotencyKeyReused(f"the Idempotency-Key was already used for scan {earlier.id} with other files or "
                                   "options; use a new key for a new request.")
    return earlier


def _same_request(record: ScanRecord, files: dict[str, str], options: ScanCreate | None) -> bool:
    return files == {u["field"]: u["sha256"] for u in record.uploads} and options == record.options


def admit(store: Store, upload: ReceivedUpload, owner: str, idempotency_key: str | None,
          settings: Settings) -> tuple[ScanRecord, bool]:
    """Check, commit and record an upload; returns (the scan, True) or (the earlier one with the same key, False)."""
    try:
        if "model" not in upload.files:
            raise BadRequest("the 'model' file is missing: send it as a multipart file field named 'model'.")
        requested = parse_options(upload.options)
        model = upload.files["model"]
        model.file.flush()
        sniff_model_file(model.path)  # first: a refused model is the answer, whatever the options ask
        options = effective_options(requested, set(upload.files))
        if options.callback_url is not None:
            check_callback_url(str(options.callback_url), settings)
    except BaseException:
        upload.discard()
        raise
    with store.blobs.lock():
        uploads: list[dict[str, Any]] = [{"field": name, "filename": upload.filenames.get(name), "bytes": writer.size,
                    "sha256": store.blobs.commit(writer)} for name, writer in upload.files.items()]
        record = ScanRecord(id=uuid.uuid4().hex, owner=owner, state=ScanState.queued,
                            options=options, uploads=uploads, created_at=time.time(),
                            idempotency_key=idempotency_key)
        stored = store.records.insert(record)
    store.records.add("upload_bytes", upload.bytes)
    if stored.id != record.id:  # a concurrent POST with the same key won
        store.release(u["sha256"] for u in uploads)
        if not _same_request(stored, {u["field"]: u["sha256"] for u in uploads}, record.options):
            raise IdempotencyKeyReused(f"the Idempotency-Key was just used for scan {stored.id} with other files "
                                       "or options; use a new key for a new request.")
    return stored, stored.id == record.id


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def public_scan(record: ScanRecord, with_report: bool = True) -> ScanPublic:
    report = record.report
    now = time.time()
    timings = {"queued": round((record.started_at or record.ended_at or now) - record.created_at, 3)}
    if record.started_at is not None:
        timings["running"] = round((record.ended_at or now) - record.started_at, 3)
    if report is not None:
        timings.update(report.timings)
    return ScanPublic(
        id=record.id, state=record.state, stage=record.stage, progress=min(max(record.progress, 0.0), 1.0),
        created_at=_time(record.created_at), started_at=_time(record.started_at), ended_at=_time(record.ended_at),
        timings=timings, attempts=record.attempt, uploads=[UploadedFile(**u) for u in record.uploads],
        verdict=report.verdict if report else None, score=report.score if report else None,
        error=ScanError(category=record.error["category"], message=api_message(record.error["message"], record.uploads))
        if record.error else None, options=record.options, report=report if with_report else None)
