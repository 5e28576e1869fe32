"""The report's PNG figures, from the predictions and report built in conftest.py."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ehr_ssl.evaluation.plots import write_plots
from ehr_ssl.evaluation.report import build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plots_are_png_and_label_efficiency_needs_two_budgets(
    tmp_path: Path, predictions: pl.DataFrame, report: dict
) -> None:
    written = write_plots(predictions, report, tmp_path)
    names = ["roc.png", "calibration.png", "decision_curve.png", "label_efficiency.png"]
    assert [p.name for p in written] == names
    for path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC
    one_budget = predictions.filter(pl.col("budget") == "100")
    single = build_report(one_budget, main_budget="100", n_boot=20)
    out = tmp_path / "single"
    out.mkdir()
    assert [p.name for p in write_plots(one_budget, single, out)] == names[:3]
    assert sorted(p.name for p in out.iterdir()) == sorted(names[:3])
