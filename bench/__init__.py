"""Benchmarks: one command each (``python -m bench.NAME``), printing a table; shared helpers below."""

import statistics
import time
from collections.abc import Callable
from pathlib import Path

#: The real fixtures, ``../shared/fixtures`` from the project root.
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
