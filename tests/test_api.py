"""The notebook API (`ehr_ssl.load`, `run`, `evaluate`) and the example notebook, executed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
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


def test_evaluate_without_the_dataset_says_what_the_report_lacks(finished_run, tmp_path, caplog):
    """Subgroups and MEDS predictions need the dataset's visits: left out, never in silence."""
    import shutil

    _, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)  # the shared run keeps its subgroups
    with caplog.at_level("WARNING", logger="ehr_ssl"):
        result = ehr_ssl.evaluate(copy, n_boot=20)
    assert not result.report.get("subgroups")
    assert "no subgroups and no meds_predictions/" in caplog.text


def test_load_gives_the_bundle_model(finished_run):
    data, run = finished_run
    model = ehr_ssl.load(run / "bundle")
    visits = pl.read_parquet(data / "visits.parquet").head(5)
    out = model.predict(visits, pl.read_parquet(data / "events.parquet"))
    assert out.columns == ["visit_id", "score"] and out.height == 5


def test_run_refuses_unknown_options(tmp_path):
    with pytest.raises(TypeError, match="unexpected options"):
        ehr_ssl.run(tmp_path, tmp_path / "run", epoch=3)


def test_one_budget_or_seed_alone_is_a_list_of_one():
    from ehr_ssl.api import run_overrides

    overrides = run_overrides({"label_budgets": "125", "seeds": 3, "accept_leaks": "ORDER//"})
    assert overrides["evaluate.label_budgets"] == ["125"]  # not ["1", "2", "5"]
    assert overrides["evaluate.seeds"] == [3] and overrides["leakage.accept"] == ["ORDER//"]
    assert run_overrides({"label_budgets": [100, "all"]})["evaluate.label_budgets"] == [
        "100",
        "all",
    ]


def test_bad_api_arguments_are_input_errors(finished_run):
    from ehr_ssl.errors import InputError

    data, run = finished_run
    with pytest.raises(InputError, match="setting 'device': must be one of auto, cpu, cuda"):
        ehr_ssl.load(run / "bundle", device="gpu")  # once the CPU, silently
    with pytest.raises(InputError, match="has no bundle"):
        RunResult(data, {}).load_model()  # was a FileNotFoundError
    with pytest.raises(InputError, match="setting 'evaluate.n_boot'"):
        ehr_ssl.evaluate(run, n_boot=-1)  # once a ValueError after the scoring
    model = ehr_ssl.load(run / "bundle")
    visits = pl.read_parquet(data / "visits.parquet").head(5).to_pandas()
    events = pl.read_parquet(data / "events.parquet").to_pandas()
    visits["patient_id"] = visits["patient_id"].astype(object)
    odd = 987654321 if isinstance(visits.loc[1, "patient_id"], str) else "PATIENT-987654321"
    visits.loc[0, "patient_id"] = odd  # one id of another type among the others
    with pytest.raises(InputError) as raised:
        model.predict(visits, events)
    assert str(raised.value).startswith("visits: column 'patient_id': cannot be read as one type")
    assert "987654321" not in str(raised.value)  # no id quoted
    assert str(visits.loc[1, "patient_id"]) not in str(raised.value)
    doubled = pd.concat([visits.drop(columns="patient_id"), visits[["age"]]], axis=1)
    with pytest.raises(InputError, match="visits: column 'age': appears 2 times"):
        model.predict(doubled, events)


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
