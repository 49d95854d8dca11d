"""MM-BD on a hand-planted backdoor and its clean twin, with no clean data at all."""

import numpy as np
import torch

from tests.worker.engine.detect.planted import PREPROCESSING, TARGET, planted_model
from worker.engine.detect.base import DetectionContext
from worker.engine.detect.margins import MarginSearch, fit_gamma, gamma_max_p_value
from worker.engine.detect.mmbd import MaxMarginDetector

SEARCH = MarginSearch(starts_per_class=4, steps=60)


def context(model, folder) -> DetectionContext:
    return DetectionContext(model=model, preprocessing=PREPROCESSING, clean=None, device=torch.device("cpu"),
                            out_dir=folder)


def test_flags_the_planted_backdoor_and_names_its_target(tmp_path):
    detector = MaxMarginDetector(SEARCH)
    finding = detector.detect(context(planted_model(tmp_path, backdoored=True), tmp_path))
    assert finding.applicable and finding.score >= finding.threshold
    assert finding.suspected_targets == [TARGET]
    assert finding.evidence["p_value"] < 1e-3
    assert "assumes" in finding.reason


def test_passes_the_clean_twin(tmp_path):
    detector = MaxMarginDetector(SEARCH)
    finding = detector.detect(context(planted_model(tmp_path, backdoored=False), tmp_path))
    assert finding.applicable and finding.score < finding.threshold
    assert finding.evidence["p_value"] > 0.05
    assert finding.diagnostics["samples_used"] == 0


def test_needs_no_clean_data():
    assert MaxMarginDetector.needs_clean_data is False


def test_gamma_fit_and_tail():
    draws = np.random.default_rng(0).gamma(3.0, 2.0, 4000)
    shape, scale = fit_gamma(draws)
    assert abs(shape - 3.0) < 0.2 and abs(scale - 2.0) < 0.2
    null = np.random.default_rng(1).gamma(5.0, 1.0, 9)
    assert gamma_max_p_value(float(null.max()), null) > 0.2  # the null's own maximum is not an outlier
    assert 0 < gamma_max_p_value(30.0, null) < 1e-12  # far beyond it: tiny, but not rounded to 0
