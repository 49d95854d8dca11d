"""The router registry: one ``include_router`` line per resource."""

from fastapi import APIRouter

from service.api.routes import artifacts, banks, health, metrics, report, scans

api_router = APIRouter()
api_router.include_router(scans.router)
api_router.include_router(artifacts.router)
api_router.include_router(report.router)
api_router.include_router(banks.router)
api_router.include_router(health.router)
api_router.include_router(metrics.router)
# The short form promised to users: POST /scan is POST /v1/scans.
api_router.add_api_route("/scan", scans.create_scan, methods=["POST"], status_code=202, tags=["scans"],
                         response_model=scans.ScanPublic, responses=scans.PROBLEMS, openapi_extra=scans.UPLOAD_BODY,
                         summary="Upload a model to scan (short form of POST /v1/scans)")
