"""Caveats: sample-size warnings below and only below their thresholds, and calibration stated as
measured, never claimed against the figures."""

from __future__ import annotations

import pytest

from ehr_ssl.evaluation.caveats import (
    MIN_TEST_NEGATIVES,
    MIN_TEST_PATIENTS,
    MIN_TEST_POSITIVES,
    NEAR_CHANCE,
    calibration_statement,
    near_chance,
    sample_size_warnings,
)

ENOUGH = (MIN_TEST_PATIENTS, MIN_TEST_POSITIVES, MIN_TEST_NEGATIVES)


def test_no_warning_at_or_above_the_thresholds():
    assert sample_size_warnings(*ENOUGH) == []
    assert sample_size_warnings(*(10 * n for n in ENOUGH)) == []


@pytest.mark.parametrize("which", range(3))
def test_one_warning_just_below_each_threshold(which: int):
    counts = list(ENOUGH)
    counts[which] -= 1
    warnings = sample_size_warnings(*counts)
    assert len(warnings) == 1
    assert f"fewer than {ENOUGH[which]}" in warnings[0]


def test_near_chance():
    assert near_chance(0.5) and near_chance(0.5 + NEAR_CHANCE / 2) and near_chance(None)
    assert not near_chance(0.5 + NEAR_CHANCE) and not near_chance(0.8)


def test_good_calibration_is_claimed_only_when_both_intervals_hold_the_ideal():
    good = calibration_statement(0.98, 0.02, [0.85, 1.1], [-0.1, 0.15])
    assert "consistent with calibration" in good
    too_extreme = calibration_statement(0.6, 0.0, [0.5, 0.7], [-0.1, 0.1])
    assert "miscalibrated" in too_extreme and "too extreme" in too_extreme
    too_moderate = calibration_statement(1.6, 0.0, [1.3, 1.9], [-0.1, 0.1])
    assert "too moderate" in too_moderate
    off_average = calibration_statement(1.0, 0.5, [0.9, 1.1], [0.3, 0.7])
    assert "miscalibrated" in off_average
    for text in (too_extreme, too_moderate, off_average):
        assert "consistent with calibration" not in text


def test_without_intervals_or_a_fit_no_claim_is_made():
    no_interval = calibration_statement(1.0, 0.0)
    assert "calibration slope 1.00" in no_interval and "consistent" not in no_interval
    assert "unmeasured" in calibration_statement(None, None)
