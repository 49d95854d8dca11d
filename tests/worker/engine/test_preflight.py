"""Preflight: what can be checked before any work is refused before any work, in the CLI's words."""

import numpy as np
import pytest

from schemas.scan import ScanOptions
from worker.core.errors import DataError, OptionError
from worker.engine.formats import read_model
from worker.engine.preflight import preflight
from worker.engine.scan import ScanInputs, run_scan


@pytest.fixture(scope="module")
def mnist(fixtures):
    path = fixtures / "mnist/csaw_c_clean_label_bd_net.h5"
    return path, read_model(path)


def digits(folder, count: int):
    path = folder / f"digits{count}.npz"
    np.savez(path, x=np.zeros((count, 28, 28), np.uint8), y=np.arange(count) % 10)
    return path


def test_mean_and_std_must_fit_the_models_channels(mnist):
    path, model = mnist
    with pytest.raises(OptionError, match=r"--mean/--std/--bgr do not fit the model: mean has 3 values"):
        preflight(model, ScanInputs(path), ScanOptions.model_validate({"preprocessing": {"mean": [0, 0, 0]}}))
    assert preflight(model, ScanInputs(path), ScanOptions()).samples == {}


def test_too_few_clean_samples_for_the_split_are_refused_before_loading_them(mnist, tmp_path):
    path, model = mnist
    with pytest.raises(DataError, match=r"--clean-data has 25 samples: too few .*held-out part \(30%\) 8"):
        preflight(model, ScanInputs(path, clean_data=digits(tmp_path, 25)), ScanOptions())
    checked = preflight(model, ScanInputs(path, clean_data=digits(tmp_path, 40)), ScanOptions())
    assert checked.samples == {"clean_data": 40}
    # 28 decision samples are too few to hold out a validation part for fine-tuning: the repair still runs (and
    # says so in its warnings), so the preflight accepts them.
    tuned = preflight(model, ScanInputs(path, clean_data=digits(tmp_path, 40)),
                      ScanOptions.model_validate({"repair": {"fine_tune": True}}))
    assert tuned.samples == {"clean_data": 40}


def test_data_without_clean_data_and_a_missing_layer_are_refused(mnist, tmp_path):
    path, model = mnist
    with pytest.raises(OptionError, match="--eval-data or --poisoned-data given without --clean-data"):
        preflight(model, ScanInputs(path, eval_data=digits(tmp_path, 40)), ScanOptions())
    with pytest.raises(OptionError, match="--layer: the model has no layer named 'conv_9'"):
        preflight(model, ScanInputs(path, clean_data=digits(tmp_path, 40)),
                  ScanOptions.model_validate({"repair": {"layer": "conv_9"}}))


def test_named_detectors_that_cannot_judge_are_refused_unnamed_ones_reported(fixtures, tmp_path):
    faces = fixtures / "ytf/sunglasses_bd_net.h5"
    checked = preflight(read_model(faces), ScanInputs(faces), ScanOptions())
    assert "ulp" in checked.not_applicable
    with pytest.raises(OptionError, match="--detectors names detectors that cannot judge this model"):
        run_scan(ScanInputs(faces), ScanOptions(), tmp_path, strict_detectors=True)
    # Not strict (the detectors were not named by the user): the scan runs and reports why ULP could not judge.
    lenient = run_scan(ScanInputs(faces), ScanOptions(detectors=["ulp"]), tmp_path / "lenient")
    assert lenient.verdict == "inconclusive" and not lenient.findings[0].applicable
