"""The embedded soak: ``bdscreen serve`` (embedded broker, supervised workers) under 8 concurrent clients
while every worker process is killed (SIGKILL, pools too) twice; run by ``python -m bench.service``.

Each client POSTs detection-only scans of the small MNIST model and follows each to its end; a POST answered
503 (no live worker: the check cannot run) is retried after a second, as the ``Retry-After`` asks. Counted:
scans accepted, succeeded, failed, lost (accepted and never ended within the bound), POSTs refused with 503,
broker messages set aside as corrupt, and for each kill the seconds until the first scan accepted after it
succeeded (recovery). Bounded: each scan may take at most ``SCAN_BOUND`` seconds, the whole run ``RUN_BOUND``.
"""

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SCAN_BOUND, RUN_BOUND = 180.0, 1200.0
KILL_AT = (1 / 3, 2 / 3)  # of the scans finished


@dataclass
class SoakResult:
    accepted: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    refused_503: int = 0
    corrupt: int = 0
    kills: list[float] = field(default_factory=list)  # monotonic time of each kill
    first_success_after: list[float | None] = field(default_factory=list)
    elapsed: float = 0.0
    ended_at: dict[str, float] = field(default_factory=dict)  # scan id -> monotonic end seen
    accepted_at: dict[str, float] = field(default_factory=dict)


def worker_pids(serve_pid: int) -> list[int]:
    def children(pid: int) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    mains = children(serve_pid)
    return mains + [pool for main in mains for pool in children(main)]


def kill_workers(serve_pid: int) -> int:
    pids = worker_pids(serve_pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def run_soak(url: str, serve_pid: int, storage: Path, model: Path, scans: int, clients: int = 8) -> SoakResult:
    result = SoakResult()
    lock = threading.Lock()
    todo = iter(range(scans))
    started = time.monotonic()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() - started < RUN_BOUND:
                with lock:
                    if next(todo, None) is None:
                        return
                scan_id = _post(http, model, result, lock, started)
                if scan_id is not None:
                    _follow(http, scan_id, result, lock)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for fraction in KILL_AT:  # kill when that share of the scans has ended
        while time.monotonic() - started < RUN_BOUND and any(t.is_alive() for t in threads):
            with lock:
                done = result.succeeded + result.failed
            if done >= fraction * scans:
                break
            time.sleep(0.05)
        with lock:
            result.kills.append(time.monotonic())
        kill_workers(serve_pid)
    for thread in threads:
        thread.join(timeout=RUN_BOUND)
    result.elapsed = time.monotonic() - started
    for kill in result.kills:  # recovery: the first scan accepted after the kill that succeeded
        after = [result.ended_at[s] - kill for s, t in result.accepted_at.items() if t > kill and s in result.ended_at]
        result.first_success_after.append(min(after) if after else None)
    result.corrupt = len(list((storage / "broker/corrupt").glob("*")))
    return result


def _post(http: httpx.Client, model: Path, result: SoakResult, lock: threading.Lock, started: float) -> str | None:
    while time.monotonic() - started < RUN_BOUND:
        try:
            answer = http.post("/v1/scans", files={"model": (model.name, model.read_bytes())},
                               data={"options": '{"detectors": []}'})
        except httpx.HTTPError:
            time.sleep(1)
            continue
        if answer.status_code == 503:
            with lock:
                result.refused_503 += 1
            time.sleep(float(answer.headers.get("retry-after", "1")) / 30)  # 1 s: a bench, not a client
            continue
        answer.raise_for_status()
        scan_id = answer.json()["id"]
        with lock:
            result.accepted += 1
            result.accepted_at[scan_id] = time.monotonic()
        return scan_id
    return None


def _follow(http: httpx.Client, scan_id: str, result: SoakResult, lock: threading.Lock) -> None:
    deadline = time.monotonic() + SCAN_BOUND
    while time.monotonic() < deadline:
        try:
            state = http.get(f"/v1/scans/{scan_id}").json()["state"]
        except (httpx.HTTPError, ValueError, KeyError):
            time.sleep(0.5)
            continue
        if state in ("succeeded", "failed", "canceled"):
            with lock:
                if state == "succeeded":
                    result.succeeded += 1
                    result.ended_at[scan_id] = time.monotonic()
                else:
                    result.failed += 1
            return
        time.sleep(0.1)
    with lock:
        result.lost += 1


def soak_rows(result: SoakResult, scans: int, clients: int) -> list[tuple[str, str, str]]:
    recoveries = ", ".join("never" if r is None else f"{r:.1f} s" for r in result.first_success_after)
    return [
        (f"embedded soak: {scans} scans, {clients} clients, all workers killed {len(result.kills)}x",
         f"{result.succeeded}/{result.accepted}",
         f"succeeded/accepted; failed {result.failed}, lost or stuck {result.lost}, corrupt messages "
         f"{result.corrupt}; {result.refused_503} POSTs answered 503 while no worker lived; {result.elapsed:.0f} s"),
        ("embedded soak: recovery after each kill", recoveries,
         "kill to the first success of a scan accepted after it (restart with backoff, reconcile re-queues)"),
    ]
