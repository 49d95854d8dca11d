"""``/v1/scans``: upload a model to scan, follow it, list, cancel and delete scans."""

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from kombu.exceptions import OperationalError

from schemas.api import UPLOAD_FIELDS, Problem, ScanPublic, ScansPublic
from schemas.problems import ErrorCategory
from service.api.deps import CallerDep, DispatcherDep, ScanDep, SettingsDep, StoreDep
from service.api.routes.health import no_worker_message
from service.errors import NotReady
from service.options import api_message, parse_options
from service.scans import admit, public_scan, replay
from service.uploads import receive_upload
from worker.core.errors import InputError, refuse_inapplicable
from worker.core.settings import AuthMode
from worker.core.webhooks import callback_url

#: Largest paging offset: SQLite integers are 64-bit, and no deployment holds a billion scans per key.
MAX_OFFSET = 1_000_000_000

router = APIRouter(prefix="/v1/scans", tags=["scans"])

PROBLEMS: dict[int | str, dict[str, Any]] = {status: {"model": Problem, "content": {"application/problem+json": {}}}
            for status in (400, 401, 404, 413, 415, 422, 503)}
_FILE = {"type": "string", "format": "binary"}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["model"],
    "properties": {
        **{name: {**_FILE, "description": desc} for name, desc in zip(UPLOAD_FIELDS, (
            "The model: Keras HDF5 (.h5) or ONNX. Pickles are refused.",
            "Keras model JSON (model.to_json()) for a weights-only .h5 file.",
            "Clean labelled data (HDF5 data/label or NPZ x/y, raw values); enables repair.",
            "Separate clean data for the reported figures.",
            "Triggered inputs with their poisoned labels, to report attack success."), strict=True)},
        "options": {"type": "string", "contentMediaType": "application/json",
                    "description": "ScanCreate as JSON: preprocessing, detectors, repair, goodnet, callback_url."},
    }}}}}}


@router.post("", status_code=202, response_model=ScanPublic, responses=PROBLEMS, openapi_extra=UPLOAD_BODY,
             summary="Upload a model (and data) to scan")
async def create_scan(request: Request, response: Response, caller: CallerDep, store: StoreDep,
                      settings: SettingsDep, dispatcher: DispatcherDep,
                      idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> ScanPublic:
    """Streams the upload to storage, checks it, queues the scan and answers 202 with its id and Location.

    A retried POST with the same ``Idempotency-Key`` (per API key) and the same files and options returns the
    first scan; the same key with anything else is refused (422)."""
    # Before the body is read: without a cpu worker the upload cannot be checked, without a gpu worker never run.
    missing = await to_thread.run_sync(dispatcher.missing_workers)
    if missing:
        raise NotReady(no_worker_message(missing) + " Retry in a minute.", headers={"Retry-After": "30"})
    upload = await receive_upload(request, store.blobs, settings.max_upload_bytes)
    if idempotency_key:
        earlier = await to_thread.run_sync(store.records.find_by_key, caller, idempotency_key)
        if earlier is not None:
            return _accepted(response, replay(earlier, upload), replayed=True)
    record, created = await to_thread.run_sync(admit, store, upload, caller, idempotency_key, settings)
    if not created:
        return _accepted(response, record, replayed=True)
    try:
        await to_thread.run_sync(dispatcher.send, "bdscreen.validate", record.id)
        outcome = await dispatcher.wait_for_validation(record.id)
        if outcome is None:  # never accept an unchecked upload: it would fail later, or never run
            await to_thread.run_sync(store.delete_scan, record.id, True)
            raise NotReady(f"the upload check did not finish within BDSCREEN_VALIDATE_TIMEOUT "
                           f"({settings.validate_timeout:g} s): the cpu workers are busy or gone. Retry in a minute.",
                           headers={"Retry-After": "30"})
        if not outcome.ok:
            await to_thread.run_sync(store.delete_scan, record.id, True)
            refusal = InputError(api_message(outcome.message or "the upload check refused the input", record.uploads))
            refusal.category = outcome.category or ErrorCategory.bad_option
            raise refusal
        if outcome.not_applicable and "detectors" in parse_options(upload.options).model_fields_set:
            await to_thread.run_sync(store.delete_scan, record.id, True)  # named detectors that cannot run
            refuse_inapplicable(outcome.not_applicable, field="options.detectors")
        await to_thread.run_sync(dispatcher.send_scan, record.id)
    except OperationalError as exc:
        await to_thread.run_sync(store.delete_scan, record.id, True)
        raise NotReady(f"the task queue is unreachable ({exc}); retry in a minute.") from None
    return _accepted(response, record, replayed=False)  # as accepted: queued (a worker may have it already)


def _accepted(response: Response, record, replayed: bool) -> ScanPublic:
    response.headers["Location"] = f"/v1/scans/{record.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return public_scan(record)


@router.get("", response_model=ScansPublic, responses=PROBLEMS, summary="List your scans, newest first")
def list_scans(caller: CallerDep, store: StoreDep, settings: SettingsDep,
               limit: Annotated[int, Query(ge=1, le=100)] = 20,
               offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> ScansPublic:
    owner = None if settings.auth == AuthMode.open else caller
    records, count = store.records.page(owner, limit, offset)
    return ScansPublic(data=[public_scan(r, with_report=False) for r in records], count=count)


@router.get("/{scan_id}", response_model=ScanPublic, responses=PROBLEMS, summary="State, progress and report")
async def read_scan(scan: ScanDep) -> ScanPublic:
    return public_scan(scan)


@router.delete("/{scan_id}", response_model=ScanPublic, responses=PROBLEMS,
               summary="Cancel a scan if it is still going, then delete its files")
def delete_scan(scan: ScanDep, store: StoreDep, dispatcher: DispatcherDep) -> ScanPublic:
    """Answers the scan as it ended (``canceled`` if it was queued or running); afterwards it is a 404."""
    ended = store.delete_scan(scan.id)
    if ended is None:
        return public_scan(scan)
    if not scan.state.ended and callback_url(ended) is not None:
        dispatcher.send("bdscreen.notify", scan.id)
    return public_scan(ended, with_report=False)
