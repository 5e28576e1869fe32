"""Subgroup performance: AUROC and calibration of one model's test scores by sex, age band and
every other static column of the visits, with counts and patient-bootstrap intervals.

Age bands (years at arrival): <18, 18-44, 45-64, 65-79, 80+. Other numeric columns are cut at the
quartiles of their test values, the outer bands open ("<q1", ">=q3": no one's exact value is a
bound); categorical ones are grouped by value, a value held by fewer than `MIN_PATIENTS` test
patients pooled into "other"; a null is "missing". The report travels in bundles, so no cell
singles out a few patients: any subgroup still under `MIN_PATIENTS` patients is listed with
its counts and figures withheld.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import polars as pl

from ehr_ssl.evaluation.caveats import is_small
from ehr_ssl.evaluation.metrics import auroc, bootstrap_ci, calibration_ci
from ehr_ssl.evaluation.predictions import with_run_visit_ids

AGE_BANDS = ((0.0, "<18"), (18.0, "18-44"), (45.0, "45-64"), (65.0, "65-79"), (80.0, "80+"))
AGE_COLUMN = "age"
MISSING = "missing"
OTHER = "other"
# Small-cell suppression, as public health data releases do (CMS: no cell under 11).
MIN_PATIENTS = 11
# A subgroup of fewer than MIN_PATIENTS patients: listed, its counts and figures withheld.
SUPPRESSED: dict[str, Any] = {
    "suppressed": True, "n": None, "n_patients": None, "n_positives": None,
    "observed_rate": None, "mean_score": None, "auroc": None, "auroc_ci95": None,
    "calibration": None, "small": True,
}  # fmt: skip


def align_statics(statics: pl.DataFrame, visit_id: np.ndarray) -> pl.DataFrame:
    """The static columns of each visit of `visit_id`, in its order (nulls where a visit has
    none). Raises InputError when the visit ids are of another type than the run's."""
    visits = pl.DataFrame({"visit_id": visit_id})
    statics = with_run_visit_ids(statics, visits, file="visits")
    statics = statics.unique("visit_id", keep="first")
    return visits.join(statics, on="visit_id", how="left", maintain_order="left").drop("visit_id")


def age_band(age: Any) -> np.ndarray:
    """The `AGE_BANDS` label of each age (MISSING for a null or NaN). Shape: (n,) -> (n,)."""
    values = np.asarray(age, dtype=np.float64)
    lower = np.array([bound for bound, _ in AGE_BANDS])
    names = np.array([name for _, name in AGE_BANDS] + [MISSING], dtype=object)
    position = np.searchsorted(lower, values, side="right") - 1  # band whose lower bound <= age
    position = np.where(np.isnan(values), len(AGE_BANDS), np.maximum(position, 0))
    return names[position]


def _quartile_band(values: Any) -> np.ndarray:
    """Each value's quartile band of the non-null values, named by its bounds, the outer ones
    open: "<2", "[2, 5.5)", ">=5.5" (MISSING for null). Shape: (n,) -> (n,)."""
    x = np.asarray(values, dtype=np.float64)
    known = x[~np.isnan(x)]
    if known.size == 0:
        return np.full(len(x), MISSING, dtype=object)
    inner = np.unique(np.quantile(known, [0.25, 0.5, 0.75]))
    inner = inner[inner > known.min()]  # each band holds someone
    if inner.size == 0 and known.max() > known.min():  # most at the minimum (a 0/1 flag)
        inner = np.array([known[known > known.min()].min()])
    if inner.size == 0:  # one value: one band
        names = ["all"]
    else:
        middle = [f"[{a:.4g}, {b:.4g})" for a, b in zip(inner[:-1], inner[1:], strict=True)]
        names = [f"<{inner[0]:.4g}", *middle, f">={inner[-1]:.4g}"]
    position = np.searchsorted(inner, x, side="right")
    labels = np.array(names + [MISSING], dtype=object)
    return labels[np.where(np.isnan(x), len(names), position)]


def _band_order(band: str) -> float:
    """Where a quartile band starts, for reading order ("<q1" first)."""
    if band.startswith("<") or band == "all":
        return -np.inf
    return float(band.removeprefix(">=").removeprefix("[").split(",")[0])


