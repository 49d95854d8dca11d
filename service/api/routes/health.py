"""``/healthz`` (the process answers) and ``/readyz`` (broker and storage reachable, a live worker per queue)."""

import tempfile

from fastapi import APIRouter

from service.api.deps import DispatcherDep, StoreDep
from service.errors import NotReady

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: broker and storage reachable, a live worker on each queue")
def readyz(store: StoreDep, dispatcher: DispatcherDep) -> dict[str, str]:
    broker_ok, broker = dispatcher.broker_reachable()
    try:
        store.records.counter("upload_bytes")
        with tempfile.NamedTemporaryFile(dir=store.blobs.tmp, prefix="readyz-"):
            pass
        storage = "ok"
    except OSError as exc:
        storage = f"{type(exc).__name__}: {exc}"
    if not broker_ok or storage != "ok":
        raise NotReady(f"broker: {broker}; storage: {storage}. Check BDSCREEN_BROKER and BDSCREEN_STORAGE.")
    missing = dispatcher.missing_workers()
    if missing:
        raise NotReady(no_worker_message(missing))
    return {"status": "ready", "broker": broker, "storage": storage, "workers": "ok"}


def no_worker_message(missing: list[str]) -> str:
    return (f"no live worker on the {' and '.join(missing)} queue(s) (no heartbeat within the lease); "
            "'bdscreen serve' restarts its own workers, else start one with 'bdscreen worker --queues "
            f"{','.join(missing)}'.")
