"""The real parts: Redis, the gateway served by uvicorn on loopback, Celery worker processes, real files.

Redis is the server on 127.0.0.1:6379 when it answers, else one started here. Every session uses its own
queue and key prefix, storage folder and ports, so parallel sessions on a shared Redis never collide.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """127.0.0.1:6379 if it answers PING, else a redis-server started for the session (nothing kept on disk)."""
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
        yield "redis://127.0.0.1:6379/0"
        return
    except redis.RedisError:
        pass
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.RedisError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


class Deployment:
    """A gateway and workers started as the README says, with their environment and log files."""

    def __init__(self, folder: Path, broker: str | None, auth: str, **settings: str) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "BDSCREEN_STORAGE": str(folder / "storage"), "BDSCREEN_AUTH": auth,
                    "BDSCREEN_PORT": str(self.port), "BDSCREEN_QUEUE_PREFIX": f"bdscreen-test-{uuid.uuid4().hex[:8]}",
                    "BDSCREEN_HEARTBEAT_SECONDS": "0.5", "BDSCREEN_RECONCILE_SECONDS": "0.5",
                    "BDSCREEN_MAX_UPLOAD_MB": "32", "BDSCREEN_VALIDATE_TIMEOUT": "60",
                    **{f"BDSCREEN_{k.upper()}": v for k, v in settings.items()}}
        if broker is not None:
            self.env["BDSCREEN_BROKER"] = broker
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def storage(self) -> Path:
        return Path(self.env["BDSCREEN_STORAGE"])

    def start(self, name: str, *command: str) -> subprocess.Popen:
        """Start ``bdscreen COMMAND`` in its own session, its output appended to ``<name>.log``."""
        log = (self.folder / f"{name}.log").open("ab")
        process = subprocess.Popen([sys.executable, "-m", "cli.main", *command], cwd=ROOT, env=self.env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_worker(self, queue: str) -> None:
        name = f"worker-{queue}"
        before = len(self.log(name))
        self.start(name, "worker", "--queues", queue)
        self.wait_for(lambda: "ready." in self.log(name)[before:], f"the {queue} worker to start", name)

    def kill(self, name: str) -> None:
        """SIGKILL a process and its pool children (its own session): a crash, not a shutdown."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def wait_for(self, condition, what: str, log: str | None = None, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}" + (f"; log:\n{self.log(log)[-3000:]}" if log else ""))

    def wait_ready(self) -> None:
        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        self.wait_for(ready, "the gateway", "gateway")

    def create_key(self, name: str) -> str:
        out = subprocess.run([sys.executable, "-m", "cli.main", "keys", "create", name], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()  # the main process only: it stops its own pool or workers
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()


@pytest.fixture(scope="session")
def deployment(redis_url, tmp_path_factory):
    """Gateway (keys mode), a gpu worker and a cpu worker on real Redis."""
    deployment = Deployment(tmp_path_factory.mktemp("deployment"), redis_url, auth="keys",
                            callback_allow="127.0.0.1")  # the tests' webhook receivers listen on loopback
    deployment.start("gateway", "serve", "--no-worker")
    deployment.start("worker-cpu", "worker", "--queues", "cpu")
    deployment.start("worker-gpu", "worker", "--queues", "gpu")
    deployment.wait_ready()
    for queue in ("cpu", "gpu"):
        deployment.wait_for(lambda q=queue: "ready." in deployment.log(f"worker-{q}"), f"the {queue} worker",
                            f"worker-{queue}")
    deployment.keys = {"alice": deployment.create_key("alice"), "bob": deployment.create_key("bob")}
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session")
def faces(fixtures, tmp_path_factory) -> dict[str, Path]:
    """The sunglasses BadNet, 40 clean faces (the 5 real clean samples with small noise, labels from their
    names) and hostile or misfit uploads, all made under a temporary folder."""
    from worker.engine.data import read_image_folder

    images, names = read_image_folder(fixtures / "ytf/samples")
    clean = [i for i, n in enumerate(names) if Path(n).name.startswith("cl_")]
    labels = np.array([int(Path(names[i]).stem.split("=")[1]) for i in clean])
    rng = np.random.default_rng(0)
    x = np.concatenate([np.clip(images[clean] + rng.normal(0, 3, images[clean].shape), 0, 255)
                        for _ in range(8)]).astype(np.uint8)
    folder = tmp_path_factory.mktemp("faces")
    np.savez(folder / "clean.npz", x=x, y=np.tile(labels, 8))
    np.savez(folder / "digits.npz", x=np.zeros((20, 28, 28), np.uint8), y=np.zeros(20, np.int64))
    (folder / "not_a_model.h5").write_bytes(b"just some text, not a model\n" * 10)
    import pickle

    (folder / "model.pth").write_bytes(pickle.dumps({"state_dict": [1, 2, 3]}))
    return {"model": fixtures / "ytf/sunglasses_bd_net.h5", "clean": folder / "clean.npz",
            "digits": folder / "digits.npz", "not_a_model": folder / "not_a_model.h5",
            "pickle": folder / "model.pth", "lambda": fixtures / "ytf/goodnet_with_lambda.h5",
            "mnist_model": fixtures / "mnist/csaw_c_clean_label_bd_net.h5", "samples": fixtures / "ytf/samples"}


# Pruning alone: these tests are about the service; the default repair (several candidates, minutes on DeepID) is
# tested in tests/worker/engine/repair.
FACE_OPTIONS = ('{"preprocessing": {"divide_by": 255}, "detectors": [], '
                '"repair": {"thresholds": [2, 10], "method": "prune"}}')


def post_scan(client: httpx.Client, model: Path, options: str = FACE_OPTIONS, **files: Path) -> httpx.Response:
    parts = {"model": (model.name, model.read_bytes())}
    parts.update({name: (path.name, path.read_bytes()) for name, path in files.items()})
    return client.post("/v1/scans", files=parts, data={"options": options})


def wait_scan(client: httpx.Client, scan_id: str, until=lambda s: s["state"] in ("succeeded", "failed", "canceled"),
              timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scan = client.get(f"/v1/scans/{scan_id}").raise_for_status().json()
        if until(scan):
            return scan
        time.sleep(0.1)
    pytest.fail(f"scan {scan_id} did not get there in {timeout} s: {scan}")
