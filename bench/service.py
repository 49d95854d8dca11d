"""The service's figures: status reads, upload throughput and memory, end-to-end overhead, on SQLite and on
PostgreSQL records, and the embedded soak with killed workers, in one run.

    .venv/bin/python -m bench.service [--clients 50] [--reads 40] [--upload-mb 200] [--repeats 3]
                                      [--soak-scans 120] [--only soak|figures]

Starts ``bdscreen serve`` (embedded filesystem broker, SQLite records), then a gateway and workers on Redis
(127.0.0.1:6379 when it answers, else a ``redis-server`` started here) with SQLite records, then the same with
the records on the PostgreSQL at 127.0.0.1:5432 (a database made for the run and dropped after it), each on a
fresh storage folder; and last the soak of bench/service_soak.py on a fresh ``bdscreen serve``.
Status reads: ``--clients`` concurrent clients each GET one finished scan ``--reads`` times (httpx, asyncio,
on loopback; the client shares the machine's cores with the gateway). Upload: one ``--upload-mb`` body,
streamed; the gateway's peak resident memory (VmHWM, reset before the upload) is read from /proc.
End to end: a scan of ytf/sunglasses_bd_net.h5 with 40 clean faces (detectors none, thresholds 2 and 10),
POST to succeeded, each paired with :func:`worker.engine.scan.run_scan` called in this process on the same files
just before it (the machine is shared: a pair sees the same load); and a
detection-only scan of the small MNIST model, where the queue round trips are most of the time.
"""

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

from tests.databases import postgres_database  # the tests' throwaway PostgreSQL database, started if need be

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
OPTIONS = ('{"preprocessing": {"divide_by": 255}, "detectors": [], '
           '"repair": {"thresholds": [2, 10], "method": "prune"}}')


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def faces(folder: Path) -> Path:
    """40 clean faces: the 5 real clean samples with small noise, labelled from their file names."""
    from worker.engine.data import read_image_folder

    images, names = read_image_folder(FIXTURES / "ytf/samples")
    clean = [i for i, n in enumerate(names) if Path(n).name.startswith("cl_")]
    labels = np.array([int(Path(names[i]).stem.split("=")[1]) for i in clean])
    rng = np.random.default_rng(0)
    x = np.concatenate([np.clip(images[clean] + rng.normal(0, 3, images[clean].shape), 0, 255) for _ in range(8)])
    np.savez(folder / "clean.npz", x=x.astype(np.uint8), y=np.tile(labels, 8))
    return folder / "clean.npz"


