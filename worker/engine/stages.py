"""What one scan works on and how it reports: its input files, and the timing and progress of its stages.

Kept apart from :mod:`worker.engine.scan` (which orchestrates) so that the stages it calls (the repair pipeline)
can take these without importing the orchestrator.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: Called with (stage, fraction of the whole scan done).
ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class ScanInputs:
    """The files of one scan; data files hold raw values (see :mod:`worker.engine.data`)."""

    model: Path
    architecture: Path | None = None
    clean_data: Path | None = None
    eval_data: Path | None = None
    poisoned_data: Path | None = None
    #: The model's file name as the user sent it (titles the repair plot); default: the path's name.
    model_name: str | None = None


class Stages:
    """Times the stages of a scan and reports progress."""

    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress = progress or (lambda stage, fraction: None)
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, start: float) -> Iterator[None]:
        self.progress(name, start)
        began = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - began, 4)


