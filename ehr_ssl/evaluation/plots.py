"""The report's figures as PNG files: ROC curves, reliability (calibration) curves with the count
of each bin, the decision curve and the label-efficiency curve. matplotlib is imported only when
a figure is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ehr_ssl.atomic import atomic_file, fsync_file
from ehr_ssl.evaluation.predictions import AlignedPredictions, check_test_predictions
from ehr_ssl.layout import (
    CALIBRATION_PLOT,
    DECISION_CURVE_PLOT,
    LABEL_EFFICIENCY_PLOT,
    ROC_PLOT,
)


def write_plots(predictions: pl.DataFrame, report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write roc.png, calibration.png, decision_curve.png (for a report with a decision curve)
    and, with two budgets or more, label_efficiency.png.

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
    out_dir = Path(out_dir)
    aligned = AlignedPredictions(check_test_predictions(predictions))
    color = {name: f"C{i % 10}" for i, name in enumerate(aligned.models)}
    _plot_roc(aligned, report, color, out_dir / ROC_PLOT)
    _plot_calibration(aligned, report, color, out_dir / CALIBRATION_PLOT)
    written = [out_dir / ROC_PLOT, out_dir / CALIBRATION_PLOT]
    if report.get("decision_curve") is not None:
        _plot_decision_curve(report, color, out_dir / DECISION_CURVE_PLOT)
        written.append(out_dir / DECISION_CURVE_PLOT)
    efficiency = [e for e in report["label_efficiency"] if e["train_labels"] > 0]
    if len(efficiency) >= 2:
        _plot_label_efficiency(aligned, report, efficiency, color, out_dir / LABEL_EFFICIENCY_PLOT)
        written.append(out_dir / LABEL_EFFICIENCY_PLOT)
    return written


def _plot_roc(
    aligned: AlignedPredictions, report: dict[str, Any], color: dict[str, str], path: Path
) -> None:
    """ROC curves of the main-budget models at the report's training seed."""
    from sklearn.metrics import roc_curve

    budget, seed = report["label_budget"], report["seed"]
    figure, ax = _figure_with_diagonal()
    for name, metrics in report["models"].items():
        fpr, tpr, _ = roc_curve(aligned.y, aligned.scores(name, budget, seed))
        label = f"{name} (AUROC {metrics['auroc']:.3f})"
        ax.plot(fpr, tpr, color=color[name], label=label)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"ROC, test set, label budget {budget}")
    ax.legend(loc="lower right", fontsize="small")
    _save_figure(figure, path)


def _plot_calibration(
    aligned: AlignedPredictions, report: dict[str, Any], color: dict[str, str], path: Path
) -> None:
    """Reliability curves (10 quantile bins) of the main-budget models at the report's seed; the
    reference's bins are labeled with their visit counts (a bin of 8 visits is noise)."""
    budget, seed = report["label_budget"], report["seed"]
    figure, ax = _figure_with_diagonal()
    for name in report["models"]:
        predicted, observed, counts = _reliability(aligned.y, aligned.scores(name, budget, seed))
        ax.plot(predicted, observed, marker="o", markersize=3, color=color[name], label=name)
        if name == report["reference"]:
            for x, y, n in zip(predicted, observed, counts, strict=True):
                ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(3, -9),
                            fontsize="x-small", color=color[name])  # fmt: skip
    ax.set(xlabel="mean predicted probability", ylabel="observed admission rate")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"Calibration (10 quantile bins, n = visits per bin), budget {budget}")
    ax.legend(loc="upper left", fontsize="small")
    _save_figure(figure, path)


def _plot_label_efficiency(
    aligned: AlignedPredictions,
    report: dict[str, Any],
    efficiency: list[dict[str, Any]],
    color: dict[str, str],
    path: Path,
) -> None:
    """Seed-mean test AUROC against training labels (log scale), its interval as a band, and the
    oracle AUROC as a dashed line when known."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    figure = Figure(figsize=(6, 4.5), layout="constrained")
    ax = figure.add_subplot()
    for name in aligned.models:
        points = [(e["train_labels"], e["models"][name]) for e in efficiency if name in e["models"]]
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
    _save_figure(figure, path)


def _figure_with_diagonal() -> tuple[Any, Any]:
    """A square-ish figure and its axes with the dotted y = x line (chance, perfect calibration)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    figure = Figure(figsize=(5.5, 5), layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    return figure, ax


def _reliability(
    y: np.ndarray, p: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Mean predicted and observed rate in equal-count bins of sorted scores (quantile bins),
    and the number of visits in each bin.

    Shape: y, p (n,) -> two (min(n_bins, n),) and a list of as many counts.
    """
    order = np.argsort(p, kind="stable")
    bins = [b for b in np.array_split(order, min(n_bins, len(p))) if len(b)]
    counts = [len(b) for b in bins]
    return np.array([p[b].mean() for b in bins]), np.array([y[b].mean() for b in bins]), counts


def _plot_decision_curve(report: dict[str, Any], color: dict[str, str], path: Path) -> None:
    """Net benefit of each main model against threshold probability, with treat-all and
    treat-none; the y axis is cut below at -0.05, where treat-all plunges."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    curve = report["decision_curve"]
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    ax = figure.add_subplot()
    pt = curve["thresholds"]
    for name, benefit in curve["models"].items():
        ax.plot(pt, benefit, marker="o", markersize=3, color=color[name], label=name)
    ax.plot(pt, curve["treat_all"], linestyle="--", color="grey", label="treat all")
    ax.plot(pt, curve["treat_none"], linestyle=":", color="black", label="treat none")
    top = max(max(curve["treat_all"]), *(max(b) for b in curve["models"].values()))
    ax.set(xlabel="threshold probability", ylabel="net benefit", ylim=(-0.05, top + 0.02))
    ax.set_title(f"Decision curve, test set, label budget {report['label_budget']}")
    ax.legend(loc="upper right", fontsize="small")
    _save_figure(figure, path)


def _save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib Figure as PNG atomically (temporary file beside it, then a rename)."""
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
        fsync_file(tmp)
