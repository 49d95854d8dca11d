"""``/v1/scans/{id}/report.html``: the scan as a page a person can read (see :mod:`service.report_page`)."""

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from service.api.deps import ScanDep, StoreDep
from service.api.routes.scans import PROBLEMS
from service.report_page import render_report
from service.scans import public_scan

router = APIRouter(prefix="/v1/scans/{scan_id}", tags=["scans"])


@router.get("/report.html", response_class=HTMLResponse, responses=PROBLEMS,
            summary="The scan as a page: verdict and why, detector evidence, repair curve and table, downloads")
async def report_page(scan: ScanDep, store: StoreDep) -> HTMLResponse:
    model = scan.upload("model") or {}
    html = await to_thread.run_sync(render_report, public_scan(scan), store, model.get("filename") or "model")
    return HTMLResponse(html)
