"""The README's first command scans through the service: ``bdscreen serve`` started on embedded defaults, the
CI client against it, the service stopped again with its workers."""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from schemas.report import ScanReport
from worker.demo.run import scan_through_service
from worker.engine.data import read_mnist_idx


@pytest.fixture
def digits(fixtures, tmp_path):
    x, y = read_mnist_idx(fixtures / "mnist/t10k-images-idx3-ubyte.gz", fixtures / "mnist/t10k-labels-idx1-ubyte.gz")
    path = tmp_path / "digits.npz"
    np.savez(path, x=x[:300], y=y[:300])
    return path


@pytest.fixture(autouse=True)
def leftovers_killed(tmp_path):
    """Kills whatever the demo's service left running when a test failed before stopping it (``serve`` and its
    workers): they would outlive the test run and keep the machine busy."""
    yield
    for pid in processes_with_storage(tmp_path / "demo" / "service"):
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGKILL)


def test_the_demo_serves_scans_through_the_api_and_stops(fixtures, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("BDSCREEN_BROKER", "redis://127.0.0.1:1/0")  # a shell's setting the demo must not take
    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(real_popen(*a, **k)) or started[-1])
    out = tmp_path / "demo"
    code = scan_through_service([str(fixtures / "mnist/csaw_c_clean_label_bd_net.h5"), "--clean-data", str(digits),
                                 "--divide-by", "255", "--thresholds", "2", "--detectors", "mmbd,ulp",
                                 # pruning alone keeps this test about the service, not the (minutes-long) repair
                                 "--repair-method", "prune"], out)
    log = (out / "service.log").read_text()
    assert code in (0, 1), log[-3000:]  # a calibrated verdict (ULP's bank fits, MM-BD needs no data)
    report = ScanReport.model_validate_json((out / "report.json").read_text())
    assert [(f.detector, f.applicable) for f in report.findings] == [("mmbd", True), ("ulp", True)]
    assert report.explanation
    assert {a.name for a in report.artifacts} <= {p.name for p in out.iterdir()}
    assert "filesystem" in log  # the embedded broker
    (server,) = started
    assert server.poll() is not None  # stopped, and with it every worker it started
    assert not processes_with_storage(out / "service")


def processes_with_storage(storage: Path) -> list[str]:
    """Live processes whose environment names ``storage`` (the service's workers inherit it)."""
    wanted = f"BDSCREEN_STORAGE={storage}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted in environ.read_bytes().split(b"\0"):
                found.append(environ.parent.name)
        except OSError:  # gone, or not ours to read
            pass
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_demo_stops_its_service_on_sigterm_and_sigint(fixtures, tmp_path, signum, request):
    out = tmp_path / "demo"
    script = ("import sys; from pathlib import Path; from worker.demo.run import scan_through_service; "
              f"sys.exit(scan_through_service([{str(fixtures / 'mnist/csaw_c_clean_label_bd_net.h5')!r}, "
              f"'--detectors', 'none'], Path({str(out)!r}), keep_serving=True))")
    # Started with SIGINT ignored, as a shell without job control starts a background command: the demo must still
    # stop on it.
    demo = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    request.addfinalizer(demo.kill)  # a no-op once it has stopped
    lines = []
    for line in demo.stderr:  # the scan runs, then the demo says it keeps serving
        lines.append(line)
        if line.startswith("serving at"):
            break
    assert processes_with_storage(out / "service"), "".join(lines)
    demo.send_signal(signum)
    demo.wait(timeout=90)
    assert not processes_with_storage(out / "service")  # serve and every worker it started are gone
    curl = next(line for line in lines if line.startswith("curl "))
    assert "model=@" + str(fixtures.resolve()) in curl and "'options={\"detectors\": []}'" in curl
