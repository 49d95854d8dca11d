"""Prometheus text exposition, built from the scan records (so every gateway reports the same figures).

- ``bdscreen_scans{state}``: scans by state (gauge);
- ``bdscreen_stage_duration_seconds{stage}``: engine stage durations of ended scans (histogram);
- ``bdscreen_queue_depth{queue}``: messages waiting on each queue (gauge);
- ``bdscreen_upload_bytes_total``: request bytes received by POST /v1/scans (counter).
"""

from schemas.api import ScanState
from worker.core.store import Store

STAGE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(store: Store, queue_depths: dict[str, int]) -> str:
    lines = ["# HELP bdscreen_scans Scans by state.", "# TYPE bdscreen_scans gauge"]
    counts = store.records.state_counts()
    lines += [f'bdscreen_scans{{state="{s.value}"}} {counts.get(s.value, 0)}' for s in ScanState]
    lines += ["# HELP bdscreen_stage_duration_seconds Engine stage durations of ended scans.",
              "# TYPE bdscreen_stage_duration_seconds histogram"]
    for stage, (cumulative, count, total) in sorted(store.records.stage_histogram(STAGE_BUCKETS).items()):
        label = _escape(stage)
        for bound, n in zip(STAGE_BUCKETS, cumulative, strict=True):
            lines.append(f'bdscreen_stage_duration_seconds_bucket{{stage="{label}",le="{bound:g}"}} {n}')
        lines.append(f'bdscreen_stage_duration_seconds_bucket{{stage="{label}",le="+Inf"}} {count}')
        lines.append(f'bdscreen_stage_duration_seconds_sum{{stage="{label}"}} {total:.6f}')
        lines.append(f'bdscreen_stage_duration_seconds_count{{stage="{label}"}} {count}')
    lines += ["# HELP bdscreen_queue_depth Messages waiting on a queue.", "# TYPE bdscreen_queue_depth gauge"]
    lines += [f'bdscreen_queue_depth{{queue="{_escape(q)}"}} {n}' for q, n in sorted(queue_depths.items())]
    lines += ["# HELP bdscreen_upload_bytes_total Request bytes received by POST /v1/scans.",
              "# TYPE bdscreen_upload_bytes_total counter",
              f"bdscreen_upload_bytes_total {store.records.counter('upload_bytes'):.0f}"]
    return "\n".join(lines) + "\n"
