"""The notebook API (`ehr_ssl.load`, `run`, `evaluate`) and the example notebook, executed."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import ehr_ssl
from ehr_ssl.api import RunResult

ROOT = Path(__file__).resolve().parents[1]


def test_evaluate_returns_a_result_with_metrics_and_a_table(finished_run):
    data, run = finished_run
    result = ehr_ssl.evaluate(run, data=data, n_boot=20)
    assert isinstance(result, RunResult)
    metrics = result.metrics
    assert metrics["model"].to_list() == list(result.report["models"])
    assert (
        metrics.filter(pl.col("model") == "ssl")["auroc"].item()
        == (result.report["models"]["ssl"]["auroc"])
    )
    assert {"auroc_ci_low", "auroc_ci_high", "calibration_slope", "p_value"} <= set(metrics.columns)
    assert "| model |" in result._repr_markdown_()
    assert "ssl" in str(result)
    assert result.metrics.to_pandas().shape[0] == metrics.height
    assert result.bundle == run / "bundle"
    curve = result.label_efficiency
    assert curve.height == sum(len(e["models"]) for e in result.report["label_efficiency"])
    ssl = curve.filter(pl.col("model") == "ssl")
    assert ssl["reference_minus_this"].is_null().all()
    others = curve.filter(pl.col("model") != "ssl")
    assert others["reference_minus_this"].is_not_null().all()
    assert (others["difference_ci_low"] <= others["difference_ci_high"]).all()


def test_load_gives_the_bundle_model(finished_run):
    data, run = finished_run
    model = ehr_ssl.load(run / "bundle")
    visits = pl.read_parquet(data / "visits.parquet").head(5)
    out = model.predict(visits, pl.read_parquet(data / "events.parquet"))
    assert out.columns == ["visit_id", "score"] and out.height == 5


def test_run_refuses_unknown_options(tmp_path):
    with pytest.raises(TypeError, match="unexpected options"):
        ehr_ssl.run(tmp_path, tmp_path / "run", epoch=3)


def test_the_example_notebook_runs():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    # A loaded machine can deliver a cell's output after nbclient's default 4 s IOPub wait, which
    # drops it silently; wait longer and fail loudly instead.
    nbclient.NotebookClient(
        notebook,
        timeout=600,
        iopub_timeout=60,
        raise_on_iopub_timeout=True,
        kernel_name="python3",
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o for o in outputs if o.output_type == "execute_result"]
    assert any("text/markdown" in o.data and "AUROC" in o.data["text/markdown"] for o in shown)
