"""The hostile-file corpus (generated in ``hostile_corpus.py``) through the readers: typed refusals, no payload runs.

Canary payloads prove it: a pickle here creates a file when unpickled, and the tests first show that it does
(so the files are real attacks), then that no reader ever lets it run.
"""

import pickle
import tracemalloc

import pytest
from hostile_builders import write_keras
from hostile_corpus import BOMBS, Canary, bomb_cases, canary_pickle, hostile_cases

from worker.core.errors import InputError
from worker.core.settings import use_settings
from worker.engine.data import read_dataset
from worker.engine.formats import read_model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    canary = folder / "CANARY"
    signature = read_model(write_keras(folder / "base.h5")).signature
    return hostile_cases(folder / "files", canary), canary, signature


def answer(case, signature) -> tuple[str, str]:
    """The category (or 'accepted') and message bdscreen gives for one case; anything else escapes the test."""
    try:
        if case.kind == "model":
            read_model(case.path)
        else:
            read_dataset(case.path, signature, max_samples=8)
    except InputError as error:
        return error.category.value, error.message
    return "accepted", ""


def test_the_canary_payloads_are_live(tmp_path):
    """Without bdscreen in the way, the payloads run: unpickling one, or a polyglot's user block, makes the file."""
    proof = tmp_path / "proof"
    pickle.loads(canary_pickle(proof, 2))
    assert proof.exists()
    polyglot = next(c for c in hostile_cases(tmp_path / "files", tmp_path / "polyglot-proof")
                    if c.name == "hdf5-userblock-pickle")
    with polyglot.path.open("rb") as file:
        pickle.load(file)
    assert (tmp_path / "polyglot-proof").exists()


def test_every_hostile_file_gets_its_typed_refusal_and_no_payload_runs(corpus):
    cases, canary, signature = corpus
    answers = {case.name: answer(case, signature)[0] for case in cases}
    assert answers == {case.name: case.category for case in cases}
    assert not canary.exists()
    assert len(cases) >= 45


@pytest.mark.parametrize("name", ["hdf5-userblock-pickle", "hdf5-userblock-torch-zip", "hdf5-appended-zip",
                                  "onnx-appended-zip"])
def test_polyglots_are_named_as_such(corpus, name):
    cases, _, signature = corpus
    category, message = answer(next(c for c in cases if c.name == name), signature)
    assert category == "refused-model" and "polyglot" in message


def test_external_data_refusal_shows_a_bounded_location(corpus):
    cases, _, signature = corpus
    _, message = answer(next(c for c in cases if c.name == "onnx-external-5000-chars"), signature)
    assert "self-contained" in message and len(message) < 600


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setenv("BDSCREEN_MEMORY_BUDGET_MB", "256")
    use_settings(None)
    yield 256
    monkeypatch.delenv("BDSCREEN_MEMORY_BUDGET_MB")
    use_settings(None)


def test_bombs_are_refused_before_they_allocate(tmp_path, small_budget):
    """Each bomb declares far more than the budget in a small file; the refusal costs a few MB at most."""
    signature = read_model(write_keras(tmp_path / "base.h5")).signature
    for case in bomb_cases(tmp_path):
        tracemalloc.start()
        category, message = answer(case, signature)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert category == "too-large", (case.name, message)
        assert peak < 32 << 20, (case.name, peak)
    assert {case.name for case in bomb_cases(tmp_path)} == set(BOMBS)


def test_a_canary_object_array_in_data_never_unpickles(tmp_path):
    import numpy as np

    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([Canary(tmp_path / "ran")], dtype=object), y=np.zeros(1))
    signature = read_model(write_keras(tmp_path / "base.h5")).signature
    with pytest.raises(InputError, match="Python objects"):
        read_dataset(path, signature)
    assert not (tmp_path / "ran").exists()


def test_the_cli_refuses_every_hostile_model_with_exit_2_and_its_reason(corpus, capsys):
    from cli.main import main

    cases, canary, _ = corpus
    for case in (c for c in cases if c.kind == "model"):
        assert main(["inspect", str(case.path)]) == 2, case.name
        err = capsys.readouterr().err
        assert err.startswith(f"bdscreen: {case.category}: ") and "Traceback" not in err, (case.name, err)
    assert not canary.exists()