def _pool_rare_values(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """A categorical column's labels with each value held by fewer than MIN_PATIENTS patients
    (`groups`) replaced by OTHER (MISSING kept). Shape: (n,), (n,) -> (n,)."""
    frame = pl.DataFrame({"value": labels.tolist(), "patient": groups})
    patients = frame.group_by("value").agg(pl.col("patient").n_unique())
    rare = patients.filter((pl.col("patient") < MIN_PATIENTS) & (pl.col("value") != MISSING))
    return np.where(np.isin(labels, rare["value"].to_numpy()), OTHER, labels).astype(object)


def subgroup_labels(aligned_statics: pl.DataFrame) -> dict[str, np.ndarray]:
    """Column -> the subgroup of each row: age bands for `age`, quartile bands for another
    numeric column, the value (as text) for a categorical one. Shape: rows (n,) -> (n,) each."""
    labels = {}
    for name, dtype in aligned_statics.schema.items():
        column = aligned_statics[name]
        if name == AGE_COLUMN and dtype.is_numeric():
            labels[name] = age_band(column.cast(pl.Float64).fill_null(np.nan).to_numpy())
        elif dtype.is_numeric():
            labels[name] = _quartile_band(column.cast(pl.Float64).fill_null(np.nan).to_numpy())
        else:
            labels[name] = column.cast(pl.String).fill_null(MISSING).to_numpy().astype(object)
    return labels


def _ordered_values(name: str, labels: np.ndarray, *, numeric: bool) -> list[str]:
    """A column's subgroups in reading order: age bands in age order, quartile bands by their
    lower bound, other values alphabetically, then OTHER; MISSING last."""
    present = set(labels.tolist())
    if name == AGE_COLUMN:
        order = [band for _, band in AGE_BANDS]
    elif numeric:
        order = sorted(present - {MISSING}, key=_band_order)
    else:
        order = sorted(present - {MISSING, OTHER}) + [OTHER]
    return [v for v in [*order, MISSING] if v in present]


def subgroup_metrics(
    y: np.ndarray, p: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int
) -> dict[str, Any]:
    """Counts, observed and mean predicted risk, AUROC and calibration of one subgroup, with
    patient-bootstrap intervals (None where undefined, e.g. a subgroup with one class).

    Shape: y, p, groups (m,) -> dict.
    """
    n_positives = int(y.sum())
    n_patients = len(np.unique(groups))
    entry: dict[str, Any] = {
        "n": len(y), "n_patients": n_patients, "n_positives": n_positives,
        "observed_rate": float(y.mean()), "mean_score": float(p.mean()),
        "auroc": None, "auroc_ci95": None, "calibration": None,
        "small": is_small(n_patients, n_positives, len(y) - n_positives),
    }  # fmt: skip
    if 0 < n_positives < len(y):
        entry["auroc"] = auroc(y, p)
        # one class in every replicate (a single patient): no interval
        with contextlib.suppress(ValueError):
            entry["auroc_ci95"] = list(bootstrap_ci(auroc, y, p, groups, n_boot=n_boot, seed=seed))
        entry["calibration"] = calibration_ci(y, p, groups, n_boot=n_boot, seed=seed)
    return entry


def subgroup_table(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    aligned_statics: pl.DataFrame,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, list[dict[str, Any]]]:
    """Column -> one `subgroup_metrics` entry (plus "value") per subgroup, in reading order;
    a subgroup of fewer than MIN_PATIENTS patients is listed as suppressed, without counts or
    figures (`SUPPRESSED`), and the counts of the others sum to the test set's less its.

    Shape: y, p, groups (n,); aligned_statics n rows -> dict.
    """
    table = {}
    for name, labels in subgroup_labels(aligned_statics).items():
        numeric = aligned_statics.schema[name].is_numeric()
        if not numeric:
            labels = _pool_rare_values(labels, groups)
        rows = []
        for value in _ordered_values(name, labels, numeric=numeric):
            inside = labels == value
            if len(np.unique(groups[inside])) < MIN_PATIENTS:
                rows.append({"value": value, **SUPPRESSED})
                continue
            metrics = subgroup_metrics(y[inside], p[inside], groups[inside], n_boot=n_boot,
                                       seed=seed)  # fmt: skip
            rows.append({"value": value, **metrics})
        table[name] = rows
    return table
