"""``/v1/scans/{id}/artifacts/{name}``: download a repaired model, a GoodNet or the repair curve."""

import base64

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.api.deps import ScanDep, StoreDep
from service.api.routes.scans import PROBLEMS
from service.errors import NotFound

router = APIRouter(prefix="/v1/scans/{scan_id}/artifacts", tags=["artifacts"])


@router.get("/{name}", response_class=FileResponse, responses=PROBLEMS, summary="Download one artifact")
def download_artifact(name: str, scan: ScanDep, store: StoreDep) -> FileResponse:
    """Streams the file with its Content-Length; ``ETag`` and ``Repr-Digest`` carry its sha256, as in the report."""
    report = scan.report
    artifact = next((a for a in report.artifacts if a.name == name), None) if report else None
    if artifact is None:
        names = ", ".join(a.name for a in report.artifacts) if report else "none until the scan has succeeded"
        raise NotFound(f"scan {scan.id} has no artifact {name!r}; its artifacts: {names}.")
    path = store.blobs.path(artifact.sha256)
    if not path.is_file():
        raise NotFound(f"the file of {name!r} is gone (deleted by the retention setting); run the scan again.")
    digest = base64.b64encode(bytes.fromhex(artifact.sha256)).decode()
    return FileResponse(path, media_type=artifact.media_type, filename=artifact.name,
                        headers={"ETag": f'"{artifact.sha256}"', "Repr-Digest": f"sha-256=:{digest}:",
                                 "X-Checksum-SHA256": artifact.sha256})
