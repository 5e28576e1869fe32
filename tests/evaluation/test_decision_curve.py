"""Decision curves against their closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from ehr_ssl.evaluation.decision_curve import (
    THRESHOLDS,
    decision_curve,
    net_benefit,
    treat_all_net_benefit,
)


def test_a_score_that_flags_everyone_is_treat_all():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.3).astype(float)
    everyone = np.ones(500)  # 1 >= every threshold
    prevalence = y.mean()
    pt = np.array(THRESHOLDS)
    expected = prevalence - (1 - prevalence) * pt / (1 - pt)
    assert net_benefit(y, everyone) == pytest.approx(expected)
    assert treat_all_net_benefit(prevalence) == pytest.approx(expected)


def test_a_perfect_score_gains_the_prevalence_and_flagging_none_gains_nothing():
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0], dtype=float)
    assert net_benefit(y, y * 0.99) == pytest.approx(np.full(len(THRESHOLDS), y.mean()))
    assert net_benefit(y, np.zeros(8)) == pytest.approx(np.zeros(len(THRESHOLDS)))


def test_hand_computed_net_benefit():
    y = np.array([1, 1, 0, 0], dtype=float)
    p = np.array([0.9, 0.1, 0.8, 0.05])
    # at pt 0.5: TP 1, FP 1 of 4 -> 1/4 - 1/4 * 1 = 0; at pt 0.25: the same flags, odds 1/3
    assert net_benefit(y, p, [0.5, 0.25]) == pytest.approx([0.0, 0.25 - 0.25 / 3])


def test_decision_curve_lists_and_bad_thresholds():
    y = np.array([1, 0, 1, 0], dtype=float)
    curve = decision_curve(y, {"a": np.array([0.9, 0.2, 0.7, 0.1])}, [0.1, 0.5])
    assert curve["treat_none"] == [0.0, 0.0]
    assert list(curve["models"]) == ["a"] and len(curve["models"]["a"]) == 2
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        net_benefit(y, y, [0.0, 0.5])
