"""The embedded broker's candidates under concurrent puts and takes: kombu's filesystem transport as it ships,
and bdscreen's with the atomic put (worker.core.embedded_broker).

    .venv/bin/python -m bench.broker [--messages 300] [--processes 3] [--repeats 3]

For each transport, ``--processes`` producer processes each put ``--messages`` messages of 20 KB while as
many consumer processes take them (each with its own connection, polling every 1 ms), on a fresh folder;
counted: messages taken intact, messages lost to an error in the take (kombu's stock put creates the file
before it writes it, so a take can read it empty), and messages left behind; ``--repeats`` fresh runs each.
"""

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

from kombu import Connection

from worker.core import embedded_broker

PAD = "x" * 20000


def _connection(root: Path, kind: str) -> Connection:
    transport = embedded_broker.Transport if kind == "atomic" else "filesystem"
    return Connection("filesystem://", transport=transport,
                      transport_options=embedded_broker.transport_options(root, 0.001))


def _produce(root: Path, kind: str, first: int, count: int) -> None:
    with _connection(root, kind) as connection:
        queue = connection.SimpleQueue("bench")
        for number in range(first, first + count):
            queue.put({"number": number, "pad": PAD})


def _consume(root: Path, kind: str, results, done) -> None:
    taken = errors = 0
    with _connection(root, kind) as connection:
        queue = connection.SimpleQueue("bench")
        while True:
            try:
                message = queue.get(timeout=0.5)
            except queue.Empty:
                if done.is_set():
                    break
                continue
            except Exception:  # noqa: BLE001 - counted: the message is gone
                errors += 1
                continue
            taken += message.payload.get("pad") == PAD
            message.ack()
    results.put((taken, errors))


def run(kind: str, messages: int, processes: int) -> tuple[int, int, int, float]:
    """(taken intact, lost to errors, left in the queue, seconds)."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-broker-{kind}-"))
    embedded_broker.make_folders(root)
    context = multiprocessing.get_context("spawn")
    results, done = context.Queue(), context.Event()
    consumers = [context.Process(target=_consume, args=(root, kind, results, done)) for _ in range(processes)]
    producers = [context.Process(target=_produce, args=(root, kind, k * messages, messages))
                 for k in range(processes)]
    start = time.perf_counter()
    for process in consumers + producers:
        process.start()
    for process in producers:
        process.join()
    done.set()
    outcomes = [results.get() for _ in consumers]
    for process in consumers:
        process.join()
    left = len(list((root / "queue").iterdir()))
    return sum(t for t, _ in outcomes), sum(e for _, e in outcomes), left, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300, help="per producer")
    parser.add_argument("--processes", type=int, default=3, help="producers, and as many consumers")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sent = args.messages * args.processes
    print(f"bench.broker: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.processes} producers "
          f"x {args.messages} messages of 20 KB, {args.processes} consumers, {args.repeats} runs each")
    print(f"{'transport':<38} {'taken intact':>14} {'lost':>8} {'left':>6} {'seconds':>8}")
    for kind, name in (("stock", "kombu filesystem (as shipped)"), ("atomic", "bdscreen embedded (atomic put)")):
        for _ in range(args.repeats):
            taken, lost, left, seconds = run(kind, args.messages, args.processes)
            print(f"{name:<38} {f'{taken}/{sent}':>14} {lost:>8} {left:>6} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
