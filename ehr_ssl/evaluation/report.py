"""The evaluation report of a pipeline run: test metrics of every model at the main label budget,
paired comparisons with the reference model, the label-efficiency curve over budgets and seeds, and
their Markdown, terminal-table, JSON and PNG renderings."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ehr_ssl.atomic import atomic_file, atomic_write_text
from ehr_ssl.evaluation.metrics import (
    auroc,
    bootstrap_ci,
    evaluate_predictions,
    paired_bootstrap_difference,
    seed_mean_bootstrap_ci,
)
from ehr_ssl.layout import (
    CALIBRATION_PLOT,
    LABEL_EFFICIENCY_PLOT,
    PREDICTIONS_FILE,
    REPORT_JSON,
    REPORT_MD,
    ROC_PLOT,
)

# The predictions contract: one row per (test visit, model, label budget, training seed).
PREDICTION_COLUMNS = (
    "visit_id",
    "patient_id",
    "split",
    "model",
    "budget",
    "seed",
    "train_labels",
    "score",
    "label",
)
# Column order of predictions.parquet: the identifying and scored columns first.
PARQUET_COLUMN_ORDER = (
    "visit_id",
    "patient_id",
    "split",
    "model",
    "score",
    "label",
    "budget",
    "seed",
    "train_labels",
)
ORACLE_COLUMNS = ("visit_id", "admission_probability")
DASH = "–"  # how a missing value (None) is shown
_GROUP = ("model", "budget", "seed")


# ----------------------------------------------------------------------------------------------
# input checks and alignment


def _test_predictions(predictions: pl.DataFrame) -> pl.DataFrame:
    """The test rows, checked: required columns, no nulls, budget as str, and every (model,
    budget, seed) group scoring each test visit exactly once with consistent labels and patients.
    Error messages count visits and never name one (no identifiers in errors)."""
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(
            f"predictions lack required column(s) {missing}; expected {list(PREDICTION_COLUMNS)}"
        )
    frame = predictions.select(PREDICTION_COLUMNS).with_columns(pl.col("budget").cast(pl.String))
    for column in PREDICTION_COLUMNS:
        nulls = frame[column].null_count()
        if nulls:
            raise ValueError(f"predictions column {column!r} has {nulls} null value(s)")
    frame = frame.filter(pl.col("split") == "test")
    if frame.height == 0:
        raise ValueError("predictions have no rows with split == 'test'")
    n_visits = frame["visit_id"].n_unique()
    counts = frame.group_by(_GROUP, maintain_order=True).agg(
        pl.len().alias("rows"),
        pl.col("visit_id").n_unique().alias("visits"),
        pl.col("train_labels").n_unique().alias("train_label_values"),
    )
    for row in counts.iter_rows(named=True):
        where = f"model {row['model']!r}, budget {row['budget']!r}, seed {row['seed']}"
        if row["rows"] != row["visits"]:
            raise ValueError(
                f"{where} scores {row['rows'] - row['visits']} test visit(s) more than once"
            )
        if row["visits"] != n_visits:
            raise ValueError(
                f"{where} scores {row['visits']} of the {n_visits} test visits: every (model, "
                "budget, seed) must score the same test visits"
            )
        if row["train_label_values"] != 1:
            raise ValueError(f"{where} has {row['train_label_values']} different train_labels")
    per_visit = frame.group_by("visit_id").agg(
        pl.col("label").n_unique().alias("labels"), pl.col("patient_id").n_unique().alias("pids")
    )
    for column, what in (("labels", "label"), ("pids", "patient_id")):
        bad = int((per_visit[column] > 1).sum())
        if bad:
            raise ValueError(f"{bad} test visit(s) have a different {what} in different groups")
    return frame


def _budget_key(budget: str) -> tuple[int, float, str]:
    """Numeric budgets in increasing order, then other names alphabetically, then "all"."""
    if budget == "all":
        return (2, 0.0, budget)
    try:
        return (0, float(budget), budget)
    except ValueError:
        return (1, 0.0, budget)


class _Aligned:
    """The test frame split by (model, budget, seed), every group sorted by visit_id, so that row i
    of every group is the same visit."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.models: list[str] = frame["model"].unique(maintain_order=True).to_list()
        self.budgets: list[str] = sorted(frame["budget"].unique().to_list(), key=_budget_key)
        visits = frame.group_by("visit_id").agg(pl.col("patient_id", "label").first())
        visits = visits.sort("visit_id")
        self.visit_id = visits["visit_id"].to_numpy()  # (n,)
        self.y = visits["label"].to_numpy().astype(np.float64)  # (n,) 0/1
        self.groups = visits["patient_id"].to_numpy()  # (n,)
        self._parts = {
            key: part.sort("visit_id")
            for key, part in frame.partition_by(list(_GROUP), as_dict=True).items()
        }

    def seeds(self, model: str, budget: str) -> list[int]:
        return sorted(s for m, b, s in self._parts if m == model and b == budget)

    def scores(self, model: str, budget: str, seed: int) -> np.ndarray:
        """Shape: (n,), aligned with `visit_id`."""
        return self._parts[(model, budget, seed)]["score"].to_numpy().astype(np.float64)

    def train_labels(self, model: str, budget: str, seed: int) -> int:
        return int(self._parts[(model, budget, seed)]["train_labels"][0])


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


