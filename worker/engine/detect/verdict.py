"""One calibrated verdict from every applicable detector's statistic.

Each detector reports a statistic in its finding's ``evidence`` (MM-BD's log-margin anomaly, Neural Cleanse's
anomaly index, ...). A logistic regression on those statistics turns them into a probability that the model is
backdoored. Detectors are missing whenever they do not apply (no clean data, no litmus bank for the task), so the
calibration file holds one regression per *set* of detectors, each fitted on the same zoo with only those
statistics: a scan uses the regression of exactly the detectors that ran, else the largest calibrated set among
them (sets that did not add to the verdict on the development zoo are left out of the file, so their
detectors are reported but not weighed). The calibration is a small JSON file shipped in the package
(``calibration/verdict.json``), fitted by ``python -m bench.detect --write-calibration`` on generated zoos; no
pickles.

The verdict is ``inconclusive`` only when no applicable detector produced a statistic; a detector that crashed is
an error of the scan (``ScanReport.errors``), not evidence of either answer.
"""

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from schemas.report import Finding, Verdict
from worker.engine.detect.reverse import PAIRS

CALIBRATION_FILE = Path(__file__).resolve().parent / "calibration" / "verdict.json"
CALIBRATION_FORMAT = 1
SCORE_FLOOR = 1e-6  # scores are reported to six decimals


class CalibrationError(Exception):
    """The calibration file is missing, unreadable or of another format."""


@dataclass(frozen=True)
class Feature:
    """One detector statistic: ``evidence[key]`` of detector ``detector``, clipped to [low, high], standardised."""

    detector: str
    key: str
    low: float
    high: float
    mean: float
    std: float

    def standardised(self, finding: Finding) -> float | None:
        value = statistic_of(finding, self.key)
        if value is None:
            return None
        return (min(max(value, self.low), self.high) - self.mean) / self.std


