"""Fitting the verdict's calibration: every statistic of a detector becomes one feature of its regressions."""

import json

import numpy as np
import pytest

from schemas.report import Finding, Verdict
from worker.engine.detect.verdict import judge, load_calibration
from worker.zoo.calibrate import STATISTICS, Sample, fit_calibration, statistics_of


def samples(count: int = 40) -> list[Sample]:
    """Backdoored models stand out on reverse's runner-up ratio only; its score and mmbd's figure are noise."""
    rng = np.random.default_rng(0)
    made = []
    for i in range(count):
        backdoored = i % 2 == 1
        ratio = rng.uniform(1.6, 3.0) if backdoored else rng.uniform(1.0, 1.4)
        made.append(Sample(backdoored, "cnn2-max", "patch" if backdoored else "clean",
                           {"reverse": (float(rng.normal()), float(np.log(ratio))), "mmbd": (float(rng.normal()),)}))
    return made


def reverse_finding(ratio: float) -> Finding:
    return Finding(detector="reverse", applicable=True, score=0.1, threshold=0.5, reason="r",
                   evidence={"runner_up_ratio": ratio})


def test_a_detector_with_two_statistics_gets_two_features_and_both_are_weighed(tmp_path):
    assert STATISTICS["reverse"] == ("score_log_odds", "log_runner_up_ratio")
    content = fit_calibration(samples(), [("mmbd", "reverse"), ("reverse",)])
    both, alone = content["regressions"]
    assert [(f["detector"], f["key"]) for f in both["features"]] == [
        ("mmbd", "log_anomaly"), ("reverse", "score_log_odds"), ("reverse", "log_runner_up_ratio")]
    assert len(both["weights"]) == 3 and len(alone["weights"]) == 2
    assert abs(alone["weights"][1]) > 3 * abs(alone["weights"][0])  # the ratio separates, the score does not
    path = tmp_path / "verdict.json"
    path.write_text(json.dumps(content))
    calibration = load_calibration(path)
    assert judge([reverse_finding(2.5)], calibration).verdict == Verdict.backdoored
    assert judge([reverse_finding(1.1)], calibration).verdict == Verdict.clean


def test_a_detector_missing_one_of_its_statistics_or_not_applicable_gives_none():
    mmbd = Finding(detector="mmbd", applicable=True, score=0.2, reason="m", evidence={"log_anomaly": 1.5})
    skipped = Finding(detector="ulp", applicable=False, reason="no bank fits", evidence={"log_odds": 2.0})
    assert statistics_of([reverse_finding(2.0), mmbd, skipped]) == {
        "reverse": (pytest.approx(-2.1972, abs=1e-4), pytest.approx(0.6931, abs=1e-4)), "mmbd": (1.5,)}
    no_ratio = reverse_finding(2.0).model_copy(update={"evidence": {}})
    assert statistics_of([no_ratio, mmbd]) == {"mmbd": (1.5,)}


def test_a_model_without_a_detectors_statistics_is_left_out_of_its_regressions():
    made = samples()
    made.append(Sample(True, "mlp", "blend", {"mmbd": (0.0,)}))
    content = fit_calibration(made, [("mmbd",), ("reverse",)])
    assert [r["models"] for r in content["regressions"]] == [41, 40]
