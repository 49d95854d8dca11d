"""Fitting the verdict's calibration: logistic regressions on detector statistics of generated zoo models.

A model's statistics are ``{detector: (value, ...)}``, one value per key of ``STATISTICS[detector]``, as its
findings reported them. For every non-empty set of the chosen detectors, one L2-regularised logistic regression
(Newton's method; classes weighted to count equally) is fitted on the standardised, clipped statistics of the models
where all of them ran. The result is the JSON that :mod:`worker.engine.detect.verdict` loads. Forty lines of
Newton's method here, rather than scikit-learn: the fit is small and this keeps a large dependency (and its pickled
estimators) out of the package.
"""

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from schemas.report import Finding
from worker.engine.detect.verdict import CALIBRATION_FORMAT, statistic_of

#: The statistics each detector contributes to the verdict (keys that
#: :func:`~worker.engine.detect.verdict.statistic_of` reads from its finding), each one feature of the regression.
STATISTICS: dict[str, tuple[str, ...]] = {
    "mmbd": ("log_anomaly",), "reverse": ("score_log_odds", "log_runner_up_ratio"), "linf": ("bias_shift",),
    "latent": ("entropy_shift",), "ulp": ("log_odds",)}


@dataclass(frozen=True)
class Sample:
    """One zoo model as calibration sees it."""

    backdoored: bool
    family: str
    kind: str  # 'clean', or the attack kind; all-to-all attacks are their own kind here
    statistics: dict[str, tuple[float, ...]]  # detector -> its statistics, only for detectors that ran and gave them


def statistics_of(findings: Iterable[Finding]) -> dict[str, tuple[float, ...]]:
    """A model's ``Sample.statistics``: per applicable detector, its ``STATISTICS`` values; a detector missing any of
    them is left out (its regressions need them all)."""
    statistics = {}
    for finding in findings:
        values = [statistic_of(finding, key) for key in STATISTICS.get(finding.detector, ())]
        present = [v for v in values if v is not None]
        if finding.applicable and values and len(present) == len(values):
            statistics[finding.detector] = tuple(present)
    return statistics


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50) -> tuple[np.ndarray, float]:
    """Weights and intercept minimising class-balanced log loss + l2/2 |w|^2 (intercept not penalised)."""
    n, d = x.shape
    balance = np.where(y == 1, n / (2 * max(y.sum(), 1)), n / (2 * max(n - y.sum(), 1)))
    design = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(design @ theta, -50, 50)))
        gradient = design.T @ (balance * (p - y)) + penalty * theta
        hessian = (design * (balance * p * (1 - p))[:, None]).T @ design + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1])


def fit_regression(samples: list[Sample], detectors: tuple[str, ...]) -> dict | None:
    """One regression entry of the calibration file for exactly ``detectors`` (None if too few models)."""
    rows = [s for s in samples if all(d in s.statistics for d in detectors)]
    labels = np.array([s.backdoored for s in rows], float)
    if len(rows) < 6 or labels.min() == labels.max():
        return None
    raw = np.array([[value for d in detectors for value in s.statistics[d]] for s in rows], float)
    keys = [(d, key) for d in detectors for key in STATISTICS[d]]
    low, high = raw.min(0), raw.max(0)
    clipped = np.clip(raw, low, high)
    mean, std = clipped.mean(0), clipped.std(0) + 1e-9
    weights, intercept = fit_logistic((clipped - mean) / std, labels)
    return {"detectors": list(detectors), "models": len(rows),
            "features": [{"detector": d, "key": key, "low": float(lo), "high": float(hi), "mean": float(m),
                          "std": float(s)} for (d, key), lo, hi, m, s in zip(keys, low, high, mean, std, strict=True)],
            "weights": [float(w) for w in weights], "intercept": intercept}


def every_subset(detectors: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every non-empty set of ``detectors``, largest first."""
    names = sorted(detectors)
    return [subset for size in range(len(names), 0, -1) for subset in itertools.combinations(names, size)]


def fit_calibration(samples: list[Sample], sets: list[tuple[str, ...]], threshold: float = 0.5,
                    provenance: dict | None = None, combine: str = "logistic") -> dict:
    """The calibration file's content: one regression per detector set in ``sets``, in that order (the verdict
    prefers the earlier of two equally large sets); ``combine`` as in
    :class:`~worker.engine.detect.verdict.Calibration`."""
    regressions = [entry for subset in sets if (entry := fit_regression(samples, tuple(sorted(subset)))) is not None]
    return {"format": CALIBRATION_FORMAT, "threshold": threshold, "combine": combine, "regressions": regressions,
            "provenance": provenance or {}}
