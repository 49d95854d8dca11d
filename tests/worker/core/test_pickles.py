"""The pickle recogniser follows the unpickler: what loading would run decides, not how the stream ends."""

import io
import pickle
import random

import numpy as np
import pytest

from worker.core.pickles import pickle_protocol


class Call:
    def __reduce__(self):
        return print, ("never printed",)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_calling_pickle_is_found_however_it_ends(protocol):
    stream = pickle.dumps(Call(), protocol=protocol)
    assert pickle_protocol(stream) == protocol
    assert pickle_protocol(stream[:-1] + b"\xff") == protocol  # STOP replaced by an unknown opcode
    assert pickle_protocol(stream[:len(stream) // 2 + 4]) is not None  # cut short after the import


def test_header_less_protocol_4_is_found():
    stream = pickle.dumps(Call(), protocol=4)
    assert pickle_protocol(stream[2:]) == 4  # without PROTO, starting at FRAME
    assert pickle_protocol(stream[11:]) == 4  # without PROTO and FRAME


def test_numpy_magic_is_not_a_pickle():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    assert pickle_protocol(buffer.getvalue()) is None  # STACK_GLOBAL on an empty stack: the unpickler stops


def test_random_bytes_are_rarely_taken_for_a_pickle():
    flagged = sum(pickle_protocol(random.Random(seed).randbytes(4096)) is not None for seed in range(2000))
    assert flagged <= 5  # only streams that start with a PROTO header, as pickle.load would read them
