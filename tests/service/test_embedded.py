"""``bdscreen serve``: gateway and workers on one machine, the embedded filesystem broker, no Redis."""

import subprocess
import sys

import pytest
from conftest import ROOT, Deployment

from schemas.report import ScanReport


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    deployment = Deployment(tmp_path_factory.mktemp("embedded"), broker=None, auth="open")
    deployment.start("serve", "serve")
    deployment.wait_ready()
    yield deployment
    deployment.stop()


def test_serve_scans_the_badnet_with_the_embedded_broker(embedded, faces, tmp_path):
    out = tmp_path / "artifacts"
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "scan", str(faces["model"]), "--server", embedded.url,
         "--clean-data", str(faces["clean"]), "--divide-by", "255", "--detectors", "none", "--thresholds", "2,10",
         "--download", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stderr + embedded.log("serve")[-3000:]
    assert "verdict: inconclusive" in run.stdout and "goodnet_drop2.onnx" in run.stdout
    report = ScanReport.model_validate_json((out / "report.json").read_text())
    assert {a.name for a in report.artifacts} <= {p.name for p in out.iterdir()}
    assert not list((embedded.storage / "broker/queue").iterdir())  # every message taken
    assert "filesystem" in embedded.log("serve")


def test_serve_refuses_open_mode_on_a_public_address(tmp_path):
    run = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--host", "0.0.0.0", "--auth", "open",
                          "--storage", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "BDSCREEN_AUTH=keys" in run.stderr