class Service:
    """``bdscreen serve`` or ``bdscreen serve --no-worker`` plus workers, each in its own session."""

    def __init__(self, folder: Path, broker: str | None, database: str | None = None, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.env = {**os.environ, "BDSCREEN_STORAGE": str(folder), "BDSCREEN_PORT": str(self.port),
                    "BDSCREEN_AUTH": "open", "BDSCREEN_QUEUE_PREFIX": f"bench-{os.getpid()}-{self.port}",
                    **{f"BDSCREEN_{k.upper()}": v for k, v in settings.items()}}
        if broker:
            self.env["BDSCREEN_BROKER"] = broker
        if database:
            self.env["BDSCREEN_DATABASE_URL"] = database
        commands = [["serve"]] if broker is None else [["serve", "--no-worker"], ["worker", "--queues", "gpu"],
                                                       ["worker", "--queues", "cpu"]]
        self.log = folder.parent / f"{folder.name}.log"
        with self.log.open("ab") as log:
            self.processes = [subprocess.Popen([sys.executable, "-m", "cli.main", *c], cwd=ROOT, env=self.env,
                                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                              for c in commands]
        self.gateway_pid = self.processes[0].pid
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

    def warm_up(self, model: Path, clean: Path) -> None:
        """One scan of each kind, so that every worker pool process has run the engine once."""
        self.scan(model, clean)
        self.scan(FIXTURES / "mnist/csaw_c_clean_label_bd_net.h5", None, '{"detectors": []}')

    def scan(self, model: Path, clean: Path | None, options: str = OPTIONS) -> tuple[float, dict]:
        files = {"model": (model.name, model.read_bytes())}
        if clean is not None:
            files["clean_data"] = (clean.name, clean.read_bytes())
        start = time.perf_counter()
        with httpx.Client(base_url=self.url, timeout=120) as client:
            scan = client.post("/v1/scans", files=files, data={"options": options}).raise_for_status().json()
            while scan["state"] not in ("succeeded", "failed", "canceled") and time.perf_counter() - start < 300:
                time.sleep(0.05)
                scan = client.get(f"/v1/scans/{scan['id']}").json()
        if scan["state"] != "succeeded":
            tail = self.log.read_text(errors="replace")[-4000:]
            raise SystemExit(f"bench scan {scan['id']} is {scan['state']}: {scan.get('error')}\n{tail}")
        return time.perf_counter() - start, scan

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()  # the main process only: it stops its own pool or workers
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


async def status_reads(url: str, scan_id: str, clients: int, reads: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def one_client() -> None:
            for _ in range(reads):
                start = time.perf_counter()
                (await client.get(f"/v1/scans/{scan_id}")).raise_for_status()
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(one_client() for _ in range(max(clients // 10, 1))))  # warm connections
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return latencies, time.perf_counter() - start


def upload(service: Service, megabytes: int, folder: Path) -> tuple[float, float, float]:
    """(seconds, gateway peak RSS MB during the upload, RSS MB before it) for a body of ``megabytes``."""
    body = folder / "big.bin"
    with body.open("wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(1 << 20))
    status = Path(f"/proc/{service.gateway_pid}/status")
    Path(f"/proc/{service.gateway_pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _kb(status, "VmRSS") / 1024
    start = time.perf_counter()
    with body.open("rb") as f:
        answer = httpx.post(f"{service.url}/v1/scans", files={"model": ("big.bin", f)}, timeout=300)
    seconds = time.perf_counter() - start
    if answer.status_code != 422:  # random bytes: taken whole, then refused as no model
        raise SystemExit(f"upload answered {answer.status_code}: {answer.text[:300]}")
    return seconds, _kb(status, "VmHWM") / 1024, before


def _kb(status: Path, field: str) -> int:
    line = next(line for line in status.read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def redis_url() -> tuple[str, subprocess.Popen | None]:
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
        return "redis://127.0.0.1:6379/0", None
    except redis.RedisError:
        port = free_port()
        server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        return f"redis://127.0.0.1:{port}/0", server


def soak(tmp: Path, scans: int) -> list[tuple[str, str, str]]:
    from bench.service_soak import run_soak, soak_rows

    # A short lease and reconcile period, so that a killed worker's scan comes back within seconds.
    service = Service(tmp / "soak", None, heartbeat_seconds="1", reconcile_seconds="1", validate_timeout="10")
    try:
        result = run_soak(service.url, service.gateway_pid, service.folder,
                          FIXTURES / "mnist/csaw_c_clean_label_bd_net.h5", scans)
    finally:
        service.stop()
    return soak_rows(result, scans, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--reads", type=int, default=40)
    parser.add_argument("--upload-mb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--soak-scans", type=int, default=120)
    parser.add_argument("--only", choices=["soak", "figures"])
    args = parser.parse_args()
    model = FIXTURES / "ytf/sunglasses_bd_net.h5"
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp, ExitStack() as stack:
        tmp = Path(tmp)
        if args.only == "soak":
            rows += soak(tmp, args.soak_scans)
            _print(rows, args)
            return
        clean = faces(tmp)
        from schemas.scan import ScanOptions
        from worker.engine.scan import ScanInputs, run_scan

        options = ScanOptions.model_validate_json(OPTIONS)

        def in_process() -> float:
            start = time.perf_counter()
            run_scan(ScanInputs(model, clean_data=clean), options, Path(tempfile.mkdtemp(dir=tmp)))
            return time.perf_counter() - start

        in_process()  # the first call pays torch's one-time start-up
        url, server = redis_url()
        postgres = stack.enter_context(postgres_database())
        for name, broker, database in (("embedded broker, SQLite", None, None), ("Redis, SQLite", url, None),
                                       ("Redis, PostgreSQL", url, postgres)):
            service = Service(tmp / name.replace(",", "").replace(" ", "-"), broker, database)
            try:
                service.warm_up(model, clean)
                # Interleaved, so that both sides of each pair see the same load on the shared machine.
                pairs = [(in_process(), *service.scan(model, clean)) for _ in range(args.repeats)]
                local_s = statistics.median(p[0] for p in pairs)
                wall = statistics.median(p[1] for p in pairs)
                ratio = statistics.median(p[1] / p[0] for p in pairs)
                queued = statistics.median(p[2]["timings"]["queued"] for p in pairs)
                rows.append((f"scan sunglasses_bd_net, {name}", f"{wall:.2f} s",
                             f"in-process {local_s:.2f} s; ratio {ratio:.2f}x (median of pairs); "
                             f"waited in queue {queued * 1e3:.0f} ms"))
                small = [service.scan(FIXTURES / "mnist/csaw_c_clean_label_bd_net.h5", None, '{"detectors": []}')
                         for _ in range(5)]
                rows.append((f"detection-only MNIST scan, {name}",
                             f"{statistics.median(w for w, _ in small) * 1e3:.0f} ms",
                             f"POST to succeeded, median of 5; queued (upload check + 2 queue hops) "
                             f"{statistics.median(s['timings']['queued'] for _, s in small) * 1e3:.0f} ms"))
                latencies, elapsed = asyncio.run(status_reads(service.url, pairs[-1][2]["id"], args.clients,
                                                              args.reads))
                q = statistics.quantiles(latencies, n=100)
                rate = f"{len(latencies) / elapsed:,.0f} req/s"
                rows.append((f"GET /v1/scans/{{id}}, {args.clients} clients, {name}", rate,
                             f"p50 {q[49] * 1e3:.1f} ms, p99 {q[98] * 1e3:.1f} ms ({len(latencies)} reads)"))
                if broker is None:
                    seconds, peak, before = upload(service, args.upload_mb, tmp)
                    rows.append((f"POST /v1/scans, {args.upload_mb} MB body", f"{args.upload_mb / seconds:,.0f} MB/s",
                                 f"gateway peak RSS {peak:.0f} MB while taking it ({before:.0f} MB before)"))
            finally:
                service.stop()
        if server is not None:
            server.terminate()
        if args.only != "figures":
            rows += soak(tmp, args.soak_scans)
    _print(rows, args)


def _print(rows: list[tuple[str, str, str]], args: argparse.Namespace) -> None:
    print(f"bench.service: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; scans: median of "
          f"{args.repeats}, after a warm-up scan, each service scan paired with an in-process one")
    print(f"{'what':<72} {'figure':>10}  note")
    for what, figure, note in rows:
        print(f"{what:<72} {figure:>10}  {note}")


if __name__ == "__main__":
    main()
