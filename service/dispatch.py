"""The gateway's side of the queue: sending tasks by name, waiting for the upload check, the reconcile loop.

Tasks are sent by name (``app.send_task``), so the gateway never imports :mod:`worker.tasks` nor torch.
"""

import logging
import time

import anyio
from anyio import to_thread
from kombu.exceptions import OperationalError

from schemas.api import UploadCheck
from worker.core.reconcile import reconcile
from worker.core.settings import QUEUE_KINDS, Settings
from worker.core.store import Store

log = logging.getLogger("bdscreen.gateway")
#: How often POST looks at the record while the upload check runs.
VALIDATION_POLL_SECONDS = 0.02
RETENTION_EVERY_SECONDS = 300


class Dispatcher:
    def __init__(self, settings: Settings, store: Store) -> None:
        from worker.core.celery_app import app

        self.app, self.settings, self.store = app, settings, store
        self._last_retention = 0.0

    def send(self, task: str, scan_id: str) -> None:
        """Send a task (routed by ``task_routes``); raises kombu's OperationalError when the broker is down."""
        self.app.send_task(task, args=[scan_id], retry=True,
                           retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})

    def send_scan(self, scan_id: str) -> None:
        self.send("bdscreen.scan", scan_id)
        self.store.records.mark_dispatched(scan_id)

    def queue_depth(self, kind: str) -> int:
        """Messages waiting in ``<prefix>.<kind>``; 0 for a queue the broker has not seen yet."""
        with self.app.connection_for_read() as connection:
            try:
                return connection.default_channel.queue_declare(self.settings.queue(kind), passive=True).message_count
            except Exception:  # noqa: BLE001 - kombu raises a transport-specific "no such queue"
                return 0

    def broker_reachable(self) -> tuple[bool, str]:
        try:
            with self.app.connection_for_read() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
                self.queue_depth("gpu")
        except (OperationalError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, "ok"

    def missing_workers(self) -> list[str]:
        """The queue kinds (gpu, cpu) with no worker whose heartbeat is younger than the lease."""
        live = self.store.records.live_workers(self.settings.worker_lease_seconds)
        return [kind for kind in QUEUE_KINDS if not live.get(kind)]

    async def wait_for_validation(self, scan_id: str) -> UploadCheck | None:
        """The upload check's outcome from the record, or None when it did not come within the timeout."""
        deadline = time.monotonic() + self.settings.validate_timeout
        while True:
            record = await to_thread.run_sync(self.store.records.get, scan_id)
            check = None if record is None else record.validation
            done = check is not None and check.finished
            if record is None or done or time.monotonic() >= deadline:
                return check if done else None
            await anyio.sleep(VALIDATION_POLL_SECONDS)

    def reconcile_once(self) -> list[str]:
        lost = reconcile(self.store, self.settings, self.send_scan, lambda: self.queue_depth("gpu"))
        if lost:
            log.warning("re-queued %d lost scan(s): %s", len(lost), ", ".join(lost))
        if time.monotonic() - self._last_retention > RETENTION_EVERY_SECONDS:
            self._last_retention = time.monotonic()
            self.store.sweep_leftovers()
            expired = self.store.expire(self.settings.retention_days)
            if expired:
                log.info("deleted %d scan(s) past the retention of %g days", expired, self.settings.retention_days)
        return lost

    async def reconcile_forever(self) -> None:
        while True:
            await anyio.sleep(self.settings.reconcile_seconds)
            try:
                await to_thread.run_sync(self.reconcile_once)
            except Exception:  # noqa: BLE001 - a broker outage must not end the loop
                log.exception("reconcile round failed; trying again in %g s", self.settings.reconcile_seconds)
