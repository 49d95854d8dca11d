"""The litmus banks the ULP detector can use, read without torch (``worker.core.bankfiles`` needs only h5py).

The folders come from :func:`worker.core.bankfiles.bank_folders`, the rule the engine's detector uses too.
Banks are cached by path, size and modification time.
"""

from functools import lru_cache
from pathlib import Path

from schemas.api import BankPublic
from worker.core.bankfiles import BankError, bank_folders, load_bank


@lru_cache(maxsize=256)
def _describe(path: Path, size: int, mtime: float) -> BankPublic | None:
    try:
        bank = load_bank(path)
    except BankError:
        return None
    return BankPublic(name=bank.name, num_classes=bank.num_classes, patterns=len(bank.patterns),
                      test_auc=bank.test_auc, threshold=bank.threshold,
                      architectures=bank.provenance.get("architectures"))


def list_banks() -> list[BankPublic]:
    found = []
    for folder in bank_folders():
        for path in sorted(folder.glob("*.h5")) if folder.is_dir() else []:
            stat = path.stat()
            bank = _describe(path, stat.st_size, stat.st_mtime)
            if bank is not None:
                found.append(bank)
    return found
