"""``/healthz`` (the process answers) and ``/readyz`` (the broker and the storage are reachable)."""

import tempfile

from fastapi import APIRouter

from service.api.deps import DispatcherDep, StoreDep
from service.errors import NotReady

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: broker and storage reachable")
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
    return {"status": "ready", "broker": broker, "storage": storage}
