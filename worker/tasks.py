"""The Celery tasks: thin, idempotent, each taking a scan id (the work is in :mod:`worker.jobs`).

- ``bdscreen.validate`` (cpu queue): read the model and a few data rows; the gateway waits for it.
- ``bdscreen.scan`` (gpu queue): one attempt at a scan, on the device of this pool process.
- ``bdscreen.notify`` (cpu queue): the webhook, retried with exponential backoff.
"""

from billiard.process import current_process
from celery.signals import worker_init, worker_process_init

from worker.core.celery_app import app
from worker.core.limits import limit_address_space
from worker.core.settings import get_settings
from worker.core.store import Store, store_for
from worker.core.webhooks import WebhookError, callback_url, deliver, webhook_secret
from worker.jobs import ScanBusy, execute_scan, validate_scan

_settings = get_settings()


def _store() -> Store:
    return store_for(get_settings())


@worker_init.connect
def _make_storage(**_kwargs) -> None:
    _store()  # makes the storage folders, the embedded broker's among them


@worker_process_init.connect
def _preload(**_kwargs) -> None:
    """Import the engine, its readers and torch in each pool process as it starts, before it takes a task.

    Not in the parent: torch and onnxruntime start native threads on import, and a process forked from a
    threaded parent can deadlock (the likely cause of a cpu worker that once stopped taking tasks here when the
    parent preloaded them). Importing after the
    fork also leaves CUDA untouched until a pool process picks its GPU.

    First the address-space limit: past it an allocation raises MemoryError, which fails the scan (or the upload
    check) with a reason, where an unforeseen bomb would otherwise take the machine's memory or the worker."""
    limit_address_space(get_settings().worker_address_space_mb)
    import worker.engine.data  # noqa: F401
    import worker.engine.formats.keras_h5  # noqa: F401
    import worker.engine.formats.onnx_reader  # noqa: F401
    import worker.engine.repair.pipeline  # noqa: F401
    import worker.engine.scan  # noqa: F401


def pool_device():
    """``cuda:<pool process index>`` modulo the GPUs when there are GPUs, else None (the engine's CPU default).

    Run ``bdscreen worker -Q gpu`` with one pool process per GPU (its default): each process keeps one GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = getattr(current_process(), "index", 0) or 0
    return torch.device(f"cuda:{index % torch.cuda.device_count()}")


@app.task(name="bdscreen.validate", soft_time_limit=max(_settings.validate_timeout, 10),
          time_limit=max(_settings.validate_timeout, 10) + 10)
def validate(scan_id: str) -> None:
    validate_scan(_store(), scan_id, get_settings().max_attempts)


@app.task(name="bdscreen.scan", bind=True, max_retries=None, soft_time_limit=_settings.scan_time_limit,
          time_limit=_settings.scan_time_limit + 60)
def scan(self, scan_id: str) -> None:
    settings = get_settings()
    try:
        ended = execute_scan(_store(), settings, scan_id, pool_device())
    except ScanBusy as exc:
        raise self.retry(exc=exc, countdown=settings.lease_seconds) from None
    if ended is not None:
        notify_if_wanted(_store(), scan_id)


def notify_if_wanted(store: Store, scan_id: str) -> None:
    record = store.records.get(scan_id, deleted=True)
    if record is not None and callback_url(record) is not None:
        notify.delay(scan_id)


@app.task(name="bdscreen.notify", autoretry_for=(WebhookError,), retry_backoff=1, retry_backoff_max=600,
          retry_jitter=False, max_retries=_settings.webhook_retries)
def notify(scan_id: str) -> int | None:
    record = _store().records.get(scan_id, deleted=True)
    if record is None or not record.state.ended or callback_url(record) is None:
        return None
    settings = get_settings()
    return deliver(callback_url(record), record, webhook_secret(settings), settings)
