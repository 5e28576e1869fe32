"""The evaluation report of a pipeline run: test metrics of every model at the main label budget,
paired comparisons with the reference model and the label-efficiency curve over budgets and seeds,
as plain JSON-ready Python; `write_report` writes it with its renderings, plots and predictions."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ehr_ssl.atomic import atomic_write_text
from ehr_ssl.data.schema import ORACLE_FILENAME
from ehr_ssl.errors import InputError
from ehr_ssl.evaluation.caveats import NEAR_CHANCE, near_chance
from ehr_ssl.evaluation.clinical import clinical_sections
from ehr_ssl.evaluation.metrics import (
    auroc,
    bootstrap_ci,
    calibration_ci,
    evaluate_predictions,
    paired_bootstrap_difference,
    seed_mean_bootstrap_ci,
)
from ehr_ssl.evaluation.plots import write_plots
from ehr_ssl.evaluation.predictions import (
    AlignedPredictions,
    check_test_predictions,
    with_run_visit_ids,
    write_predictions,
)
from ehr_ssl.evaluation.render import format_report_markdown
from ehr_ssl.layout import PREDICTIONS_FILE, REPORT_JSON, REPORT_MD

ORACLE_COLUMNS = ("visit_id", "admission_probability")


def build_report(
    predictions: pl.DataFrame,
    *,
    main_budget: str,
    reference: str = "ssl",
    oracle: pl.DataFrame | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    settings: dict | None = None,
    selection: dict | None = None,
    validation: pl.DataFrame | None = None,
    thresholds_from: str | None = None,
    statics: pl.DataFrame | None = None,
) -> dict[str, Any]:
    """The evaluation report of a run's test predictions, as plain JSON-ready Python.

    The main table evaluates every model at `main_budget` with the smallest training seed all of
    them have; each non-reference model gets the paired bootstrap difference reference minus it
    (AUROC) and the relative gain. The label-efficiency curve gives, per budget and model, the
    AUROC averaged over seeds with a patient-level bootstrap interval, and the reference minus
    each model over their common seeds. Every bootstrap uses the
    same `seed`, so all of them draw the same resampled patients. Only rows with split "test"
    are used.

    Shape: predictions (rows = test visits x models x budgets x seeds) -> dict.

    Args:
        predictions: Columns visit_id, patient_id, split, model, budget (str), seed, train_labels,
            score (in [0, 1]), label (bool or 0/1). Every (model, budget, seed) group must score
            the same test visits. Models keep their order of first appearance.
        main_budget: The label budget of the main table, e.g. "1000".
        reference: The model the others are compared with.
        oracle: Optional frame (visit_id, admission_probability): the true risk of the synthetic
            cohort, whose AUROC is the ceiling any model can reach.
        n_boot: Bootstrap replicates of every interval.
        seed: Seed of the bootstraps (not a model's training seed).
        settings: Settings of the run, echoed under "settings".
        selection: Model-selection facts (e.g. validation AUROCs), echoed under "selection".
        validation: Predictions-contract rows with split "val": the reference model's scores
            at the main budget and seed there fix the operating thresholds (never the test).
        thresholds_from: Which data `validation` is, in words, echoed in the report.
        statics: visit_id and static columns (sex, age, ...) of the test visits, for subgroups.

    Returns:
        {"reference", "label_budget", "seed" (the training seed of the main table), "n_test",
        "n_test_patients", "test_prevalence", "n_boot", "bootstrap_seed", "oracle_auroc" and
        "oracle_auroc_ci95" (None without an oracle value for every test visit), "models" (name ->
        `evaluate_predictions` keys + "train_labels", "reference_minus_this", "relative_gain",
        "gap_to_oracle"; the comparison keys are None for the reference itself),
        "label_efficiency" (one {"budget", "train_labels", "models"} per budget, numeric order,
        "all" last; each model's cell has `seed_mean_bootstrap_ci`'s keys and
        "reference_minus_this", see `_seed_mean_difference`), "settings", "selection"}.

    Raises:
        ValueError: On missing columns or nulls, groups not scoring the same visits, a
            `main_budget` or `reference` absent from the predictions, or undefined metrics (a
            single class among the test labels).
    """
    aligned = AlignedPredictions(check_test_predictions(predictions))
    main_models, main_seed = _main_models_and_seed(aligned, main_budget, reference)
    boot = {"n_boot": n_boot, "seed": seed}
    oracle_auroc, oracle_ci = _oracle_auroc(oracle, aligned, boot)
    y, groups = aligned.y, aligned.groups
    clinical = clinical_sections(
        aligned, models=main_models, reference=reference, budget=main_budget, seed=main_seed,
        validation=validation, thresholds_from=thresholds_from, statics=statics, boot=boot,
    )  # fmt: skip
    models = _main_table(
        aligned, main_models, main_budget, main_seed, reference, oracle_auroc, boot
    )
    _add_reference_calibration(models[reference], clinical["calibration"])
    clinical["caveats"]["warnings"] += _omitted_gains(models, reference)
    return {
        "reference": reference,
        "label_budget": main_budget,
        "seed": int(main_seed),
        "n_test": len(y),
        "n_test_patients": len(np.unique(groups)),
        "test_prevalence": float(y.mean()),
        "n_boot": n_boot,
        "bootstrap_seed": seed,
        "oracle_auroc": oracle_auroc,
        "oracle_auroc_ci95": oracle_ci,
        "models": models,
        "label_efficiency": _label_efficiency(aligned, reference, boot),
        "settings": _plain(dict(settings or {}), "settings"),
        "selection": _plain(dict(selection or {}), "selection"),
        **clinical,
    }


def _add_reference_calibration(entry: dict[str, Any], calibration: dict[str, Any]) -> None:
    """The reference's calibration intervals in its main-table entry (a bundle copies it)."""
    entry["calibration_slope_ci95"] = calibration["slope_ci95"]
    entry["calibration_intercept_ci95"] = calibration["intercept_ci95"]


def _omitted_gains(models: dict[str, Any], reference: str) -> list[str]:
    """A warning naming the models whose relative gain is left out (an AUROC near chance)."""
    omitted = [name for name, m in models.items()
               if name != reference and m["relative_gain"] is None]  # fmt: skip
    if not omitted:
        return []
    return [
        f"relative gain left out for {', '.join(omitted)}: with an AUROC below or within "
        f"{NEAR_CHANCE} of 0.5, (AUROC_ref - 0.5) / (AUROC - 0.5) explodes or says nothing"
    ]


def _main_models_and_seed(
    aligned: AlignedPredictions, main_budget: str, reference: str
) -> tuple[list[str], int]:
    """The models with predictions at `main_budget` (the reference among them) and the smallest
    training seed all of them have."""
    if main_budget not in aligned.budgets:
        raise ValueError(
            f"main_budget {main_budget!r} is not among the predictions' budgets {aligned.budgets}"
        )
    main_models = [m for m in aligned.models if aligned.seeds(m, main_budget)]
    if reference not in main_models:
        raise ValueError(
            f"reference model {reference!r} has no predictions at budget {main_budget!r}; "
            f"models there: {main_models}"
        )
    common_seeds = set.intersection(*(set(aligned.seeds(m, main_budget)) for m in main_models))
    if not common_seeds:
        raise ValueError(f"the models at budget {main_budget!r} share no training seed")
    return main_models, min(common_seeds)


def _oracle_auroc(
    oracle: pl.DataFrame | None, aligned: AlignedPredictions, boot: dict[str, int]
) -> tuple[float | None, list[float] | None]:
    """The oracle's test AUROC and its bootstrap interval; (None, None) without an oracle value
    for every test visit."""
    if oracle is None:
        return None, None
    oracle_scores = _oracle_scores(oracle, aligned.visit_id)
    if oracle_scores is None:
        return None, None
    y, groups = aligned.y, aligned.groups
    return auroc(y, oracle_scores), list(bootstrap_ci(auroc, y, oracle_scores, groups, **boot))


def _main_table(
    aligned: AlignedPredictions,
    main_models: list[str],
    main_budget: str,
    main_seed: int,
    reference: str,
    oracle_auroc: float | None,
    boot: dict[str, int],
) -> dict[str, Any]:
    """Every main model's test metrics at the main budget and seed, with the paired difference
    reference minus it, the relative gain and the gap to the oracle (None where undefined)."""
    y, groups = aligned.y, aligned.groups
    reference_scores = aligned.scores(reference, main_budget, main_seed)
    reference_auroc = auroc(y, reference_scores)
    models: dict[str, Any] = {}
    for name in main_models:
        scores = aligned.scores(name, main_budget, main_seed)
        entry = evaluate_predictions(y, scores, groups, **boot)
        entry["train_labels"] = aligned.train_labels(name, main_budget, main_seed)
        if name == reference:
            entry["reference_minus_this"] = entry["relative_gain"] = None
        else:
            entry["reference_minus_this"] = paired_bootstrap_difference(
                auroc, y, reference_scores, scores, groups, **boot
            )
            entry["relative_gain"] = _relative_gain(reference_auroc, entry["auroc"])
        entry["gap_to_oracle"] = None if oracle_auroc is None else oracle_auroc - entry["auroc"]
        models[name] = entry
    return models


def _label_efficiency(
    aligned: AlignedPredictions, reference: str, boot: dict[str, int]
) -> list[dict[str, Any]]:
    """One entry per budget (numeric order, "all" last): the median number of training labels and
    each model's seed-mean AUROC with its interval and its difference with the reference."""
    y, groups = aligned.y, aligned.groups
    label_efficiency = []
    for budget in aligned.budgets:
        per_model, train_labels = {}, []
        for name in aligned.models:
            seeds = aligned.seeds(name, budget)
            if not seeds:
                continue
            scores = np.stack([aligned.scores(name, budget, s) for s in seeds])  # (S, n)
            per_model[name] = seed_mean_bootstrap_ci(auroc, y, scores, groups, **boot)
            train_labels += [aligned.train_labels(name, budget, s) for s in seeds]
        for name, cell in per_model.items():
            cell["reference_minus_this"] = _seed_mean_difference(
                aligned, reference, name, budget, boot
            )
        label_efficiency.append(
            {
                "budget": budget,
                "train_labels": int(round(float(np.median(train_labels)))),
                "models": per_model,
            }
        )
    return label_efficiency


def _seed_mean_difference(
    aligned: AlignedPredictions, reference: str, name: str, budget: str, boot: dict[str, int]
) -> dict[str, Any] | None:
    """Reference minus model at one budget, over the training seeds both have (seed s of every
    model trained on the same label subset): the paired bootstrap difference of the seed means,
    plus "min" and "max" of the per-seed differences (the spread between label subsets, which
    the interval, resampling test patients only, does not hold) and "n_seeds". None for the
    reference itself or without a common seed."""
    seeds = sorted(set(aligned.seeds(reference, budget)) & set(aligned.seeds(name, budget)))
    if name == reference or not seeds:
        return None
    y, groups = aligned.y, aligned.groups
    ref = np.stack([aligned.scores(reference, budget, s) for s in seeds])  # (S, n)
    other = np.stack([aligned.scores(name, budget, s) for s in seeds])  # (S, n)
    result = paired_bootstrap_difference(auroc, y, ref, other, groups, **boot)
    per_seed = [auroc(y, a) - auroc(y, b) for a, b in zip(ref, other, strict=True)]
    return result | {"min": min(per_seed), "max": max(per_seed), "n_seeds": len(seeds)}


def _relative_gain(reference_auroc: float, model_auroc: float) -> float | None:
    """(AUROC_ref - 0.5) / (AUROC_model - 0.5) - 1: how much more of the above-chance
    discrimination the reference achieves; None when either AUROC is near chance (within
    `NEAR_CHANCE` of 0.5: the ratio explodes or says nothing) or the model is below it."""
    if model_auroc <= 0.5 or near_chance(model_auroc) or near_chance(reference_auroc):
        return None
    return (reference_auroc - 0.5) / (model_auroc - 0.5) - 1.0


def _oracle_scores(oracle: pl.DataFrame, visit_id: np.ndarray) -> np.ndarray | None:
    """The oracle's admission probability of each test visit, aligned; None if any is missing."""
    missing = [c for c in ORACLE_COLUMNS if c not in oracle.columns]
    if missing:
        raise InputError(f"lacks column(s) {missing}", file=ORACLE_FILENAME)
    oracle = oracle.select(ORACLE_COLUMNS)
    if oracle["visit_id"].n_unique() != oracle.height:
        raise InputError("duplicate values", file=ORACLE_FILENAME, column="visit_id")
    visits = pl.DataFrame({"visit_id": visit_id})
    oracle = with_run_visit_ids(oracle, visits, file=ORACLE_FILENAME)
    joined = visits.join(
        oracle,
        on="visit_id",
        how="left",
        maintain_order="left",
    )
    probability = joined["admission_probability"]
    if probability.null_count() or probability.cast(pl.Float64).is_nan().any():
        return None
    return probability.cast(pl.Float64).to_numpy()


# ----------------------------------------------------------------------------------------------
# reading and writing a report


MODEL_METRICS = ("auroc", "auroc_ci95", "auprc", "brier", "calibration_slope",
                 "calibration_intercept", "n", "prevalence", "calibration_slope_ci95",
                 "calibration_intercept_ci95")  # fmt: skip


def model_metrics(report: dict[str, Any] | None, model: str) -> dict[str, Any] | None:
    """One model's test metrics from a report (its main budget and seed), without the
    comparison keys (None if absent)."""
    if report is None or model not in report.get("models", {}):
        return None
    return {k: report["models"][model].get(k) for k in MODEL_METRICS}


def model_metrics_at(
    predictions: pl.DataFrame, model: str, budget: str, seed: int, *, n_boot: int, boot_seed: int
) -> dict[str, Any] | None:
    """One model's test metrics at one label budget and seed, from a run's predictions (the
    report's main table holds only its main budget and seed); None when it has none there or
    only one class."""
    rows = predictions.filter(
        (pl.col("split") == "test") & (pl.col("model") == model) & (pl.col("budget") == budget)
        & (pl.col("seed") == seed) & pl.col("label").is_not_null()
    )  # fmt: skip
    if rows["label"].n_unique() < 2:
        return None
    y, p, groups = (rows[c].to_numpy() for c in ("label", "score", "patient_id"))
    metrics = evaluate_predictions(y, p, groups, n_boot=n_boot, seed=boot_seed)
    fit = calibration_ci(y, p, groups, n_boot=n_boot, seed=boot_seed)
    metrics["calibration_slope_ci95"] = fit["slope_ci95"]
    metrics["calibration_intercept_ci95"] = fit["intercept_ci95"]
    return {k: metrics[k] for k in MODEL_METRICS}


def write_report(predictions: pl.DataFrame, report: dict[str, Any], out_dir: Path) -> None:
    """Write predictions.parquet, the plots, report.md and report.json into `out_dir`.

    Every file is written under a temporary name beside its target and renamed into place, so an
    interrupted call never leaves a partial file; report.json comes last, so that a report.json
    stands beside the predictions and plots it describes.

    Args:
        predictions: The predictions `report` was built from (all splits, written as given, with
            the columns visit_id, patient_id, split, model, score, label first, then budget, seed,
            train_labels, then any others).
        report: A `build_report` result.
        out_dir: Output directory, created if needed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(predictions, out_dir / PREDICTIONS_FILE)
    write_plots(predictions, report, out_dir)
    atomic_write_text(out_dir / REPORT_MD, format_report_markdown(report))
    atomic_write_text(out_dir / REPORT_JSON, json.dumps(report, indent=2) + "\n")


def _plain(value: Any, where: str) -> Any:
    """`value` as plain JSON-ready Python: numpy scalars and arrays, paths and tuples converted."""
    if isinstance(value, np.generic):  # before float: np.float64 subclasses float
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{where} is not JSON-serializable: {type(value).__name__}")
