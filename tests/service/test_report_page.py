"""The report page: rendered for a real scan (ULP finding, repair curve and tables), loaded in headless
Chromium with no console errors, and its screenshot taken and checked."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import Deployment, post_scan, wait_scan
from PIL import Image

from worker.engine.data import read_mnist_idx

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


@pytest.fixture(scope="module")
def open_deployment(redis_url, tmp_path_factory):
    deployment = Deployment(tmp_path_factory.mktemp("report"), redis_url, auth="open")
    deployment.start("serve", "serve")
    deployment.wait_ready()
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def scan(open_deployment, fixtures, tmp_path_factory):
    """A finished scan of the CSAW MNIST BadNet: ULP finding, a repair at 2 points, a GoodNet."""
    x, y = read_mnist_idx(fixtures / "mnist/t10k-images-idx3-ubyte.gz", fixtures / "mnist/t10k-labels-idx1-ubyte.gz")
    digits = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(digits, x=x[:200], y=y[:200])
    with open_deployment.client() as client:
        created = post_scan(client, fixtures / "mnist/csaw_c_clean_label_bd_net.h5",
                            '{"preprocessing": {"divide_by": 255}, "repair": {"thresholds": [2], "method": "prune"}}',
                            clean_data=digits)
        assert created.status_code == 202, created.text
        done = wait_scan(client, created.json()["id"], timeout=600)
    assert done["state"] == "succeeded", done
    return done


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium is needed: apt-get install chromium (.ci/run installs it when missing)")
    return path


def test_the_page_shows_verdict_evidence_curve_and_downloads(open_deployment, scan):
    with open_deployment.client() as client:
        page = client.get(f"/v1/scans/{scan['id']}/report.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    verdict = scan["verdict"].upper()
    assert f"<title>{verdict}: csaw_c_clean_label_bd_net.h5" in html
    assert 'id="repair-curve" src="data:image/png;base64,' in html and "ulp: score" in html
    assert all(f'href="artifacts/{a["name"]}"' in html for a in scan["report"]["artifacts"])
    assert not re.search(r"""(?:src|href)=["'](?:https?:)?//""", html)  # nothing from outside


def test_the_page_loads_in_headless_chromium_without_console_errors(open_deployment, scan, tmp_path):
    url = f"{open_deployment.url}/v1/scans/{scan['id']}/report.html"
    screenshot = tmp_path / "report.png"
    common = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    shot = subprocess.run([*common, "--window-size=1366,900", f"--screenshot={screenshot}", url],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0, shot.stderr[-3000:]
    assert "CONSOLE" not in shot.stderr, shot.stderr[-3000:]  # the page runs no script: any message is a fault
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert re.search(rf'<span id="verdict"[^>]*>{scan["verdict"].upper()}</span>', dom.stdout), dom.stdout[:2000]
    image = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float32)
    assert image.shape == (900, 1366) and image.std() > 10  # drawn, not blank
    repair_curve_rows = (image[:, 200:1100] < 100).any(axis=1).sum()
    assert repair_curve_rows > 50  # text and lines in dark ink across many rows
