"""Operating points: thresholds fixed on validation reach their target there, and the rates are
those of a hand-computed confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest

from ehr_ssl.evaluation.operating_points import (
    RATES,
    confusion,
    fix_thresholds,
    operating_points,
    rate,
    threshold_for_alert_rate,
    threshold_for_sensitivity,
)


def scored(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, continuous (tie-free) scores and patient ids of 1-3 visits each."""
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < p).astype(float)
    return y, p, np.arange(n) // 3


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.8, 0.9, 0.5, 1.0])
def test_sensitivity_threshold_reaches_its_target_on_the_same_data(seed: int, target: float):
    y, p, _ = scored(300, seed)
    threshold = threshold_for_sensitivity(y, p, target)
    achieved = rate("sensitivity", y, p, threshold)
    assert target <= achieved < target + 1 / y.sum() + 1e-12
    # the highest such threshold: a hair above it, sensitivity falls below the target
    assert rate("sensitivity", y, p, np.nextafter(threshold, 1.0)) < target


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2])
def test_top_fraction_threshold_flags_that_share_without_ties(fraction: float):
    _, p, _ = scored(400, 1)
    threshold = threshold_for_alert_rate(p, fraction)
    assert (p >= threshold).sum() == int(np.ceil(fraction * len(p)))


def test_rates_match_a_hand_computed_confusion_matrix():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 0], dtype=float)
    p = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.6, 0.4, 0.05, 0.5])
    # threshold 0.5 flags 0.9, 0.8, 0.7, 0.6, 0.5: TP 2, FP 3; misses 0.3, 0.4: FN 2; TN 3
    assert confusion(y, p, 0.5)[:, 0].tolist() == [2, 3, 3, 2]
    expected = {"sensitivity": 2 / 4, "specificity": 3 / 6, "ppv": 2 / 5, "npv": 3 / 5,
                "alert_rate": 5 / 10}  # fmt: skip
    for name in RATES:
        assert rate(name, y, p, 0.5) == pytest.approx(expected[name])


def test_undefined_rates_are_none_and_weights_evaluate_replicates():
    y, p, _ = scored(50, 2)
    assert rate("ppv", y, p, 2.0) is None  # no alert: PPV undefined
    w = np.stack([np.ones(50), 2 * np.ones(50)])
    values = rate("sensitivity", y, p, 0.5, w)
    assert values.shape == (2,) and values[0] == pytest.approx(values[1])


def test_operating_points_hold_counts_and_intervals_around_the_value():
    y_val, p_val, _ = scored(300, 3)
    y, p, groups = scored(300, 4)
    rules = fix_thresholds(y_val, p_val)
    assert [r["rule"] for r in rules] == ["sensitivity"] * 2 + ["top_fraction"] * 3
    points = operating_points(y, p, groups, rules, n_boot=100, seed=0)
    for point in points:
        counts = point["counts"]
        assert sum(counts.values()) == len(y)
        assert point["sensitivity"]["value"] == pytest.approx(
            counts["tp"] / (counts["tp"] + counts["fn"])
        )
        for name in RATES:
            low, high = point[name]["ci95"]
            assert low <= point[name]["value"] <= high


def test_bad_targets_raise():
    y, p, _ = scored(20, 0)
    with pytest.raises(ValueError, match="target sensitivity"):
        threshold_for_sensitivity(y, p, 0.0)
    with pytest.raises(ValueError, match="needs at least one positive"):
        threshold_for_sensitivity(np.zeros(20), p, 0.8)
    with pytest.raises(ValueError, match="alert fraction"):
        threshold_for_alert_rate(p, 1.5)
