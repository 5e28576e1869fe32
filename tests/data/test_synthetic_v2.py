"""Tests of cohort version 2's generative story (docs/cohort.md) and of the version switch; the
properties both versions share are tested on both in test_synthetic.py."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from ehr_ssl.data.synthetic import Cohort, generate_cohort
from ehr_ssl.data.synthetic.catalog_v2 import CONDITIONS_V2, tail_codes
from ehr_ssl.data.synthetic.simulation_v2 import _last_before

N_VISITS = 4000


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return generate_cohort(N_VISITS, labeled_frac=1.0, seed=7, version=2)


def before_arrival(cohort: Cohort, code: str | None = None) -> pl.DataFrame:
    """Each visit's events before its arrival (optionally of one code), with the visit."""
    events = cohort.events if code is None else cohort.events.filter(pl.col("code") == code)
    return events.join(cohort.visits, on="patient_id").filter(
        pl.col("time") < pl.col("arrival_time")
    )


def test_version_one_is_the_cohort_of_the_recorded_figures() -> None:
    # Counts of version 1 before version 2 existed (2026-12-04): its draws must never move.
    old = generate_cohort(3000, labeled_frac=0.3, seed=7, version=1)
    assert old.events.height == 140_622
    assert old.events["code"].n_unique() == 4_560
    assert int(old.labels["label"].sum()) == 246


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version must be one of"):
        generate_cohort(10, version=3)


def test_deterministic_for_a_seed() -> None:
    a = generate_cohort(800, labeled_frac=0.5, seed=3, version=2)
    b = generate_cohort(800, labeled_frac=0.5, seed=3, version=2)
    assert a.events.equals(b.events) and a.labels.equals(b.labels)
    assert not a.events.equals(generate_cohort(800, labeled_frac=0.5, seed=4, version=2).events)


def test_some_patients_arrive_without_local_history(cohort: Cohort) -> None:
    first = cohort.visits.group_by("patient_id").agg(pl.col("arrival_time").min())
    with_history = cohort.events.join(first, on="patient_id").filter(
        pl.col("time") < pl.col("arrival_time")
    )
    share = 1 - with_history["patient_id"].n_unique() / first.height
    assert 0.25 < share < 0.55  # 40% of patients are new to the hospital


def test_no_code_category_names_a_minor_condition() -> None:
    for condition in CONDITIONS_V2[12:]:
        own = set(condition.dx_family)
        for category in {code[:7] for code in own}:  # "DX//M45"
            others = {c for c in tail_codes() if c.startswith(category)} | {
                code
                for other in CONDITIONS_V2
                if other is not condition
                for code in other.dx_family
                if code.startswith(category)
            }
            assert others, f"{category} holds only {condition.name}'s codes"


def test_a_recent_inpatient_stay_raises_the_risk(cohort: Cohort) -> None:
    stays = before_arrival(cohort, "ADMIT//INPATIENT")
    days = stays.group_by("visit_id").agg(
        ((pl.col("arrival_time") - pl.col("time")).dt.total_days()).min().alias("days")
    )
    risk = cohort.oracle.join(days, on="visit_id", how="left")
    recent = risk.filter(pl.col("days") <= 30)["admission_probability"].mean()
    old = risk.filter(pl.col("days") > 365)["admission_probability"].mean()
    assert recent > old + 0.1


def test_chronic_kidney_disease_progresses_in_the_creatinine(cohort: Cohort) -> None:
    ckd = cohort.latent.filter(pl.col("chronic_kidney_disease"))["patient_id"]
    values = (
        cohort.events.filter(
            (pl.col("code") == "LAB//CREATININE") & pl.col("patient_id").is_in(ckd.implode())
        )
        .sort("time")
        .group_by("patient_id")
        .agg(pl.col("numeric_value").first().alias("first"), pl.col("numeric_value").last())
        .filter(pl.col("first").is_not_null())
    )
    assert values.height > 50
    rising = np.log(values["numeric_value"].to_numpy() / values["first"].to_numpy())
    assert rising.mean() > 0.05


def test_vitals_and_triage_are_sometimes_missing(cohort: Cohort) -> None:
    for code in ("VITAL//TEMP", "TRIAGE//ESI"):
        window = cohort.events.filter(pl.col("code") == code).join(cohort.visits, on="patient_id")
        recorded = window.filter(
            pl.col("time").is_between(
                pl.col("arrival_time"), pl.col("arrival_time") + timedelta(hours=1)
            )
        )["visit_id"].n_unique()
        assert 0.8 * N_VISITS < recorded < N_VISITS, code


def test_a_long_tail_of_rare_codes(cohort: Cohort) -> None:
    per_code = cohort.events.group_by("code").agg(pl.col("patient_id").n_unique())
    assert per_code.height > 15_000
    assert (per_code["patient_id"] < 10).mean() > 0.5


def test_last_before_finds_the_latest_strictly_earlier_time() -> None:
    pat = np.array([0, 0, 1, 2])
    time = np.array([10, 30, 5, 50])
    patient = np.array([0, 0, 0, 1, 2, 3])
    at = np.array([9, 10, 31, 100, 50, 1])
    found = _last_before(pat, time, patient, at)
    none = np.iinfo(np.int64).min // 4
    assert found.tolist() == [none, none, 30, 5, none, none]


def test_an_admission_elsewhere_leaves_no_trace_here(cohort: Cohort) -> None:
    """A return admitted at another hospital is neither a return nor an admission in this data:
    every return to this ED within a visit's 7 days ends in its recorded admission."""
    returns = (
        cohort.events.filter(pl.col("code") == "ENC//ED_RETURN")
        .join(cohort.visits, on="patient_id")
        .filter(
            pl.col("time").is_between(
                pl.col("arrival_time"), pl.col("arrival_time") + timedelta(days=7)
            )
        )
        .join(cohort.labels, on="visit_id")
    )
    assert returns.height > 0 and returns["label"].all()
