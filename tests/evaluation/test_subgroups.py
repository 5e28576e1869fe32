"""Subgroups: age bands, counts that sum to the test set, the statics joined by visit, and no
cell that singles out a few patients (rare values pooled, no one's exact value a bound)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ehr_ssl.errors import InputError
from ehr_ssl.evaluation.subgroups import (
    MIN_PATIENTS,
    MISSING,
    OTHER,
    age_band,
    align_statics,
    subgroup_labels,
    subgroup_table,
)


def test_age_bands_at_their_edges():
    ages = [0, 17.9, 18, 44.9, 45, 64, 65, 79.5, 80, 103, float("nan")]
    assert age_band(ages).tolist() == [
        "<18", "<18", "18-44", "18-44", "45-64", "45-64", "65-79", "65-79", "80+", "80+", MISSING
    ]  # fmt: skip


def cohort(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < p).astype(float)
    ages = [None if rng.random() < 0.05 else float(a) for a in rng.uniform(18, 95, n)]
    statics = pl.DataFrame(
        {
            "age": pl.Series(ages, dtype=pl.Float64),
            "sex": rng.choice(["F", "M"], n),
            "triage": rng.integers(1, 6, n),
        }
    )
    return y, p, np.arange(n) // 2, statics


def test_subgroup_counts_sum_to_the_test_set():
    y, p, groups, statics = cohort()
    table = subgroup_table(y, p, groups, statics, n_boot=50, seed=0)
    assert list(table) == ["age", "sex", "triage"]
    for rows in table.values():
        assert not any(r.get("suppressed") for r in rows)  # 200 patients, every cell >= 11
        assert sum(r["n"] for r in rows) == len(y)
        assert sum(r["n_positives"] for r in rows) == int(y.sum())
    assert [r["value"] for r in table["sex"]] == ["F", "M"]
    assert table["age"][-1]["value"] == MISSING  # nulls are a subgroup of their own, last
    for row in table["sex"]:
        low, high = row["auroc_ci95"]
        assert low <= row["auroc"] <= high


def test_a_one_class_subgroup_has_no_auroc_and_is_flagged_small():
    y, p, groups, statics = cohort(60)
    statics = statics.with_columns(sex=pl.Series(np.where(y == 1, "F", "M")))
    rows = subgroup_table(y, p, groups, statics.select("sex"), n_boot=20, seed=0)["sex"]
    assert all(r["auroc"] is None and r["calibration"] is None and r["small"] for r in rows)


def test_quartile_bands_of_a_numeric_column_are_ordered_and_open_at_the_ends():
    weights = [41.3, 55.0, 60.0, 70.0, 80.0, 92.0, 157.9, None]
    labels = subgroup_labels(pl.DataFrame({"weight": weights}))["weight"]
    assert labels[-1] == MISSING and len(set(labels.tolist())) == 5
    assert not any("41.3" in band or "157.9" in band for band in labels)  # the extremes
    y, p, groups, _ = cohort(len(weights))
    rows = subgroup_table(y, p, groups, pl.DataFrame({"weight": weights}), n_boot=5, seed=0)
    assert [r["value"] for r in rows["weight"]] == ["<57.5", "[57.5, 70)", "[70, 86)", ">=86",
                                                    MISSING]  # fmt: skip


def test_a_value_of_few_patients_is_pooled_into_other():
    y, p, groups, statics = cohort()  # 200 patients, two visits each
    rare = np.isin(groups, np.arange(MIN_PATIENTS - 1))  # 10 patients: below the minimum
    language = np.where(rare, "Tigrinya", np.where(groups % 2 == 0, "English", "Spanish"))
    language[rare & (groups == 0)] = "Wolof"  # one patient alone
    table = subgroup_table(y, p, groups, pl.DataFrame({"language": language}), n_boot=5, seed=0)
    rows = table["language"]
    assert [r["value"] for r in rows] == ["English", "Spanish", OTHER]
    # "other" holds 10 patients, still under the minimum: listed, its figures withheld
    assert rows[-1]["suppressed"] and rows[-1]["n"] is None and rows[-1]["observed_rate"] is None
    assert sum(r["n"] for r in rows[:2]) == len(y) - 2 * (MIN_PATIENTS - 1)


def test_no_cell_of_fewer_patients_than_the_minimum_is_published():
    y, p, groups, statics = cohort()
    first_four, over_79 = pl.int_range(pl.len()) < 4, pl.col("age") > 79
    age = pl.when(first_four).then(97.0).when(over_79).then(70.0).otherwise("age")
    statics = statics.with_columns(age=age)
    table = subgroup_table(y, p, groups, statics, n_boot=5, seed=0)
    old = next(r for r in table["age"] if r["value"] == "80+")  # two patients aged 97
    assert old["suppressed"] and old["n_positives"] is None and old["mean_score"] is None
    for rows in table.values():
        for row in rows:
            assert row.get("suppressed") or row["n_patients"] >= MIN_PATIENTS


def test_a_binary_or_constant_numeric_column_gets_bands_without_failing():
    y, p, groups, _ = cohort(100)
    flags = pl.DataFrame({"ambulance": [0] * 70 + [1] * 30, "one": [1.0] * 100})
    table = subgroup_table(y, p, groups, flags, n_boot=5, seed=0)
    assert [r["value"] for r in table["ambulance"]] == ["<1", ">=1"]
    assert [r["n"] for r in table["ambulance"]] == [70, 30]
    assert [r["value"] for r in table["one"]] == ["all"]


def test_statics_are_joined_by_visit_and_a_foreign_id_type_is_an_input_error():
    statics = pl.DataFrame({"visit_id": [3, 1, 2], "sex": ["M", "F", "M"]})
    aligned = align_statics(statics, np.array([1, 2, 3, 9]))
    assert aligned["sex"].to_list() == ["F", "M", "M", None]
    with pytest.raises(InputError, match="visit_id"):
        align_statics(statics.with_columns(pl.lit("x").alias("visit_id")), np.array([1, 2]))
