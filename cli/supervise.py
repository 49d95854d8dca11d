"""The worker supervisor of ``bdscreen serve``: a worker that dies is started again, with backoff, and logged.

Each worker runs in its own session (process group), so a Ctrl-C reaches only ``serve``, which stops each
worker's main process, which stops its pool. When a worker's main process dies (killed, or Celery's
"Unrecoverable error"), its pool processes are killed with its process group, and the worker is started
again after a backoff that doubles from 1 s up to 30 s, and starts over once a worker has stayed up a minute.
"""

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

log = logging.getLogger("bdscreen.serve")
BACKOFF_FIRST, BACKOFF_MAX, STABLE_SECONDS = 1.0, 30.0, 60.0


class SupervisedWorker:
    def __init__(self, name: str, start: Callable[[], subprocess.Popen]) -> None:
        self.name, self._start = name, start
        self.process = start()
        self.started_at = time.monotonic()
        self.backoff = BACKOFF_FIRST
        self.restart_at: float | None = None
        self.restarts = 0

    def check(self, now: float) -> None:
        """Notice a death (schedule the restart) or a due restart (start it)."""
        if self.restart_at is None:
            code = self.process.poll()
            if code is None:
                return
            _kill_group(self.process.pid)  # its pool processes, orphaned by the kill
            if now - self.started_at >= STABLE_SECONDS:
                self.backoff = BACKOFF_FIRST
            log.warning("bdscreen serve: the %s worker (pid %d) exited with code %s; restarting it in %g s",
                        self.name, self.process.pid, code, self.backoff)
            self.restart_at = now + self.backoff
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        elif now >= self.restart_at:
            self.process, self.started_at, self.restart_at = self._start(), now, None
            self.restarts += 1
            log.warning("bdscreen serve: the %s worker restarted (pid %d, restart %d)", self.name,
                        self.process.pid, self.restarts)

    def stop(self, timeout: float = 30) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
        _kill_group(self.process.pid)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Supervisor(threading.Thread):
    """Polls the workers every ``interval`` seconds until :meth:`stop`; then stops them."""

    def __init__(self, workers: list[SupervisedWorker], interval: float = 0.5) -> None:
        super().__init__(name="bdscreen-supervisor", daemon=True)
        self.workers, self.interval = workers, interval
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            for worker in self.workers:
                try:
                    worker.check(time.monotonic())
                except OSError:  # a failed start (no memory, no process slot) is retried at the next backoff
                    log.exception("bdscreen serve: could not start the %s worker", worker.name)
                    worker.restart_at = time.monotonic() + worker.backoff

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)
        for worker in self.workers:
            worker.process.terminate()
        for worker in self.workers:
            worker.stop()
