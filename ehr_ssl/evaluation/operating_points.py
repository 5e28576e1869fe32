"""Operating points of a risk score: thresholds fixed on validation scores (for a target
sensitivity, or to flag the top k% of risk) and, at each, sensitivity, specificity, PPV, NPV and
alert rate on the test set with patient-bootstrap intervals. Pure numpy.

Convention: a visit is flagged (an alert) when its score is >= the threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ehr_ssl.evaluation.metrics import bootstrap_ci

# The thresholds a clinician asks for: "catch 80% / 90% of admissions" and "we can review the top
# 5 / 10 / 20% of visits".
TARGET_SENSITIVITIES = (0.8, 0.9)
TOP_FRACTIONS = (0.05, 0.10, 0.20)
RATES = ("sensitivity", "specificity", "ppv", "npv", "alert_rate")


def threshold_for_sensitivity(y: Any, p: Any, target: float) -> float:
    """The highest threshold whose rule `p >= t` flags at least `target` of the positives.

    Shape: y, p (n,) -> float.

    Raises:
        ValueError: When there is no positive, or `target` is not in (0, 1].
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target!r}")
    positive_scores = np.sort(np.asarray(p, dtype=np.float64)[np.asarray(y) == 1])[::-1]
    if positive_scores.size == 0:
        raise ValueError("a sensitivity threshold needs at least one positive")
    needed = math.ceil(target * positive_scores.size - 1e-9)  # positives to flag
    return float(positive_scores[needed - 1])


def threshold_for_alert_rate(p: Any, fraction: float) -> float:
    """The threshold that flags the top `fraction` of visits: the k-th highest score, k =
    ceil(fraction * n) (ties at the threshold are flagged too, so slightly more may be).

    Shape: p (n,) -> float.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"alert fraction must be in (0, 1], got {fraction!r}")
    scores = np.sort(np.asarray(p, dtype=np.float64))[::-1]
    if scores.size == 0:
        raise ValueError("an alert-rate threshold needs at least one score")
    return float(scores[max(1, math.ceil(fraction * scores.size - 1e-9)) - 1])


def fix_thresholds(y_val: Any, p_val: Any) -> list[dict[str, Any]]:
    """The operating thresholds, fixed on validation labels and scores: one per target
    sensitivity and one per top fraction, each with the rate it reaches on validation.

    Shape: y_val, p_val (n,) -> list of {"rule", "target", "threshold", "on_validation"}.
    """
    y_val, p_val = np.asarray(y_val, dtype=np.float64), np.asarray(p_val, dtype=np.float64)
    rules = []
    for target in TARGET_SENSITIVITIES:
        threshold = threshold_for_sensitivity(y_val, p_val, target)
        achieved = rate("sensitivity", y_val, p_val, threshold)
        rules.append(_rule("sensitivity", target, threshold, achieved))
    for fraction in TOP_FRACTIONS:
        threshold = threshold_for_alert_rate(p_val, fraction)
        achieved = rate("alert_rate", y_val, p_val, threshold)
        rules.append(_rule("top_fraction", fraction, threshold, achieved))
    return rules


def _rule(rule: str, target: float, threshold: float, achieved: float | None) -> dict[str, Any]:
    return {"rule": rule, "target": target, "threshold": threshold, "on_validation": achieved}


def confusion(y: Any, p: Any, threshold: float, weights: Any = None) -> np.ndarray:
    """Weighted true positives, false positives, true negatives and false negatives of the rule
    `p >= threshold`.

    Shape: y, p (n,); weights None, (n,) or (R, n) -> (4, R): rows TP, FP, TN, FN.
    """
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w.reshape(-1, len(y))  # (R, n)
    flagged = (p >= threshold).astype(np.float64)  # (n,)
    cells = [y * flagged, (1 - y) * flagged, (1 - y) * (1 - flagged), y * (1 - flagged)]
    return np.stack([w @ cell for cell in cells])  # (4, R)


def _rate_from_counts(name: str, counts: np.ndarray) -> np.ndarray:
    """One rate from TP, FP, TN, FN; NaN where its denominator is 0. Shape: (4, R) -> (R,)."""
    tp, fp, tn, fn = counts
    numerator, denominator = {
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
        "alert_rate": (tp + fp, tp + fp + tn + fn),
    }[name]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def rate(name: str, y: Any, p: Any, threshold: float, weights: Any = None) -> Any:
    """A rate of `RATES` at `threshold`: a float (None when undefined, e.g. PPV without alerts),
    or an (R,) array with NaN for 2-D weights (a `bootstrap_ci` metric)."""
    values = _rate_from_counts(name, confusion(y, p, threshold, weights))
    if weights is not None and np.ndim(weights) == 2:
        return values
    return float(values[0]) if np.isfinite(values[0]) else None


def operating_points(
    y: Any, p: Any, groups: Any, rules: list[dict[str, Any]], *, n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """Each fixed rule applied to the test set: its counts (visits) and every rate of `RATES`
    with a patient-level bootstrap interval (None where undefined in every replicate).

    Shape: y, p, groups (n,) -> one dict per rule: the rule's keys, "counts" {"tp", "fp", "tn",
    "fn"} and, per rate, {"value", "ci95"}.
    """
    points = []
    for rule in rules:
        threshold = rule["threshold"]
        tp, fp, tn, fn = (int(round(c)) for c in confusion(y, p, threshold)[:, 0])
        point = dict(rule) | {"counts": {"tp": tp, "fp": fp, "tn": tn, "fn": fn}}
        for name in RATES:
            point[name] = {
                "value": rate(name, y, p, threshold),
                "ci95": _interval(name, threshold, y, p, groups, n_boot, seed),
            }
        points.append(point)
    return points


def _interval(
    name: str, threshold: float, y: Any, p: Any, groups: Any, n_boot: int, seed: int
) -> list[float] | None:
    """The patient-bootstrap interval of one rate at one threshold (None if never defined)."""
    try:
        low, high = bootstrap_ci(
            lambda yy, pp, w: rate(name, yy, pp, threshold, w), y, p, groups,
            n_boot=n_boot, seed=seed,
        )  # fmt: skip
    except ValueError:  # e.g. no alert in any replicate: PPV undefined throughout
        return None
    return [low, high]