# ----------------------------------------------------------------------------------------------
# the report


def _oracle_scores(oracle: pl.DataFrame, visit_id: np.ndarray) -> np.ndarray | None:
    """The oracle's admission probability of each test visit, aligned; None if any is missing."""
    missing = [c for c in ORACLE_COLUMNS if c not in oracle.columns]
    if missing:
        raise ValueError(f"oracle lacks column(s) {missing}; expected {list(ORACLE_COLUMNS)}")
    oracle = oracle.select(ORACLE_COLUMNS)
    if oracle["visit_id"].n_unique() != oracle.height:
        raise ValueError("oracle has duplicate visit_id values")
    visits = pl.DataFrame({"visit_id": visit_id})
    joined = visits.join(
        oracle.with_columns(pl.col("visit_id").cast(visits["visit_id"].dtype)),
        on="visit_id",
        how="left",
        maintain_order="left",
    )
    probability = joined["admission_probability"]
    if probability.null_count() or probability.cast(pl.Float64).is_nan().any():
        return None
    return probability.cast(pl.Float64).to_numpy()


def _relative_gain(reference_auroc: float, model_auroc: float) -> float | None:
    """(AUROC_ref - 0.5) / (AUROC_model - 0.5) - 1: how much more of the above-chance
    discrimination the reference achieves; None when the model is at or below chance."""
    if model_auroc <= 0.5:
        return None
    return (reference_auroc - 0.5) / (model_auroc - 0.5) - 1.0


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
    aligned = _Aligned(_test_predictions(predictions))
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
    main_seed = min(common_seeds)
    y, groups = aligned.y, aligned.groups
    boot = {"n_boot": n_boot, "seed": seed}

    oracle_auroc = oracle_ci = None
    if oracle is not None:
        oracle_scores = _oracle_scores(oracle, aligned.visit_id)
        if oracle_scores is not None:
            oracle_auroc = auroc(y, oracle_scores)
            oracle_ci = list(bootstrap_ci(auroc, y, oracle_scores, groups, **boot))

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
        "label_efficiency": label_efficiency,
        "settings": _plain(dict(settings or {}), "settings"),
        "selection": _plain(dict(selection or {}), "selection"),
    }


