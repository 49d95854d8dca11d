"""Poison messages: an upload check that kills its worker is retried a bounded number of times, then refused.

The worker deaths are real: the check runs in a child process that blocks reading a data file (a FIFO put in
place of the stored blob) and is killed with SIGKILL, as the kernel's OOM killer would kill a worker. The record
keeps the count of checks started, so the redelivered message (acks_late) is refused once the count is spent.
"""

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from schemas.api import ScanCreate, ScanState, UploadCheck
from worker.core.limits import limit_address_space
from worker.core.settings import Settings
from worker.core.store import ScanRecord, open_store
from worker.jobs import execute_scan, validate_scan

ROOT = Path(__file__).resolve().parents[2]
# The address-space limit is not set where a GPU is visible (CUDA reserves far more than it uses).
needs_no_gpu = pytest.mark.skipif(bool(glob.glob("/dev/nvidia[0-9]*")), reason="RLIMIT_AS is not set beside a GPU")
CHILD = "import sys; from pathlib import Path; from worker.core.store import open_store; " \
        "from worker.jobs import validate_scan; " \
        "validate_scan(open_store(Path(sys.argv[1])), sys.argv[2], int(sys.argv[3]))"


def add_scan(store, tmp_path: Path, fixtures: Path) -> ScanRecord:
    # 40 samples: enough for the repair's split, which the upload check now checks.
    np.savez(tmp_path / "clean.npz", x=np.zeros((40, 28, 28), np.uint8), y=np.zeros(40, np.int64))
    uploads = []
    with store.blobs.lock():
        for name, path in {"model": fixtures / "mnist/csaw_c_clean_label_bd_net.h5",
                           "clean_data": tmp_path / "clean.npz"}.items():
            writer = store.blobs.writer()
            writer.write(path.read_bytes())
            uploads.append({"field": name, "filename": path.name, "bytes": writer.size,
                            "sha256": store.blobs.commit(writer)})
        return store.records.insert(ScanRecord(id=f"scan{time.monotonic_ns()}", owner="t", state=ScanState.queued,
                                               options=ScanCreate(detectors=[]), uploads=uploads,
                                               created_at=time.time()))


def kill_a_check_mid_way(store, storage: Path, scan_id: str, attempts: int, max_attempts: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(storage), scan_id, str(max_attempts)],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while store.records.get(scan_id).validation != UploadCheck(attempts=attempts):  # the store hands back models
            assert child.poll() is None and time.monotonic() < deadline, "the check ended instead of blocking"
            time.sleep(0.05)
        time.sleep(0.3)  # let it reach the blocking read
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_a_check_that_kills_its_worker_is_refused_after_max_attempts(tmp_path, fixtures):
    storage = tmp_path / "storage"
    store = open_store(storage)
    record = add_scan(store, tmp_path, fixtures)
    data = store.input_path(record, "clean_data")
    data.unlink()
    os.mkfifo(data)  # reading it blocks forever: the check hangs until it is killed
    for attempt in (1, 2):
        kill_a_check_mid_way(store, storage, record.id, attempt, max_attempts=2)
    validate_scan(store, record.id, max_attempts=2)  # the third delivery: refused without reading anything
    outcome = UploadCheck.model_validate(store.records.get(record.id).validation)
    assert outcome.ok is False and outcome.category == "too-large" and "started 2 times" in outcome.message
    # The gateway had queued the scan anyway (it stopped waiting): the scan fails with the same reason, unrun.
    settings = Settings(storage=storage, max_attempts=2)
    assert execute_scan(store, settings, record.id) == ScanState.failed
    assert store.records.get(record.id).error["message"] == outcome.message


def test_a_finished_check_is_not_run_again(tmp_path, fixtures):
    store = open_store(tmp_path / "storage")
    record = add_scan(store, tmp_path, fixtures)
    validate_scan(store, record.id)
    assert UploadCheck.model_validate(store.records.get(record.id).validation).ok is True
    store.input_path(record, "clean_data").unlink()  # a second run would now fail
    validate_scan(store, record.id)
    assert UploadCheck.model_validate(store.records.get(record.id).validation).ok is True


@needs_no_gpu
def test_the_address_space_limit_turns_a_runaway_allocation_into_memory_error():
    code = ("import sys; from worker.core.limits import limit_address_space; assert limit_address_space(2048); "
            "import numpy as np\ntry:\n    np.ones(1 << 31)\nexcept MemoryError:\n    sys.exit(42)")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 42


@pytest.mark.parametrize("megabytes", [0])
def test_no_limit_when_disabled(megabytes):
    assert limit_address_space(megabytes) is False


SCAN_CHILD = """
import sys
from pathlib import Path
from worker.core.limits import limit_address_space
assert limit_address_space(2048)
from worker.core.settings import Settings
from worker.core.store import open_store
from worker.jobs import execute_scan
storage = Path(sys.argv[1])
print(execute_scan(open_store(storage), Settings(storage=storage), sys.argv[2]))
"""


@needs_no_gpu
def test_an_unforeseen_bomb_under_the_address_space_limit_fails_its_scan(tmp_path, fixtures):
    """With the memory budget set out of the way, the data file's 600 MB of fill value (2.4 GB as float32) meets
    the address-space limit: MemoryError, the scan fails as too-large, and the process lives to say so."""
    import h5py

    storage = tmp_path / "storage"
    store = open_store(storage)
    record = add_scan(store, tmp_path, fixtures)
    bomb = store.input_path(record, "clean_data")
    bomb.unlink()
    rows = 600_000_000 // 784
    with h5py.File(bomb, "w") as h5:
        h5.create_dataset("data", shape=(rows, 28, 28), dtype="u1", fillvalue=3, chunks=(4096, 28, 28))
        h5.create_dataset("label", shape=(rows,), dtype="u1", fillvalue=1, chunks=(1 << 16,))
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PYTHONPATH=str(ROOT), BDSCREEN_MEMORY_BUDGET_MB="100000")
    result = subprocess.run([sys.executable, "-c", SCAN_CHILD, str(storage), record.id], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("failed")
    error = store.records.get(record.id).error
    assert error["category"] == "too-large" and "memory" in error["message"]
