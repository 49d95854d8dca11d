"""The calibrated verdict: combination, missing and crashed detectors, the calibration file."""

import json
import math

import pytest
import torch

from schemas.report import Finding, Verdict
from tests.worker.engine.detect.planted import PREPROCESSING, planted_model
from worker.engine.detect.base import DetectionContext
from worker.engine.detect.verdict import CALIBRATION_FILE, CalibrationError, judge, load_calibration, statistic_of
from worker.engine.scan import run_detectors

REGRESSIONS = [
    {"detectors": ["mmbd"], "features": [{"detector": "mmbd", "key": "log_anomaly", "low": 0, "high": 10,
                                          "mean": 2.0, "std": 1.0}], "weights": [2.0], "intercept": -1.0},
    {"detectors": ["mmbd", "nc"],
     "features": [{"detector": "mmbd", "key": "log_anomaly", "low": 0, "high": 10, "mean": 2.0, "std": 1.0},
                  {"detector": "nc", "key": "anomaly_index", "low": 0, "high": 8, "mean": 1.0, "std": 0.5}],
     "weights": [1.0, 3.0], "intercept": 0.5},
]


@pytest.fixture
def calibration(tmp_path):
    path = tmp_path / "verdict.json"
    path.write_text(json.dumps({"format": 1, "threshold": 0.5, "regressions": REGRESSIONS}))
    return load_calibration(path)


def finding(detector: str, key: str, value: float, targets=(3,)) -> Finding:
    return Finding(detector=detector, applicable=True, score=0.5, threshold=0.9, reason=f"{detector} says so",
                   suspected_targets=list(targets), evidence={key: value})


def test_nothing_applicable_is_inconclusive(calibration):
    judgement = judge([Finding(detector="ulp", applicable=False, reason="no bank fits")], calibration)
    assert judgement.verdict == Verdict.inconclusive and judgement.score is None
    assert judge([], calibration).verdict == Verdict.inconclusive


def test_combines_the_detectors_that_ran(calibration):
    judgement = judge([finding("mmbd", "log_anomaly", 3.0), finding("nc", "anomaly_index", 2.0, (7,))], calibration)
    expected = 1 / (1 + math.exp(-(0.5 + 1.0 * 1.0 + 3.0 * 2.0)))
    assert judgement.score == pytest.approx(expected)
    assert judgement.verdict == Verdict.backdoored
    assert judgement.suspected_targets == [7, 3]  # the strongest contribution first
    assert judgement.explanation.startswith("Backdoored") and "nc says so" in judgement.explanation


def test_uses_the_regression_of_the_detectors_that_ran(calibration):
    alone = judge([finding("mmbd", "log_anomaly", 1.0)], calibration)
    assert alone.score == pytest.approx(1 / (1 + math.exp(-(-1.0 + 2.0 * -1.0))))
    assert alone.verdict == Verdict.clean and alone.suspected_targets == []
    # A detector the calibration does not know is reported, not weighed.
    extra = judge([finding("mmbd", "log_anomaly", 1.0), finding("ulp", "x", 1.0)], calibration)
    assert extra.score == pytest.approx(alone.score) and "ulp" in extra.explanation


def test_a_backdoored_verdict_names_the_leading_class_of_a_pushing_detector_that_flags_nothing(calibration):
    # nc carries the verdict without flagging on its own, so it names no suspected class; its leading candidate is 4.
    # mmbd leans the other way and names 5: not the suspect.
    quiet_nc = finding("nc", "anomaly_index", 3.0, ()).model_copy(update={"evidence": {"anomaly_index": 3.0,
                                                                                      "leading_target": 4}})
    judgement = judge([finding("mmbd", "log_anomaly", 1.0, (5,)), quiet_nc], calibration)
    assert judgement.verdict == Verdict.backdoored and judgement.contributions["mmbd"] < 0
    assert judgement.suspected_targets == [4] and "leading candidate" in judgement.explanation
    # A clean verdict names none.
    calm_nc = quiet_nc.model_copy(update={"evidence": {"anomaly_index": 0.0, "leading_target": 4}})
    assert judge([finding("mmbd", "log_anomaly", 1.0, (5,)), calm_nc], calibration).suspected_targets == []


def test_a_missing_figure_counts_as_the_calibration_mean(calibration):
    judgement = judge([finding("mmbd", "other_key", 9.0)], calibration)
    assert judgement.score == pytest.approx(1 / (1 + math.exp(1.0)))


