"""The model card and the retrain report state what was measured: the calibration the figures
show (never a fixed "calibrated" sentence), the subgroups covered and the small-sample
warnings."""

from __future__ import annotations

import pytest

from ehr_ssl.deploy.model_card import model_card
from ehr_ssl.deploy.retraining import format_retrain_report
from ehr_ssl.evaluation.report import build_report
from tests.evaluation.conftest import make_cohort, make_predictions

CLAIM = "consistent with calibration"


def metrics(slope: float, slope_ci: list[float], intercept_ci: list[float]) -> dict:
    return {"auroc": 0.8, "auroc_ci95": [0.75, 0.85], "auprc": 0.5, "brier": 0.15,
            "calibration_slope": slope, "calibration_intercept": 0.0, "n": 500,
            "prevalence": 0.3, "calibration_slope_ci95": slope_ci,
            "calibration_intercept_ci95": intercept_ci}  # fmt: skip


def info(test_metrics: dict | None) -> dict:
    return {"model": "ssl", "mode": "full", "label_budget": "100", "seed": 0,
            "val_auroc": 0.8, "test_metrics": test_metrics}  # fmt: skip


def test_the_card_never_claims_calibration_the_metrics_contradict():
    bad = model_card(info(metrics(0.6, [0.5, 0.7], [-0.1, 0.1])), None)
    assert CLAIM not in bad and "miscalibrated" in bad and "too extreme" in bad
    assert "calibrated on the training population" not in bad  # the old fixed sentence
    good = model_card(info(metrics(1.0, [0.9, 1.1], [-0.1, 0.1])), None)
    assert CLAIM in good and "miscalibrated" not in good
    unknown = model_card(info(None), None)
    assert CLAIM not in unknown and "Calibration: not measured" in unknown


@pytest.fixture(scope="module")
def small_report() -> dict:
    cohort = make_cohort(60, 40, seed=3)
    predictions = make_predictions(cohort, budgets=("100",), seeds=(0,), models=("ssl", "scratch"))
    statics = cohort.select("visit_id").with_columns(sex=cohort["label"].cast(str))
    return build_report(predictions, main_budget="100", n_boot=20, statics=statics)


def test_the_card_carries_the_warnings_and_the_subgroups_covered(small_report: dict):
    card = model_card(info(small_report["models"]["ssl"]), small_report)
    assert "- Warning: the test set has 40 patients, fewer than 100" in card
    assert "Subgroup performance was measured by sex only" in card
    assert "has not been evaluated." not in card
    without = model_card(info(small_report["models"]["ssl"]), None)
    assert "Subgroup performance (age, sex, arrival mode) has not been evaluated." in without


def test_the_retrain_report_warns_and_states_the_measured_calibration(small_report: dict):
    test = {"visits": 60, "patients": 40, "labeled": 60, "positives": 20}
    record = {
        "time": "2026-01-01T00:00:00Z", "warm_start_from": None, "reasons": ["passed x"],
        "data": {"test_window_from": "2025-12-01", "splits": {"test": test},
                 "dates_warning": None},
        "candidate": small_report["models"]["ssl"], "production": None,
        "candidate_minus_production": None,
        "caveats": small_report["caveats"]["warnings"],
        "calibration": small_report["calibration"]["statement"],
    }  # fmt: skip
    text = format_retrain_report(record, promote=True)
    assert "**Warning:** the test set has 40 patients, fewer than 100" in text
    assert f"Candidate calibration on the test window: {record['calibration']}" in text
    quiet = format_retrain_report(record | {"caveats": [], "calibration": None}, promote=True)
    assert "Warning" not in quiet and "Candidate calibration" not in quiet
