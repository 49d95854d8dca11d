"""The embedded broker: concurrent puts and takes lose and corrupt nothing; a bad file does not stop a worker.

Real processes on a real folder: three producers and three consumers, each with its own kombu connection
(kombu's stock filesystem transport loses about one message in seven to ``JSONDecodeError`` under this
load, see bench/service.py).
"""

import multiprocessing
from pathlib import Path

from kombu import Connection

from worker.core import embedded_broker

PRODUCERS, CONSUMERS, PER_PRODUCER = 3, 3, 67
PAD = "x" * 20000  # a write of this size is not one syscall's worth of page: a torn read would show


def _connection(root: Path) -> Connection:
    return Connection("filesystem://", transport=embedded_broker.Transport,
                      transport_options=embedded_broker.transport_options(root, 0.001))


def _produce(root: Path, first: int) -> None:
    with _connection(root) as connection:
        queue = connection.SimpleQueue("soak")
        for number in range(first, first + PER_PRODUCER):
            queue.put({"number": number, "pad": PAD})


def _consume(root: Path, results, producers_done) -> None:
    taken, errors = [], []
    with _connection(root) as connection:
        queue = connection.SimpleQueue("soak")
        while True:
            try:
                message = queue.get(timeout=0.5)
            except queue.Empty:
                if producers_done.is_set():
                    break
                continue
            except Exception as exc:  # noqa: BLE001 - counted: the test fails on any
                errors.append(repr(exc))
                continue
            taken.append(message.payload["number"] if message.payload["pad"] == PAD else -1)
            message.ack()
    results.put((taken, errors))


def test_concurrent_puts_and_takes_lose_and_corrupt_nothing(tmp_path):
    embedded_broker.make_folders(tmp_path)
    context = multiprocessing.get_context("spawn")
    results, producers_done = context.Queue(), context.Event()
    consumers = [context.Process(target=_consume, args=(tmp_path, results, producers_done)) for _ in range(CONSUMERS)]
    producers = [context.Process(target=_produce, args=(tmp_path, k * PER_PRODUCER)) for k in range(PRODUCERS)]
    for process in consumers + producers:
        process.start()
    for process in producers:
        process.join(timeout=120)
    producers_done.set()
    outcomes = [results.get(timeout=120) for _ in consumers]
    for process in consumers:
        process.join(timeout=30)
    taken = sorted(number for numbers, _ in outcomes for number in numbers)
    assert [error for _, errors in outcomes for error in errors] == []
    assert taken == list(range(PRODUCERS * PER_PRODUCER))  # each exactly once, none corrupt (-1)
    assert not list((tmp_path / "queue").iterdir()) and not list((tmp_path / "corrupt").iterdir())
    assert not list((tmp_path / "incoming").iterdir())  # no temporary file left behind


def test_an_undecodable_message_is_set_aside_and_the_next_one_taken(tmp_path):
    embedded_broker.make_folders(tmp_path)
    with _connection(tmp_path) as connection:
        queue = connection.SimpleQueue("soak")
        (tmp_path / "queue" / "000000000000001_torn.soak.msg").write_bytes(b"")  # older, so taken first
        queue.put({"number": 7, "pad": PAD})
        message = queue.get(timeout=2)
        assert message.payload["number"] == 7
        message.ack()
    assert [p.name for p in (tmp_path / "corrupt").iterdir()] == ["000000000000001_torn.soak.msg"]
