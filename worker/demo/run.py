"""The README's first command: build the project's MNIST BadNet, start the service on this machine with its
embedded defaults, and scan the BadNet through the REST API with the CI client.

    python -m worker.demo [--out DIR] [--keep-serving]

The BadNet is trained from the real MNIST fixture (cached under $BDSCREEN_CACHE after the first run). Then
``bdscreen serve`` starts the gateway and its workers on a free loopback port (embedded filesystem broker, no
Redis, no Docker; storage under ``DIR/service``), ``bdscreen scan --server`` uploads the model with its data,
follows the scan and downloads the report and artifacts into ``DIR``, and the service is stopped again, unless
``--keep-serving`` leaves it running for curl and the client. SIGINT (Ctrl-C) and SIGTERM stop the service
with the demo, and the service gets SIGTERM if the demo dies without a word (Linux).
"""

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from cli.main import main as cli_main
from worker.demo.badnet import mnist_badnet

#: ``../shared/fixtures`` beside the checkout (this file is <checkout>/worker/demo/run.py).
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
START_SECONDS = 120


class ServiceFailed(Exception):
    """``bdscreen serve`` did not come up; the message holds the end of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(storage: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``bdscreen serve`` on loopback with the embedded broker; returns the process and its URL once ready."""
    port = free_port()
    # The embedded defaults whatever this shell has set: no broker URL, open mode (loopback only).
    env = {k: v for k, v in os.environ.items() if not k.startswith("BDSCREEN_") or k == "BDSCREEN_CACHE"}
    env.update(BDSCREEN_STORAGE=str(storage), BDSCREEN_HOST="127.0.0.1", BDSCREEN_PORT=str(port))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        server = subprocess.Popen([sys.executable, "-m", "cli.main", "serve"], env=env, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_service(server)
    raise ServiceFailed(f"bdscreen serve did not become ready; the end of {log}:\n"
                        + log.read_text(errors="replace")[-2000:])


def stop_service(server: subprocess.Popen) -> None:
    """SIGTERM to ``serve`` alone: it stops its workers, which stop their pools."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _die_with_parent() -> None:
    from cli.serve import _die_with_parent as die

    die()


def _stop_on_signals() -> None:
    """SIGTERM as SystemExit, so the ``finally`` that stops the service runs (Python's default ends at once), and
    SIGINT as KeyboardInterrupt even when it was inherited ignored: a shell without job control starts background
    commands with SIGINT ignored, and Python then leaves it so, which made the demo deaf to ``kill -INT``."""
    def handler(signum: int, _frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


#: The multipart file fields besides ``model``; ``bdscreen scan`` has a flag for each (``--clean-data``, ...).
FILE_FIELDS = ("architecture", "clean_data", "eval_data", "poisoned_data")


def curl_line(url: str, scan_args: Sequence[str]) -> str:
    """The POST of ``bdscreen scan SCAN_ARGS`` as one curl command line that runs as printed (paths absolute)."""
    from cli.main import _parser
    from cli.scan import options_from_args

    args = _parser().parse_args(["scan", *scan_args, "--server", url])
    parts = ["curl", "-sS", "-F", f"model=@{Path(args.model).resolve()}"]
    for field in FILE_FIELDS:
        path = getattr(args, field)
        if path is not None:
            parts += ["-F", f"{field}=@{Path(path).resolve()}"]
    options = json.loads(options_from_args(args).model_dump_json(exclude_defaults=True))
    parts += ["-F", f"options={json.dumps(options)}", f"{url}/v1/scans"]
    return " ".join(shlex.quote(part) for part in parts)


def scan_through_service(scan_args: Sequence[str], out: Path, keep_serving: bool = False) -> int:
    """Start the service, run ``bdscreen scan SCAN_ARGS --server URL --download OUT`` against it, stop it.

    Returns the client's exit code (0 clean, 1 backdoored, 3 inconclusive, 2 error)."""
    _stop_on_signals()
    log = out / "service.log"
    server, url = start_service(out / "service", log)
    try:
        print(f"service ready at {url} (OpenAPI at {url}/docs, log {log})", file=sys.stderr)
        command = ["scan", *scan_args, "--server", url, "--download", str(out)]
        print("bdscreen " + " ".join(command), file=sys.stderr)
        code = cli_main(command)
        print(f"the same scan with curl (then GET {url}/v1/scans/ID, or open {url}/v1/scans/ID/report.html):\n"
              f"{curl_line(url, scan_args)}", file=sys.stderr)
        if keep_serving:
            print(f"serving at {url}; Ctrl-C (or SIGTERM) stops it", file=sys.stderr, flush=True)
            try:
                server.wait()
            except KeyboardInterrupt:
                pass
        return code
    finally:
        stop_service(server)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="artifacts and service storage "
                                                                          "(default out/demo)")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    parser.add_argument("--keep-serving", action="store_true", help="leave the service running after the scan")
    args = parser.parse_args(argv)
    print("building the MNIST BadNet from the real t10k images (cached after the first run)...", file=sys.stderr)
    case = mnist_badnet(args.fixtures)
    print(f"BadNet: clean accuracy {case.meta['clean_accuracy']:.2%}, attack success "
          f"{case.meta['attack_success_rate']:.2%} ({case.meta['trigger']} -> class {case.meta['target']})",
          file=sys.stderr)
    scan_args = [str(case.model), "--clean-data", str(case.clean), "--eval-data", str(case.evaluation),
                 "--poisoned-data", str(case.poisoned), "--divide-by", "255", "--fine-tune"]
    try:
        code = scan_through_service(scan_args, args.out.resolve(), args.keep_serving)
    except ServiceFailed as exc:
        print(f"bdscreen: {exc}", file=sys.stderr)
        return 2
    return 0 if code in (0, 1, 3) else code

