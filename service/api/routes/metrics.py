"""``/metrics``: Prometheus text format."""

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from service.api.deps import DispatcherDep, StoreDep
from service.metrics import exposition

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(store: StoreDep, dispatcher: DispatcherDep) -> PlainTextResponse:
    depths = {dispatcher.settings.queue(kind): dispatcher.queue_depth(kind) for kind in ("gpu", "cpu")}
    return PlainTextResponse(exposition(store, depths), media_type="text/plain; version=0.0.4")
