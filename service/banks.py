"""The litmus banks the ULP detector can use, read without torch (``worker.detect.bank`` needs only h5py).

The folders are those of :func:`worker.detect.detector.banks_dir` (the shipped ``worker/detect/banks`` and
``$BDSCREEN_BANKS``), which cannot be imported here because its module imports torch; keep the two in step.
Banks are cached by path, size and modification time.
"""

import os
from functools import lru_cache
from pathlib import Path

import worker.detect
from schemas.api import BankPublic

SHIPPED_BANKS = Path(worker.detect.__file__).resolve().parent / "banks"


def bank_folders() -> list[Path]:
    extra = os.environ.get("BDSCREEN_BANKS", "")
    return [SHIPPED_BANKS, *(Path(folder) for folder in extra.split(os.pathsep) if folder)]


@lru_cache(maxsize=256)
def _describe(path: Path, size: int, mtime: float) -> BankPublic | None:
    from worker.detect.bank import BankError, load_bank

    try:
        bank = load_bank(path)
    except BankError:
        return None
    return BankPublic(name=bank.name, num_classes=bank.num_classes, patterns=len(bank.patterns),
                      test_auc=bank.test_auc, threshold=bank.threshold)


def list_banks() -> list[BankPublic]:
    found = []
    for folder in bank_folders():
        for path in sorted(folder.glob("*.h5")) if folder.is_dir() else []:
            stat = path.stat()
            bank = _describe(path, stat.st_size, stat.st_mtime)
            if bank is not None:
                found.append(bank)
    return found
