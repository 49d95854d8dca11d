"""The report page of a scan (``GET /v1/scans/{id}/report.html``): one self-contained HTML page for people.

Rendered from the scan with a jinja2 template (``service/templates/report.html``, autoescaped: model file
names, layer names and reasons come from the upload). The pictures (each detector's PNG artifacts, named
``<detector>-<what>.png``, and the repair curve) are embedded as data URIs, so the page needs no other
request, loads nothing from outside, and shows its pictures also where downloads need an API key.
"""

import base64
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from schemas.api import ScanPublic
from schemas.report import Verdict
from worker.core.store import Store

#: Pictures larger than this are linked, not embedded (a page must stay light on a laptop).
MAX_EMBEDDED_BYTES = 4 * 1024 * 1024
CURVE = "repair_curve.png"


@dataclass
class Picture:
    name: str
    data_uri: str


@lru_cache
def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["pct"] = lambda value: "n/a" if value is None else f"{100 * value:.2f} %"
    env.filters["compact"] = _compact
    return env


def _compact(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 300 else text[:300] + "…"


def why(scan: ScanPublic) -> str:
    """The verdict in one or two sentences."""
    report = scan.report
    if report is None:
        if scan.error is not None:
            return f"The scan {scan.state.value}: {scan.error.message}"
        return f"The scan is {scan.state.value}" + (f" ({scan.stage}, {scan.progress:.0%})." if scan.stage else ".")
    judged = [(f, f.score, f.threshold) for f in report.findings
              if f.applicable and f.score is not None and f.threshold is not None]
    if report.verdict == Verdict.backdoored:
        return " ".join(f"{f.detector} flagged it: {f.reason}" for f, score, threshold in judged if score >= threshold)
    if report.verdict == Verdict.clean:
        return "Every applicable detector scored below its threshold: " + "; ".join(
            f"{f.detector} {score:.3f} < {threshold:.3f}" for f, score, threshold in judged) + "."
    if not report.findings:
        return "No detector was asked for, so there is no claim either way."
    return "No detector could judge this model: " + "; ".join(f"{f.detector}: {f.reason}" for f in report.findings)


def render_report(scan: ScanPublic, store: Store, model_name: str) -> str:
    report = scan.report
    digests = {a.name: a.sha256 for a in report.artifacts} if report else {}
    pictures = {f.detector: [p for p in (_picture(store, digests, name) for name in f.artifacts) if p]
                for f in report.findings} if report else {}
    verdict = report.verdict.value if report else scan.state.value
    return _environment().get_template("report.html").render(
        scan=scan, report=report, model_name=model_name, why=why(scan), pictures=pictures,
        curve=_picture(store, digests, CURVE), verdict_class=verdict if report else "pending",
        verdict_text=verdict.upper() if report else f"scan {verdict}",
        options_json=scan.options.model_dump_json(indent=2) if scan.options else "{}",
        link=lambda name: f"artifacts/{name}")


def _picture(store: Store, digests: dict[str, str], name: str) -> Picture | None:
    if name not in digests or not name.endswith(".png"):
        return None
    path = store.blobs.path(digests[name])
    if not path.is_file() or path.stat().st_size > MAX_EMBEDDED_BYTES:
        return None
    return Picture(name, "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())