def _seed_mean_difference(
    aligned: _Aligned, reference: str, name: str, budget: str, boot: dict[str, int]
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


# ----------------------------------------------------------------------------------------------
# text renderings


def model_metrics(report: dict[str, Any] | None, model: str) -> dict[str, Any] | None:
    """One model's test metrics from a report, without the comparison keys (None if absent)."""
    if report is None or model not in report.get("models", {}):
        return None
    keep = ("auroc", "auroc_ci95", "auprc", "brier", "calibration_slope", "calibration_intercept",
            "n", "prevalence")  # fmt: skip
    return {k: report["models"][model].get(k) for k in keep}


def _number(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _with_ci(value: float | None, ci: list[float] | None, signed: bool = False) -> str:
    if value is None:
        return DASH
    if ci is None:
        return _number(value, signed)
    return f"{_number(value, signed)} ({_number(ci[0], signed)}–{_number(ci[1], signed)})"


def _p_value(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _main_rows(report: dict[str, Any], *, split_ci: bool) -> tuple[list[str], list[list[str]]]:
    """Header and one row of cells per main model; with `split_ci` the intervals and p-values
    get their own columns (terminal table), else they share the estimate's cell (Markdown)."""
    reference = report["reference"]
    with_oracle = report.get("oracle_auroc") is not None
    if split_ci:
        header = ["model", "AUROC", "95% CI", "AUPRC", "Brier", "cal. slope", "cal. intercept"]
        header += [f"{reference} - this", "95% CI", "p", "rel. gain"]
    else:
        header = ["model", "AUROC (95% CI)", "AUPRC", "Brier", "cal. slope", "cal. intercept"]
        header += [f"{reference} minus this (95% CI, p)", "relative gain in (AUROC − 0.5)"]
    if with_oracle:
        header.append("gap to oracle")
    rows = []
    for name, m in report["models"].items():
        diff = m.get("reference_minus_this")
        ci = m["auroc_ci95"]
        if split_ci:
            row = [name, _number(m["auroc"]), f"{_number(ci[0])}–{_number(ci[1])}"]
        else:
            row = [name, _with_ci(m["auroc"], ci)]
        row += [_number(m[k]) for k in ("auprc", "brier")]
        row += [_number(m[k]) for k in ("calibration_slope", "calibration_intercept")]
        if diff is None:
            cells = ["reference", "", ""] if split_ci else ["reference"]
        elif split_ci:
            low, high = diff["ci95"]
            cells = [
                _number(diff["difference"], signed=True),
                f"{_number(low, signed=True)}–{_number(high, signed=True)}",
                "<0.001" if diff["p_value"] < 0.001 else f"{diff['p_value']:.3f}",
            ]
        else:
            cells = [_difference_cell(diff)]
        row += cells
        row.append(DASH if name == reference else _number(m.get("relative_gain"), signed=True))
        if with_oracle:
            row.append(_number(m.get("gap_to_oracle")))
        rows.append(row)
    return header, rows


def _difference_cell(diff: dict[str, Any]) -> str:
    """A paired difference as "+0.012 (+0.002–+0.021), p=0.020"."""
    estimate = _with_ci(diff["difference"], diff["ci95"], signed=True)
    return f"{estimate}, {_p_value(diff['p_value'])}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)]


def format_report_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown document: summary line, main table, label-efficiency table and
    the table of the reference minus each model along the curve.

    Args:
        report: A `build_report` result (or its JSON round trip).

    Returns:
        Markdown text ending in a newline; numbers with 3 decimals, missing values as "–".
    """
    oracle = _with_ci(report.get("oracle_auroc"), report.get("oracle_auroc_ci95"))
    patients = report.get("n_test_patients")
    summary = (
        f"Test set: {report['n_test']} visits of {patients if patients is not None else DASH} "
        f"patients, prevalence {_number(report['test_prevalence'])}; label budget "
        f"{report['label_budget']} (training seed {report['seed']}); oracle AUROC {oracle}."
    )
    lines = ["# Evaluation report", "", summary, ""]
    lines += [f"## Models at label budget {report['label_budget']}", ""]
    lines += _markdown_table(*_main_rows(report, split_ci=False))

    efficiency = report.get("label_efficiency") or []
    names = list(dict.fromkeys(n for entry in efficiency for n in entry["models"]))
    if efficiency:
        lines += ["", "## Label efficiency (test AUROC, mean over seeds (95% CI))", ""]
        header = ["budget", "train labels", *names]
        rows = []
        for entry in efficiency:
            cells = [entry["budget"], str(entry["train_labels"])]
            for name in names:
                value = entry["models"].get(name)
                cells.append(DASH if value is None else _with_ci(value["mean"], value["ci95"]))
            rows.append(cells)
        lines += _markdown_table(header, rows)
        seeds = sorted({v["n_seeds"] for e in efficiency for v in e["models"].values()})
        lines += ["", f"Seeds per cell: {', '.join(map(str, seeds))}."]
        others = [n for n in names if n != report["reference"]]
        lines += [
            "",
            f"## {report['reference']} minus each model, mean over seeds (paired, 95% CI, p)",
            "",
        ]
        rows = []
        for entry in efficiency:
            cells = [entry["budget"], str(entry["train_labels"])]
            for name in others:
                diff = (entry["models"].get(name) or {}).get("reference_minus_this")
                cells.append(DASH if diff is None else _difference_cell(diff))
            rows.append(cells)
        lines += _markdown_table(["budget", "train labels", *others], rows)

    lines += [
        "",
        f"How to read: AUROC intervals come from {report['n_boot']} bootstrap replicates that "
        "resample patients, not visits; the differences with the reference are paired (both "
        "models scored on the same resampled patients), with a two-sided bootstrap p-value. "
        "Relative gain = (AUROC_ref − 0.5) / (AUROC_model − 0.5) − 1: how much more "
        "above-chance discrimination the reference achieves. Label-efficiency intervals are those "
        "of the mean over seeds, and its differences are paired differences of seed means (one "
        "resample of patients scores every seed of both models).",
    ]
    return "\n".join(lines) + "\n"


def format_report_table(report: dict[str, Any]) -> str:
    """The main-model table as aligned plain text for a terminal (no trailing newline).

    Args:
        report: A `build_report` result.

    Returns:
        The header, a rule and one line per model; the model column left-aligned, numbers right.
    """
    header, rows = _main_rows(report, split_ci=True)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


# ----------------------------------------------------------------------------------------------
# plots and files


def _save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib Figure as PNG atomically (temporary file beside it, then a rename)."""
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
        _fsync(tmp)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mean predicted and observed rate in equal-count bins of sorted scores (quantile bins).

    Shape: y, p (n,) -> two (min(n_bins, n),).
    """
    order = np.argsort(p, kind="stable")
    bins = [b for b in np.array_split(order, min(n_bins, len(p))) if len(b)]
    return np.array([p[b].mean() for b in bins]), np.array([y[b].mean() for b in bins])


def write_plots(predictions: pl.DataFrame, report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write roc.png, calibration.png and, with two budgets or more, label_efficiency.png.

    The ROC and reliability plots show the main-budget models at the report's training seed; the
    label-efficiency plot shows the seed-mean test AUROC against the number of training labels (log
    scale) with its interval as a band, and the oracle AUROC as a dashed line when known.

    Args:
        predictions: The predictions `report` was built from.
        report: A `build_report` result.
        out_dir: An existing directory.

    Returns:
        The paths written.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from sklearn.metrics import roc_curve

    out_dir = Path(out_dir)
    aligned = _Aligned(_test_predictions(predictions))
    budget, seed = report["label_budget"], report["seed"]
    color = {name: f"C{i % 10}" for i, name in enumerate(aligned.models)}
    written = []

    figure = Figure(figsize=(5.5, 5), layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name, metrics in report["models"].items():
        fpr, tpr, _ = roc_curve(aligned.y, aligned.scores(name, budget, seed))
        label = f"{name} (AUROC {metrics['auroc']:.3f})"
        ax.plot(fpr, tpr, color=color[name], label=label)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"ROC, test set, label budget {budget}")
    ax.legend(loc="lower right", fontsize="small")
    _save_figure(figure, out_dir / ROC_PLOT)
    written.append(out_dir / ROC_PLOT)

    figure = Figure(figsize=(5.5, 5), layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name in report["models"]:
        predicted, observed = _reliability(aligned.y, aligned.scores(name, budget, seed))
        ax.plot(predicted, observed, marker="o", markersize=3, color=color[name], label=name)
    ax.set(xlabel="mean predicted probability", ylabel="observed admission rate")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"Calibration (10 quantile bins), label budget {budget}")
    ax.legend(loc="upper left", fontsize="small")
    _save_figure(figure, out_dir / CALIBRATION_PLOT)
    written.append(out_dir / CALIBRATION_PLOT)

    efficiency = [e for e in report["label_efficiency"] if e["train_labels"] > 0]
    if len(efficiency) >= 2:
        figure = Figure(figsize=(6, 4.5), layout="constrained")
        ax = figure.add_subplot()
        for name in aligned.models:
            points = [
                (e["train_labels"], e["models"][name]) for e in efficiency if name in e["models"]
            ]
            if not points:
                continue
            x = np.array([n for n, _ in points], dtype=np.float64)
            mean = np.array([v["mean"] for _, v in points])
            low, high = (np.array([v["ci95"][i] for _, v in points]) for i in (0, 1))
            ax.plot(x, mean, marker="o", color=color[name], label=name)
            ax.fill_between(x, low, high, color=color[name], alpha=0.15, linewidth=0)
        if report.get("oracle_auroc") is not None:
            label = f"oracle (AUROC {report['oracle_auroc']:.3f})"
            ax.axhline(report["oracle_auroc"], linestyle="--", color="black", label=label)
        ax.set_xscale("log")
        ax.set(xlabel="labeled training visits", ylabel="test AUROC (mean over seeds)")
        ax.set_title("Label efficiency (band: 95% CI, patient bootstrap)")
        ax.legend(loc="best", fontsize="small")
        _save_figure(figure, out_dir / LABEL_EFFICIENCY_PLOT)
        written.append(out_dir / LABEL_EFFICIENCY_PLOT)
    return written


def write_report(predictions: pl.DataFrame, report: dict[str, Any], out_dir: Path) -> None:
    """Write report.json, report.md, the plots and predictions.parquet into `out_dir`.

    Every file is written under a temporary name beside its target and renamed into place, so an
    interrupted call never leaves a partial file.

    Args:
        predictions: The predictions `report` was built from (all splits, written as given, with
            the columns visit_id, patient_id, split, model, score, label first, then budget, seed,
            train_labels, then any others).
        report: A `build_report` result.
        out_dir: Output directory, created if needed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / REPORT_MD, format_report_markdown(report))
    write_plots(predictions, report, out_dir)
    first = [c for c in PARQUET_COLUMN_ORDER if c in predictions.columns]
    ordered = predictions.select(first + [c for c in predictions.columns if c not in first])
    with atomic_file(out_dir / PREDICTIONS_FILE) as tmp:
        ordered.write_parquet(tmp)
        _fsync(tmp)
