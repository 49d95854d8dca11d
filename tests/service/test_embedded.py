"""``bdscreen serve``: gateway and workers on one machine, the embedded filesystem broker, no Redis."""

import json
import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from conftest import ROOT, Deployment, post_scan, wait_scan

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
         "--repair-method", "prune", "--download", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stderr + embedded.log("serve")[-3000:]
    assert "verdict: inconclusive" in run.stdout and "goodnet_drop2.onnx" in run.stdout
    report = ScanReport.model_validate_json((out / "report.json").read_text())
    assert {a.name for a in report.artifacts} <= {p.name for p in out.iterdir()}
    assert not list((embedded.storage / "broker/queue").iterdir())  # every message taken
    assert "filesystem" in embedded.log("serve")


def test_the_demos_curl_line_runs_as_printed(embedded, faces):
    from worker.demo.run import curl_line

    line = curl_line(embedded.url, [str(faces["model"]), "--clean-data", str(faces["clean"]), "--divide-by", "255",
                                    "--detectors", "none", "--thresholds", "2", "--repair-method", "prune"])
    answer = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=120)
    scan = json.loads(answer.stdout)
    assert answer.returncode == 0 and scan["state"] == "queued", answer.stdout + answer.stderr
    assert scan["options"]["preprocessing"]["divide_by"] == 255 and scan["options"]["repair"]["thresholds"] == [2]
    assert [u["filename"] for u in scan["uploads"]] == [faces["model"].name, faces["clean"].name]
    with embedded.client() as client:
        assert wait_scan(client, scan["id"], timeout=300)["state"] == "succeeded"


def test_serve_refuses_open_mode_on_a_public_address(tmp_path):
    run = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--host", "0.0.0.0", "--auth", "open",
                          "--storage", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "BDSCREEN_AUTH=keys" in run.stderr


def _worker_pids(serve_pid: int) -> list[int]:
    """The worker main processes ``bdscreen serve`` started (its children), and their pool processes."""
    def children(pid: int) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    mains = children(serve_pid)
    return mains + [pool for main in mains for pool in children(main)]


def _ready(deployment) -> int:
    return httpx.get(f"{deployment.url}/readyz", timeout=5).status_code


def test_serve_restarts_killed_workers_and_the_next_scan_runs(embedded, faces):
    before = embedded.log("serve").count("worker restarted")
    for pid in _worker_pids(embedded.processes["serve"].pid):  # every worker process, pools too: a crash
        os.kill(pid, signal.SIGKILL)
    embedded.wait_for(lambda: embedded.log("serve").count("worker restarted") >= before + 2, "the restarts", "serve")
    assert "exited with code -9; restarting it in" in embedded.log("serve")
    embedded.wait_ready()
    with embedded.client() as client:
        created = post_scan(client, faces["model"], clean_data=faces["clean"])
        assert created.status_code == 202, created.text
        assert wait_scan(client, created.json()["id"], timeout=300)["state"] == "succeeded"


def test_readyz_and_post_answer_503_while_a_queue_has_no_live_worker(tmp_path, faces):
    gateway = Deployment(tmp_path, broker=None, auth="open")
    gateway.start("serve", "serve", "--no-worker")
    try:
        gateway.wait_for(lambda: _answers(gateway), "the gateway", "serve")
        ready = httpx.get(f"{gateway.url}/readyz", timeout=5)
        assert ready.status_code == 503 and "gpu and cpu queue" in ready.json()["detail"]
        gateway.start_worker("cpu")
        gateway.start_worker("gpu")
        gateway.wait_ready()
        gateway.kill("worker-gpu")  # SIGKILL: no clean shutdown removes its heartbeat row; it goes stale
        gateway.wait_for(lambda: _ready(gateway) == 503, "readyz to notice the dead gpu worker", "serve", timeout=30)
        assert "the gpu queue" in httpx.get(f"{gateway.url}/readyz", timeout=5).json()["detail"]
        with gateway.client() as client:
            refused = post_scan(client, faces["model"], clean_data=faces["clean"])
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["category"] == "not-ready" and refused.headers["retry-after"] == "30"
            assert client.get("/v1/scans").json()["count"] == 0  # nothing accepted that nothing would run
    finally:
        gateway.stop()


def _answers(deployment) -> bool:
    try:
        return httpx.get(f"{deployment.url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_post_answers_503_and_keeps_nothing_when_the_upload_check_does_not_finish(tmp_path, faces):
    from worker.core.store import open_store

    gateway = Deployment(tmp_path, broker=None, auth="open", validate_timeout="1")
    gateway.start("serve", "serve", "--no-worker")
    done = threading.Event()
    try:
        gateway.wait_for(lambda: _answers(gateway), "the gateway", "serve")
        records = open_store(gateway.storage).records

        def beat() -> None:  # heartbeats of workers that take nothing (hung, or busy elsewhere)
            while not done.is_set():
                for kind in ("gpu", "cpu"):
                    records.beat_worker(f"{kind}-hung@test", [kind], 1, "test")
                done.wait(0.2)

        threading.Thread(target=beat, daemon=True).start()
        with gateway.client() as client:
            refused = post_scan(client, faces["model"], clean_data=faces["clean"])
            assert refused.status_code == 503 and refused.json()["category"] == "not-ready", refused.text
            assert "did not finish within BDSCREEN_VALIDATE_TIMEOUT (1 s)" in refused.json()["detail"]
            assert client.get("/v1/scans").json()["count"] == 0  # not accepted unchecked
    finally:
        done.set()
        gateway.stop()