def statistic_of(finding: Finding, key: str) -> float | None:
    """``finding.evidence[key]`` when it is a finite number, else None. Three keys are derived from the finding:
    'score' itself; 'score_log_odds', its log-odds (for a detector whose score already measures its statistic against
    that statistic's own null, as ``reverse`` does against the expected maximum of its candidates); and
    'log_runner_up_ratio', the log of ``evidence['runner_up_ratio']`` (``reverse``: how many times smaller the
    smallest trigger is than the smallest towards any other class; a backdoor target's is ahead of every other
    class's, not only of the median's, which is what sets it apart on models where many classes flip with a few
    pixels; None, so not weighed, when the finding flagged with the pair-level search)."""
    if key == "log_runner_up_ratio" and _flags_pairs(finding):
        # An all-to-all backdoor makes a small pair towards every target, so the ratio's premise (a backdoor target
        # is ahead of every other class) does not hold for a pair-level finding that flagged: on all-to-all BadNets
        # it pulled the verdict under the threshold while `reverse` flagged (all-to-all seed 9, mlp sparse: 0.998).
        return None
    if key in ("score", "score_log_odds"):
        value = finding.score
    else:
        value = finding.evidence.get("runner_up_ratio" if key == "log_runner_up_ratio" else key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    if key == "score_log_odds":
        value = min(max(value, SCORE_FLOOR), 1 - SCORE_FLOOR)
        return math.log(value / (1 - value))
    if key == "log_runner_up_ratio":
        return math.log(value) if value > 0 else None
    return float(value)


def _flags_pairs(finding: Finding) -> bool:
    """Whether ``finding`` flagged with the pair-level source-specific search (``reverse``'s mode ``PAIRS``)."""
    return finding.evidence.get("mode") == PAIRS and _flags(finding)


@dataclass(frozen=True)
class Regression:
    """A logistic regression on the features of one set of detectors."""

    detectors: frozenset[str]
    features: tuple[Feature, ...]
    weights: tuple[float, ...]
    intercept: float


@dataclass(frozen=True)
class Calibration:
    regressions: tuple[Regression, ...]
    threshold: float
    provenance: dict
    #: 'logistic': the one regression of the detectors that ran; 'max': the largest probability of the
    #: single-detector regressions (a model is flagged when any calibrated detector alone would flag it).
    combine: str = "logistic"

    def regression_for(self, available: set[str]) -> Regression | None:
        """The regression of exactly ``available`` detectors, else of the largest calibrated subset of them (of two
        equally large ones, the one listed first: the file lists them in order of preference)."""
        fitting = [(len(r.detectors), -i, r) for i, r in enumerate(self.regressions) if r.detectors <= available]
        return max(fitting, key=lambda item: item[:2])[2] if fitting else None


@lru_cache(maxsize=8)
def load_calibration(path: Path = CALIBRATION_FILE) -> Calibration:
    """The calibration in ``path`` (read once per process)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CalibrationError(f"cannot read the verdict calibration {path}: {error}") from error
    if not isinstance(raw, dict) or raw.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{path} is not a verdict calibration of format {CALIBRATION_FORMAT}.")
    try:
        regressions = []
        for entry in raw["regressions"]:
            features = tuple(Feature(f["detector"], f["key"], float(f["low"]), float(f["high"]), float(f["mean"]),
                                     float(f["std"])) for f in entry["features"])
            weights = tuple(float(w) for w in entry["weights"])
            if len(weights) != len(features) or any(f.std <= 0 for f in features):
                raise ValueError("every feature needs one weight and a positive std")
            regressions.append(Regression(frozenset(entry["detectors"]), features, weights, float(entry["intercept"])))
        threshold = float(raw["threshold"])
    except (KeyError, TypeError, ValueError) as error:
        raise CalibrationError(f"{path} is malformed: {error}") from error
    if not 0 < threshold < 1:
        raise CalibrationError(f"{path}: the threshold must lie in (0, 1).")
    combine = raw.get("combine", "logistic")
    if combine not in ("logistic", "max"):
        raise CalibrationError(f"{path}: 'combine' must be 'logistic' or 'max'.")
    return Calibration(tuple(regressions), threshold, raw.get("provenance", {}), combine)


def calibrated_score(detector: str, key: str, value: float) -> tuple[float, float] | None:
    """A detector's own probability for its statistic ``value``, from the calibration's regression on that detector
    alone, and the verdict's threshold; None when the shipped calibration has no such regression."""
    try:
        calibration = load_calibration()
    except CalibrationError:
        return None
    alone = [r for r in calibration.regressions if r.detectors == {detector} and r.features[0].key == key]
    if not alone:
        return None
    regression = alone[0]
    finding = Finding(detector=detector, applicable=True, reason="", evidence={key: value})
    standardised = regression.features[0].standardised(finding) or 0.0
    return _probability(regression.intercept + regression.weights[0] * standardised), calibration.threshold


def _probability(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(logit, 50.0), -50.0)))


@dataclass
class Judgement:
    """The verdict with its probability, suspected targets and the words that explain it."""

    verdict: Verdict
    score: float | None
    threshold: float | None
    suspected_targets: list[int]
    explanation: str
    contributions: dict[str, float]


