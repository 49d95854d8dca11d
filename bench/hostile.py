"""The hostile-file corpus through the readers, each file in a fresh process: refusals, canaries, peak memory.

    .venv/bin/python -m bench.hostile [--budget-mb 512] [--address-space-mb 8192]

Generates the corpus of ``tests/hostile/hostile_corpus.py`` (pickles, polyglots, Keras code paths, HDF5 and
ONNX external data, malformed configs, hostile data files) and the size and decompression bombs, then reads
each in its own Python process, as ``bdscreen inspect`` (models) or the upload check (data files: 8 rows
against the tiny model's signature) would, with ``BDSCREEN_MEMORY_BUDGET_MB`` set and an address-space limit
as the workers have. Prints one row per file: the category expected and answered, the process's peak resident
memory (``resource.getrusage``, after importing torch) and the time; then the counts, and whether a canary
payload ran (a file it would have created).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "hostile"))

CHILD = """
import json, resource, sys, time
from pathlib import Path
limit = int(sys.argv[4]) << 20
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import torch
torch.set_num_threads(1)
from worker.core.errors import InputError
from worker.engine.data import read_dataset
from worker.engine.formats import read_model
kind, path, base = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    if kind == "model":
        read_model(path)
    else:
        read_dataset(path, read_model(base).signature, max_samples=8)
    answer = "accepted"
except InputError as error:
    answer = error.category.value
except BaseException as error:
    answer = f"TRACEBACK {type(error).__name__}: {str(error)[:100]}"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"answer": answer, "seconds": time.perf_counter() - start, "peak_mib": peak / 1024,
                  "baseline_mib": before / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-mb", type=float, default=512, help="BDSCREEN_MEMORY_BUDGET_MB for the readers")
    parser.add_argument("--address-space-mb", type=int, default=8192, help="RLIMIT_AS of each reader process")
    args = parser.parse_args()
    from hostile_builders import write_keras
    from hostile_corpus import BOMBS, bomb_cases, hostile_cases

    env = {**os.environ, "BDSCREEN_MEMORY_BUDGET_MB": str(args.budget_mb), "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        folder, canary = Path(tmp) / "corpus", Path(tmp) / "CANARY"
        cases = [*hostile_cases(folder, canary), *bomb_cases(folder)]
        base = write_keras(folder / "base.h5")
        print(f"{'case':40} {'expected':17} {'answered':17} {'peak MiB':>9} {'seconds':>8}")
        wrong = 0
        for case in cases:
            started = time.perf_counter()
            run = subprocess.run([sys.executable, "-c", CHILD, case.kind, str(case.path), str(base),
                                  str(args.address_space_mb)], capture_output=True, text=True, env=env, cwd=ROOT)
            try:
                result = json.loads(run.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                result = {"answer": f"DIED rc={run.returncode} {run.stderr[-200:]}", "peak_mib": float("nan"),
                          "seconds": time.perf_counter() - started}
            wrong += result["answer"] != case.category
            mark = "" if result["answer"] == case.category else "  <-- unexpected"
            bomb = " (bomb)" if case.name in BOMBS else ""
            print(f"{case.name + bomb:40} {case.category:17} {result['answer'][:60]:17} {result['peak_mib']:9.0f} "
                  f"{result['seconds']:8.2f}{mark}")
        print(f"\n{len(cases)} files ({len(BOMBS)} bombs), {len(cases) - wrong} answered as expected, {wrong} not; "
              f"memory budget {args.budget_mb:g} MiB, address-space limit {args.address_space_mb} MiB; "
              f"canary payload ran: {'YES' if canary.exists() else 'no'}")


if __name__ == "__main__":
    main()