def test_score_log_odds_reads_the_score_on_the_log_odds_scale():
    scored = Finding(detector="reverse", applicable=True, score=0.8, threshold=0.5, reason="")
    assert statistic_of(scored, "score_log_odds") == pytest.approx(math.log(4))
    assert statistic_of(scored.model_copy(update={"score": 0.0}), "score_log_odds") == pytest.approx(math.log(1e-6),
                                                                                                     rel=1e-3)
    assert statistic_of(scored.model_copy(update={"score": None}), "score_log_odds") is None


def test_log_runner_up_ratio_reads_the_ratio_on_the_log_scale():
    def ratio(value: object) -> Finding:
        return Finding(detector="reverse", applicable=True, score=0.1, threshold=0.5, reason="",
                       evidence={"runner_up_ratio": value})

    assert statistic_of(ratio(2.0), "log_runner_up_ratio") == pytest.approx(math.log(2))
    assert statistic_of(ratio(1.0), "log_runner_up_ratio") == 0.0
    for unusable in (0.0, -1.0, float("nan"), True, "2", None):
        assert statistic_of(ratio(unusable), "log_runner_up_ratio") is None


def test_the_ratio_of_a_pair_level_finding_that_flagged_is_not_weighed():
    """An all-to-all backdoor makes a pair towards every target small: its ratio of about 1 says nothing there."""
    def finding(mode: str, score: float) -> Finding:
        return Finding(detector="reverse", applicable=True, score=score, threshold=0.5, reason="",
                       evidence={"mode": mode, "runner_up_ratio": 1.02})

    assert statistic_of(finding("source-specific", 0.99), "log_runner_up_ratio") is None
    assert statistic_of(finding("source-specific", 0.99), "score_log_odds") == pytest.approx(math.log(99))
    for kept in (finding("source-specific", 0.2), finding("all-to-one", 0.99),
                 finding("source-specific per target", 0.99)):
        assert statistic_of(kept, "log_runner_up_ratio") == pytest.approx(math.log(1.02))
    # The same flagged pair-level finding scores higher once its ratio is not held against it.
    shipped = load_calibration()
    pairs = finding("source-specific", 0.9)
    as_all_to_one = finding("all-to-one", 0.9)
    assert judge([pairs], shipped).score > judge([as_all_to_one], shipped).score  # type: ignore[operator]


def test_the_shipped_calibration_weighs_reverse_on_its_score_log_odds_and_runner_up_ratio():
    shipped = load_calibration()
    for regression in shipped.regressions:
        if "reverse" in regression.detectors:
            keys = [f.key for f in regression.features if f.detector == "reverse"]
            assert keys == ["score_log_odds", "log_runner_up_ratio"]
    # A clearly separated smallest trigger raises the probability at the same score.
    alone = shipped.regression_for({"reverse"})
    assert alone is not None

    def reverse(ratio: float) -> Finding:
        return Finding(detector="reverse", applicable=True, score=0.3, threshold=0.5, reason="",
                       evidence={"runner_up_ratio": ratio})

    assert judge([reverse(3.0)], shipped).score > judge([reverse(1.05)], shipped).score  # type: ignore[operator]


class Crashing:
    name = "mmbd"
    needs_clean_data = False

    def applicable(self, context):
        return None

    def detect(self, context):
        raise RuntimeError("out of memory")


def test_a_crashed_detector_is_an_error_not_a_finding(tmp_path, monkeypatch, calibration):
    from worker.engine import scan

    monkeypatch.setitem(scan.DETECTORS, "mmbd", Crashing())
    context = DetectionContext(model=planted_model(tmp_path, True), preprocessing=PREPROCESSING, clean=None,
                               device=torch.device("cpu"), out_dir=tmp_path)
    findings, errors = run_detectors(["mmbd", "linf"], context)
    assert [e.stage for e in errors] == ["detect:mmbd"] and "out of memory" in errors[0].message
    assert [f.detector for f in findings] == ["linf"] and not findings[0].applicable
    assert judge(findings, calibration).verdict == Verdict.inconclusive  # linf had no clean data


def test_the_shipped_calibration_loads_and_covers_the_data_free_detector():
    shipped = load_calibration(CALIBRATION_FILE)
    assert 0 < shipped.threshold < 1
    assert shipped.regression_for({"mmbd"}) is not None
    assert shipped.provenance["families"] and shipped.provenance["held_out"]


def test_a_malformed_calibration_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    for content in ("not json", json.dumps({"format": 99}), json.dumps({"format": 1, "threshold": 0.5,
                                                                         "regressions": [{"detectors": ["x"]}]})):
        path.write_text(content)
        load_calibration.cache_clear()
        with pytest.raises(CalibrationError):
            load_calibration(path)
