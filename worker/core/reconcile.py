"""Finding scans whose message was lost, and sending it again: the records are the truth, the broker is not.

A message can be lost when Redis restarts (it keeps nothing on disk here), when a worker is killed while
the embedded broker (which has no acknowledgements) had handed it the scan, or when the gateway dies between
storing a scan and queueing it. Three rules find those scans; sending a scan twice is harmless, because a
scan attempt first claims the record (see :mod:`worker.jobs`):

1. running, but its heartbeat is older than the lease: its worker is gone;
2. queued and never dispatched, for longer than the upload check may take: its gateway died;
3. queued and dispatched more than a lease ago while the gpu queue is empty: its message is gone.

Each rule skips scans dispatched within the last lease, so a re-sent scan is not sent again every round.
"""

import time
from collections.abc import Callable

from sqlalchemy import or_

from worker.core.settings import Settings
from worker.core.store import Store
from worker.core.store.schema import scans


def lost_scans(store: Store, settings: Settings, gpu_queue_depth: Callable[[], int]) -> list[str]:
    now = time.time()
    lease = settings.lease_seconds
    fresh = now - lease
    records = store.records
    live, running, queued_ = scans.c.deleted_at.is_(None), scans.c.state == "running", scans.c.state == "queued"
    found = records.ids(live, running, scans.c.heartbeat_at < fresh,
                        or_(scans.c.dispatched_at.is_(None), scans.c.dispatched_at < fresh))
    found += records.ids(live, queued_, scans.c.dispatched_at.is_(None),
                         scans.c.created_at < now - settings.validate_timeout - lease)
    queued = records.ids(live, queued_, scans.c.dispatched_at < fresh)
    if queued and gpu_queue_depth() == 0:
        found += queued
    return found


def reconcile(store: Store, settings: Settings, send_scan: Callable[[str], None],
              gpu_queue_depth: Callable[[], int]) -> list[str]:
    """Send every lost scan again; returns their ids."""
    lost = lost_scans(store, settings, gpu_queue_depth)
    for scan_id in lost:
        send_scan(scan_id)
    return lost