def judge(findings: list[Finding], calibration: Calibration | None = None) -> Judgement:
    """Combine the applicable findings into one verdict (see the module's docstring)."""
    judged = {f.detector: f for f in findings if f.applicable and f.score is not None}
    if not judged:
        return Judgement(Verdict.inconclusive, None, None, [],
                         "No detector could judge this model (see each finding's reason), so there is no verdict "
                         "either way.", {})
    calibration = calibration or load_calibration()
    if calibration.combine == "max":
        singles = [r for r in calibration.regressions if len(r.detectors) == 1 and r.detectors <= set(judged)]
        if not singles:
            return _uncalibrated(judged)
        # Each detector's own calibrated log-odds; the most alarmed one decides.
        contributions = {next(iter(r.detectors)): _log_odds(r, judged)[0] for r in singles}
        score = _probability(max(contributions.values()))
        weighed: set[str] = set(contributions)
    else:
        regression = calibration.regression_for(set(judged))
        if regression is None:
            return _uncalibrated(judged)
        logit, contributions = _log_odds(regression, judged)
        score = _probability(logit)
        weighed = set(regression.detectors)
    backdoored = score >= calibration.threshold
    verdict = Verdict.backdoored if backdoored else Verdict.clean
    pushing = sorted((d for d in contributions if (contributions[d] > 0) == backdoored),
                     key=lambda d: -abs(contributions[d]))
    unused = [judged[d] for d in sorted(set(judged) - weighed)]
    # Targets: from the detectors that pushed towards the verdict, then from any that flagged on its own; when none of
    # them names a class (the probability can cross the threshold while no detector flags on its own), the leading
    # candidate of the pushing detectors that report one (``evidence['leading_target']``).
    targets: list[int] = []
    explanation = _explain(verdict, score, calibration.threshold, pushing, judged, contributions, unused)
    if backdoored:
        targets = _targets([judged[d] for d in pushing] + [f for f in unused if _flags(f)])
        if not targets:
            leading = (judged[d].evidence.get("leading_target") for d in pushing)
            targets = list(dict.fromkeys(t for t in leading if isinstance(t, int) and not isinstance(t, bool)))
            if targets:
                explanation += (f" No detector flagged on its own, so the suspected target is the leading candidate "
                                f"of those that pushed the verdict: class {', '.join(map(str, targets))}.")
    return Judgement(verdict, score, calibration.threshold, targets, explanation, contributions)


def _log_odds(regression: Regression, judged: dict[str, Finding]) -> tuple[float, dict[str, float]]:
    """The regression's log-odds for these findings, and each detector's part of it (beside the intercept)."""
    contributions: dict[str, float] = {}
    logit = regression.intercept
    for feature, weight in zip(regression.features, regression.weights, strict=True):
        value = feature.standardised(judged[feature.detector])
        part = 0.0 if value is None else weight * value  # a missing figure counts as the calibration mean
        contributions[feature.detector] = contributions.get(feature.detector, 0.0) + part
        logit += part
    return logit, contributions


def _flags(finding: Finding) -> bool:
    return finding.score is not None and finding.threshold is not None and finding.score >= finding.threshold


def _uncalibrated(judged: dict[str, Finding]) -> Judgement:
    """No calibrated combination covers these detectors: fall back to each detector's own threshold."""
    flagged = [f for f in judged.values() if _flags(f)]
    score = max(f.score for f in judged.values())
    names = ", ".join(sorted(judged))
    if flagged:
        words = "; ".join(f"{f.detector}: {f.reason}" for f in flagged)
        return Judgement(Verdict.backdoored, score, None, _targets(flagged),
                         f"Backdoored: no calibrated combination covers {names}, and {words}", {})
    return Judgement(Verdict.clean, score, None, [],
                     f"Clean: no calibrated combination covers {names}; each scored below its own threshold.", {})


def _targets(findings) -> list[int]:
    targets: list[int] = []
    for finding in findings:
        targets += [t for t in finding.suspected_targets if t not in targets]
    return targets


def _explain(verdict: Verdict, score: float, threshold: float, pushing: list[str], judged: dict[str, Finding],
             contributions: dict[str, float], unused: list[Finding]) -> str:
    head = (f"{verdict.value.capitalize()}: the calibrated probability of a backdoor is {score:.2f} "
            f"({'at or above' if verdict == Verdict.backdoored else 'below'} the threshold {threshold:.2f}).")
    lines = [head]
    for name in pushing[:3]:
        lines.append(f"{name} ({contributions[name]:+.1f} on the log-odds): {judged[name].reason}")
    if not pushing:
        lines.append("No detector's figure leaned the other way.")
    alarms = [f for f in unused if _flags(f)]
    quiet = [f.detector for f in unused if not _flags(f)]
    for finding in alarms:
        lines.append(f"{finding.detector} flagged the model on its own threshold but is not weighed with these "
                     f"detectors (on the calibration zoos it did not add to them): {finding.reason}")
    if quiet:
        lines.append(f"Reported, not weighed with these detectors: {', '.join(quiet)}.")
    return " ".join(lines)
