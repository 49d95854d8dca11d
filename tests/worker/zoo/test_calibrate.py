"""Fitting the verdict's calibration: every statistic of a detector becomes one feature of its regressions."""

import json

import numpy as np

from schemas.report import Finding, Verdict
from worker.engine.detect.verdict import judge, load_calibration
from worker.zoo.calibrate import STATISTICS, Sample, fit_calibration


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


def test_a_model_missing_one_of_a_detectors_statistics_is_left_out_of_its_regressions():
    made = samples()
    made.append(Sample(True, "mlp", "blend", {"mmbd": (0.0,)}))
    content = fit_calibration(made, [("mmbd",), ("reverse",)])
    assert [r["models"] for r in content["regressions"]] == [41, 40]
