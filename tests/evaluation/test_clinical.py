"""The report's clinical sections built from small synthetic predictions: operating points fixed
on validation rows, subgroups from statics, the decision curve, caveats and their rendering."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from ehr_ssl.evaluation.caveats import MIN_TEST_PATIENTS
from ehr_ssl.evaluation.render import format_report_markdown
from ehr_ssl.evaluation.report import _relative_gain, build_report
from tests.evaluation.conftest import make_cohort, make_predictions


def validation_rows(seed: int = 5) -> pl.DataFrame:
    """The models' scores on another cohort, as split "val" rows."""
    cohort = make_cohort(300, 200, seed=seed).with_columns(pl.col("visit_id") + 10**6)
    return make_predictions(cohort, budgets=("100",), seeds=(0,)).with_columns(split=pl.lit("val"))


def statics_of(cohort: pl.DataFrame) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    return cohort.select("visit_id").with_columns(
        age=pl.Series(rng.uniform(20, 95, cohort.height)),
        sex=pl.Series(rng.choice(["F", "M"], cohort.height)),
    )


@pytest.fixture(scope="module")
def clinical_report(cohort: pl.DataFrame, predictions: pl.DataFrame) -> dict:
    return build_report(
        predictions, main_budget="100", n_boot=50, validation=validation_rows(),
        thresholds_from="the val split", statics=statics_of(cohort),
    )  # fmt: skip


def test_thresholds_come_from_validation_not_test(clinical_report: dict, predictions):
    section = clinical_report["operating_points"]
    assert section["thresholds_from"] == {
        "data": "the val split",
        "n": 300,
        "n_positives": section["thresholds_from"]["n_positives"],
    }
    val = validation_rows().filter(model="ssl")
    y_val, p_val = val["label"].to_numpy().astype(float), val["score"].to_numpy()
    first = section["points"][0]  # sensitivity 0.8 on validation
    assert first["rule"] == "sensitivity" and first["target"] == 0.8
    assert 0.8 <= np.mean(p_val[y_val == 1] >= first["threshold"]) == first["on_validation"]
    # other validation scores move the thresholds; other test scores do not
    moved = build_report(predictions, main_budget="100", n_boot=20,
                         validation=validation_rows(seed=6))  # fmt: skip
    assert moved["operating_points"]["points"][0]["threshold"] != first["threshold"]


def test_without_validation_the_section_says_why(report: dict):
    section = report["operating_points"]
    assert section["points"] == [] and "no validation scores" in section["note"]
    assert "Not computed: no validation scores" in format_report_markdown(report)


def test_subgroups_sum_to_the_test_set(clinical_report: dict):
    columns = clinical_report["subgroups"]["columns"]
    assert list(columns) == ["age", "sex"]
    for rows in columns.values():
        assert sum(r["n"] for r in rows) == clinical_report["n_test"]


def test_decision_curve_holds_every_main_model(clinical_report: dict):
    curve = clinical_report["decision_curve"]
    assert list(curve["models"]) == list(clinical_report["models"])
    prevalence, pt = clinical_report["test_prevalence"], np.array(curve["thresholds"])
    assert curve["treat_all"] == pytest.approx(prevalence - (1 - prevalence) * pt / (1 - pt))


def test_relative_gain_of_a_near_chance_model_is_left_out_with_a_warning(clinical_report: dict):
    random = clinical_report["models"]["random"]
    assert abs(random["auroc"] - 0.5) < 0.1 and random["relative_gain"] is None
    assert clinical_report["models"]["scratch"]["relative_gain"] is not None
    assert any("relative gain left out for random" in w
               for w in clinical_report["caveats"]["warnings"])  # fmt: skip


@pytest.mark.parametrize(
    ("reference", "model", "defined"),
    [(0.8, 0.7, True), (0.8, 0.52, False), (0.53, 0.7, False), (0.8, 0.551, True)],
)
def test_relative_gain_is_left_out_within_near_chance_of_either_auroc(reference, model, defined):
    gain = _relative_gain(reference, model)
    assert (gain is not None) == defined
    if defined:
        assert gain == pytest.approx((reference - 0.5) / (model - 0.5) - 1)


def test_small_test_set_warns_and_a_large_one_does_not(clinical_report: dict):
    assert clinical_report["n_test_patients"] < MIN_TEST_PATIENTS * 2
    small = make_predictions(make_cohort(60, 40, seed=3), budgets=("100",), seeds=(0,),
                             models=("ssl", "scratch"))  # fmt: skip
    warnings = build_report(small, main_budget="100", n_boot=20)["caveats"]["warnings"]
    assert any(f"40 patients, fewer than {MIN_TEST_PATIENTS}" in w for w in warnings)
    large = make_predictions(make_cohort(1200, 800, seed=4), budgets=("100",), seeds=(0,),
                             models=("ssl", "scratch"))  # fmt: skip
    assert build_report(large, main_budget="100", n_boot=20)["caveats"]["warnings"] == []


def test_markdown_shows_the_sections_and_json_round_trips(clinical_report: dict):
    text = format_report_markdown(clinical_report)
    for heading in ("## Caveats", "## Operating points of ssl", "## Subgroups of ssl",
                    "## Decision curve", "Calibration of ssl: calibration slope"):  # fmt: skip
        assert heading in text
    assert "Thresholds fixed on the val split: 300 visits" in text
    assert json.loads(json.dumps(clinical_report)) == clinical_report
    assert clinical_report["models"]["ssl"]["calibration_slope_ci95"] is not None
