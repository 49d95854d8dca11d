"""``bdscreen banks``: listing banks, and training one refuses bad input with exit code 2 before any work."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.banks import add_banks_parser
from worker.core.errors import InputError

MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "mnist"
IDX = ["--data", str(MNIST / "t10k-images-idx3-ubyte.gz"), "--labels", str(MNIST / "t10k-labels-idx1-ubyte.gz")]


def run(argv: list[str]) -> int:
    """The CLI's contract (cli.main.main): parse, run, and turn a refused input into its message and exit 2."""
    parser = argparse.ArgumentParser(prog="bdscreen")
    add_banks_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except InputError as exc:
        print(f"bdscreen: {exc.category.value}: {exc.message}", file=__import__("sys").stderr)
        return 2


def test_banks_list_shows_the_shipped_mnist_bank(capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv("BDSCREEN_BANKS", raising=False)
    assert run(["banks", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [bank["name"] for bank in listed["banks"]] == ["mnist-28x28x1"]
    assert listed["banks"][0]["input_shape"] == [28, 28, 1] and listed["refused"] == []
    assert listed["banks"][0]["architectures"] == [{"activations": ["relu"], "convolutional": True}]
    assert run(["banks", "list"]) == 0
    assert "mnist-28x28x1            28x28x1" in capsys.readouterr().out


def test_banks_list_exits_2_naming_a_refused_bank(capsys, monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "evil.h5").write_bytes(b"\x80\x04\x95 not a bank")
    monkeypatch.setenv("BDSCREEN_BANKS", str(tmp_path))
    assert run(["banks", "list"]) == 2
    captured = capsys.readouterr()
    assert "mnist-28x28x1" in captured.out
    assert f"bdscreen: bad-data: refused litmus bank {tmp_path / 'evil.h5'}: litmus bank evil.h5 is not a " \
           "readable HDF5 file" in captured.err


def _npz(path: Path, scale: float = 1.0) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=(rng.uniform(0, 255, (40, 28, 28)) * scale).astype(np.float32), y=rng.integers(0, 10, 40))
    return path


@pytest.mark.parametrize(("extra", "message"), [
    (["--data", "missing.npz", "--classes", "10"], "--data: no such file"),
    (["--classes", "10", "--families", "resnet152"], "unknown architecture families ['resnet152']"),
    (["--classes", "10", "--patterns", "0"], "ULP needs 1 to 256 patterns"),
    (["--classes", "10", "--models", "5"], "--models must be at least 10"),
    (["--classes", "1"], "--classes must be at least 2"),
    (["--classes", "5"], "the labels go up to 9 but --classes is 5"),
    (["--classes", "10", "--families", "own"], "the 'own' family needs --model MODEL"),
    (["--classes", "10", "--trigger-kinds", "sunglasses"], "unknown trigger kinds ['sunglasses']"),
    (["--classes", "10", "--target-fpr", "1.5"], "the target false-positive rate must lie in (0, 1)"),
    (["--classes", "10", "--train-images", "9990"], "the zoo needs 9990 training and 1000 evaluation images"),
])
def test_banks_train_refuses_bad_options_with_exit_2(extra, message, capsys, tmp_path: Path) -> None:
    argv = ["banks", "train", *IDX, "--out", str(tmp_path / "bank.h5"), *extra]
    if extra[0] == "--data":
        argv = ["banks", "train", "--out", str(tmp_path / "bank.h5"), "--data", str(tmp_path / extra[1]), *extra[2:]]
    assert run(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bank.h5").exists()


@pytest.mark.parametrize(("shape", "scale", "message"), [
    (None, 1.0, "--input-shape HxWxC is needed for HDF5 and NPZ data"),
    ("28x28", 1.0, "--input-shape must be HxWxC with 1 or 3 channels"),
    ("32x32x1", 1.0, "The data has per-sample shape (28, 28) but the model takes (32, 32, 1)"),
    ("28x28x1", 1 / 255, "banks train needs raw pixels (0-255)"),
])
def test_banks_train_refuses_bad_data_with_exit_2(shape, scale, message, capsys, tmp_path: Path) -> None:
    argv = ["banks", "train", "--data", str(_npz(tmp_path / "d.npz", scale)), "--classes", "10",
            "--out", str(tmp_path / "bank.h5")] + ([] if shape is None else ["--input-shape", shape])
    assert run(argv) == 2
    assert message in capsys.readouterr().err


def test_banks_train_refuses_an_output_folder_that_does_not_exist(capsys, tmp_path: Path) -> None:
    assert run(["banks", "train", *IDX, "--classes", "10", "--out", str(tmp_path / "no" / "b.h5")]) == 2
    assert "--out: folder" in capsys.readouterr().err


def test_banks_train_rejects_unparsable_numbers_with_argparse_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(["banks", "train", *IDX, "--classes", "ten", "--out", "b.h5"])
    assert exit_.value.code == 2


def test_banks_train_writes_a_bank_that_lists(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BDSCREEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BDSCREEN_BANKS", str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = run(["banks", "train", *IDX, "--classes", "10", "--out", str(tmp_path / "tiny.h5"), "--models", "12",
                    "--families", "cnn1-bn", "--train-images", "96", "--eval-images", "64", "--epochs", "1",
                    "--ulp-epochs", "2", "--patterns", "2", "--min-attack-success", "0", "--max-accuracy-gap", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    assert run(["banks", "list", "--json"]) == 0
    listed = {bank["name"]: bank for bank in json.loads(capsys.readouterr().out)["banks"]}
    assert listed["tiny"]["patterns"] == 2 and listed["tiny"]["families"] == ["cnn1-bn"]
