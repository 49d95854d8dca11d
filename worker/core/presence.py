"""Worker heartbeats: which queues have a live worker, from rows each worker writes, not from guesses.

Each worker's main process writes its row (name, queues, pid, time) to the records every
``BDSCREEN_HEARTBEAT_SECONDS`` from a thread started when Celery says the worker is ready, and removes it
when the worker shuts down cleanly. A killed worker's row just stops being refreshed: after the lease
(``Settings.lease_seconds``) it no longer counts. ``/readyz`` and ``POST /v1/scans`` read these rows, so a
deployment whose cpu or gpu workers are all dead answers 503 instead of accepting work nothing will run.
The rows live in the record store, so they are shared by every machine of a scaled-out deployment.
"""

import logging
import os
import socket
import threading

from celery.signals import worker_ready, worker_shutdown

from worker.core.settings import get_settings

log = logging.getLogger("bdscreen.worker")
_beat: "WorkerBeat | None" = None


class WorkerBeat(threading.Thread):
    def __init__(self, name: str, kinds: list[str]) -> None:
        super().__init__(name="bdscreen-worker-beat", daemon=True)
        self.worker_name, self.kinds = name, kinds
        self.stopped = threading.Event()

    def run(self) -> None:
        from worker.core.store import store_for

        settings = get_settings()
        records = store_for(settings).records
        while True:
            try:
                records.beat_worker(self.worker_name, self.kinds, os.getpid(), socket.gethostname())
            except Exception:  # noqa: BLE001 - a busy or unreachable database must not end the heartbeat
                log.exception("could not write the worker heartbeat; trying again")
            if self.stopped.wait(settings.heartbeat_seconds):
                break
        try:
            records.remove_worker(self.worker_name)
        except Exception:  # noqa: BLE001 - the row then just goes stale
            log.exception("could not remove the worker heartbeat row")


def queue_kinds(queue_names, prefix: str) -> list[str]:
    """``["gpu"]`` for ``{"bdscreen.gpu"}`` under prefix ``bdscreen``; other queues are left out."""
    return sorted(name[len(prefix) + 1:] for name in queue_names if name.startswith(prefix + "."))


@worker_ready.connect
def _start_beat(sender=None, **_kwargs) -> None:
    global _beat
    settings = get_settings()
    kinds = queue_kinds(sender.app.amqp.queues.consume_from.keys(), settings.queue_prefix)
    _beat = WorkerBeat(sender.hostname, kinds)
    _beat.start()


@worker_shutdown.connect
def _stop_beat(**_kwargs) -> None:
    if _beat is not None:
        _beat.stopped.set()
        _beat.join(timeout=5)
