"""The report's sections a clinician acts on, for the reference model at the main budget and seed:
sample-size caveats, measured calibration, operating points fixed on validation scores, subgroup
performance and the decision curve of every main model."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from ehr_ssl.evaluation.caveats import (
    SAMPLE_SIZE_THRESHOLDS,
    calibration_statement,
    sample_size_warnings,
)
from ehr_ssl.evaluation.decision_curve import decision_curve
from ehr_ssl.evaluation.metrics import calibration_ci
from ehr_ssl.evaluation.operating_points import fix_thresholds, operating_points
from ehr_ssl.evaluation.predictions import AlignedPredictions
from ehr_ssl.evaluation.subgroups import AGE_BANDS, align_statics, subgroup_table


def caveats(aligned: AlignedPredictions) -> dict[str, Any]:
    """The sample-size thresholds and the warnings of the test set."""
    n_positives = int(aligned.y.sum())
    n_patients = len(np.unique(aligned.groups))
    warnings = sample_size_warnings(n_patients, n_positives, len(aligned.y) - n_positives)
    return {"thresholds": dict(SAMPLE_SIZE_THRESHOLDS), "warnings": warnings}


def calibration_section(scores: np.ndarray, aligned: AlignedPredictions, model: str,
                        boot: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    """A model's calibration slope and intercept with intervals, and the sentence saying it."""
    fit = calibration_ci(aligned.y, scores, aligned.groups, n_boot=boot["n_boot"],
                         seed=boot["seed"])  # fmt: skip
    statement = calibration_statement(
        fit["slope"], fit["intercept"], fit["slope_ci95"], fit["intercept_ci95"]
    )
    return {"model": model, **fit, "statement": statement}


def validation_rows(
    validation: pl.DataFrame | None, model: str, budget: str, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Labels and scores of `model` at (budget, seed) among the split "val" rows of a
    predictions-contract frame; None when there are none."""
    if validation is None:
        return None
    rows = validation.filter(
        (pl.col("split") == "val") & (pl.col("model") == model)
        & (pl.col("budget").cast(pl.String) == budget) & (pl.col("seed") == seed)
    )  # fmt: skip
    if rows.height == 0:
        return None
    return rows["label"].cast(pl.Float64).to_numpy(), rows["score"].cast(pl.Float64).to_numpy()


def operating_points_section(
    scores: np.ndarray,
    aligned: AlignedPredictions,
    model: str,
    validation: tuple[np.ndarray, np.ndarray] | None,
    thresholds_from: str | None,
    boot: dict[str, int],
) -> dict[str, Any]:
    """Thresholds fixed on the validation labels and scores, applied to the test set; without
    validation scores of both classes, no points and a note saying why."""
    section: dict[str, Any] = {"model": model, "thresholds_from": None, "points": [], "note": None}
    if validation is None:
        section["note"] = "no validation scores of this model were kept: thresholds not fixed"
        return section
    y_val, p_val = validation
    n_positives = int(y_val.sum())
    if n_positives in (0, len(y_val)):
        section["note"] = f"the {len(y_val)} validation visits hold one class: no thresholds"
        return section
    section["thresholds_from"] = {"data": thresholds_from or "validation scores",
                                  "n": len(y_val), "n_positives": n_positives}  # fmt: skip
    rules = fix_thresholds(y_val, p_val)
    section["points"] = operating_points(
        aligned.y, scores, aligned.groups, rules, n_boot=boot["n_boot"], seed=boot["seed"]
    )
    return section


def subgroups_section(
    scores: np.ndarray,
    aligned: AlignedPredictions,
    model: str,
    statics: pl.DataFrame | None,
    boot: dict[str, int],
) -> dict[str, Any] | None:
    """Subgroup AUROC and calibration of a model by every static column (None without any)."""
    if statics is None or statics.width <= 1:
        return None
    aligned_statics = align_statics(statics, aligned.visit_id)
    columns = subgroup_table(aligned.y, scores, aligned.groups, aligned_statics,
                             n_boot=boot["n_boot"], seed=boot["seed"])  # fmt: skip
    bands = ", ".join(name for _, name in AGE_BANDS)
    return {"model": model, "age_bands": f"{bands} (years at arrival)", "columns": columns}


def clinical_sections(
    aligned: AlignedPredictions,
    *,
    models: list[str],
    reference: str,
    budget: str,
    seed: int,
    validation: pl.DataFrame | None,
    thresholds_from: str | None,
    statics: pl.DataFrame | None,
    boot: dict[str, int],
) -> dict[str, Any]:
    """The report keys "caveats", "calibration", "operating_points", "subgroups" and
    "decision_curve" (every main model's net benefit at the report's budget and seed)."""
    scores = aligned.scores(reference, budget, seed)
    return {
        "caveats": caveats(aligned),
        "calibration": calibration_section(scores, aligned, reference, boot),
        "operating_points": operating_points_section(
            scores,
            aligned,
            reference,
            validation_rows(validation, reference, budget, seed),
            thresholds_from,
            boot,
        ),  # fmt: skip
        "subgroups": subgroups_section(scores, aligned, reference, statics, boot),
        "decision_curve": decision_curve(
            aligned.y, {name: aligned.scores(name, budget, seed) for name in models}
        ),
    }
