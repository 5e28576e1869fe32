"""The notebook API: `ehr_ssl.load`, `ehr_ssl.run` and `ehr_ssl.evaluate`.

model = ehr_ssl.load("runs/demo/run/bundle")      # a bundle, or a registry's production
scores = model.predict(visits, events)            # polars or pandas in, the same kind out
result = ehr_ssl.run("data/", "runs/r1", preset="small", epochs=3)
result                                            # shows the report table in Jupyter
result.metrics                                    # one row per model, as a polars DataFrame
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ehr_ssl.layout import BUNDLE_FILE, RunLayout


def load(path: str | Path, device: str = "cpu"):  # noqa: ANN201 - AdmissionModel, imported late
    """Load a model bundle (`RUN/bundle`, a registry version) or a registry's production model.

    Returns an `ehr_ssl.deploy.bundle.AdmissionModel` with `predict(visits, events)` and
    `embed(visits, events)`.
    """
    from ehr_ssl.deploy.bundle import load_bundle
    from ehr_ssl.deploy.registry import Registry

    path = Path(path)
    if Registry.is_registry(path):
        path = Registry.open(path).production_path()  # open checks the registry's marker
    return load_bundle(path, device=device)


def _difference_columns(diff: dict[str, Any] | None) -> dict[str, Any]:
    """A report's paired difference (None for the reference model) as DataFrame columns."""
    diff = diff or {}
    low, high = diff.get("ci95") or (None, None)
    return {
        "reference_minus_this": diff.get("difference"),
        "difference_ci_low": low,
        "difference_ci_high": high,
        "p_value": diff.get("p_value"),
    }


@dataclass
class RunResult:
    """A pipeline run's outcome: its directory, the report, and the metrics as DataFrames.
    Shown in Jupyter as the report's Markdown; `str()` gives the terminal table."""

    run_dir: Path
    report: dict[str, Any]

    @property
    def metrics(self) -> pl.DataFrame:
        """One row per model at the main label budget (test split): AUROC with its 95% CI,
        AUPRC, Brier, calibration, n, prevalence, and the paired difference with the reference
        model. `.to_pandas()` for pandas."""
        rows = []
        for name, m in self.report["models"].items():
            low, high = m.get("auroc_ci95") or (None, None)
            rows.append(
                {
                    "model": name,
                    "auroc": m["auroc"],
                    "auroc_ci_low": low,
                    "auroc_ci_high": high,
                    "auprc": m.get("auprc"),
                    "brier": m.get("brier"),
                    "calibration_slope": m.get("calibration_slope"),
                    "calibration_intercept": m.get("calibration_intercept"),
                    "n": m.get("n"),
                    "prevalence": m.get("prevalence"),
                    **_difference_columns(m.get("reference_minus_this")),
                    "relative_gain": m.get("relative_gain"),
                    "gap_to_oracle": m.get("gap_to_oracle"),
                }
            )
        return pl.DataFrame(rows, infer_schema_length=None)

    @property
    def label_efficiency(self) -> pl.DataFrame:
        """Test AUROC per (budget, model): mean over seeds with its 95% CI, and the reference
        (SSL) minus it: the paired difference of seed means, its CI and p-value (null for the
        reference)."""
        rows = []
        for entry in self.report.get("label_efficiency") or []:
            for name, value in entry["models"].items():
                low, high = value.get("ci95") or (None, None)
                rows.append(
                    {
                        "budget": entry["budget"],
                        "train_labels": entry["train_labels"],
                        "model": name,
                        "auroc_mean": value["mean"],
                        "ci_low": low,
                        "ci_high": high,
                        "n_seeds": value["n_seeds"],
                        **_difference_columns(value.get("reference_minus_this")),
                    }
                )
        return pl.DataFrame(rows, infer_schema_length=None)

    @property
    def bundle(self) -> Path | None:
        """The run's model bundle, if it has one."""
        path = RunLayout(self.run_dir).bundle
        return path if (path / BUNDLE_FILE).exists() else None

    def load_model(self, device: str = "cpu"):  # noqa: ANN201
        """The run's bundled model (see `load`)."""
        if self.bundle is None:
            from ehr_ssl.errors import InputError

            raise InputError(
                "has no bundle (evaluate.models without ssl; `ehr-ssl bundle` makes one)",
                file=str(self.run_dir),
            )
        return load(self.bundle, device=device)

    def _repr_markdown_(self) -> str:
        from ehr_ssl.evaluation.render import format_report_markdown

        return format_report_markdown(self.report)

    def __str__(self) -> str:
        from ehr_ssl.evaluation.render import format_report_table

        return format_report_table(self.report)


def run(
    data: str | Path,
    out: str | Path,
    *,
    config: str | Path | None = None,
    device: str | None = None,
    settings: dict[str, Any] | None = None,
    **options: Any,
) -> RunResult:
    """Run the whole pipeline (what `ehr-ssl run` does) and return its result.

    Args:
        data: The dataset directory.
        out: The run directory (stages already complete there are skipped).
        config: A pipeline TOML file (pipelines/*.toml).
        device: "auto", "cpu" or "cuda".
        settings: Any pipeline setting by its dotted name, e.g. {"train.learning_rate": 5e-4}.
        **options: preset, epochs, max_steps, label_budget, label_budgets (a list, or one),
            seeds (a list, or one), n_boot, val_fraction, test_fraction, split_seed,
            accept_leaks, meds_labels, meds_prediction_times, meds_arrival_code: as the CLI
            flags of the same names.
    """
    from ehr_ssl.pipeline import load_checked_config, run_pipeline

    overrides = run_overrides(options) | (settings or {})
    resolved = load_checked_config(Path(config) if config else None, overrides)
    report = run_pipeline(Path(data), Path(out), resolved, device=device)
    return RunResult(Path(out), report)


def run_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """`run()`'s options as dotted settings. A budget or seed given alone (a string or a
    number) is a list of one, never the characters of a string."""
    from ehr_ssl.config import RUN_OPTIONS

    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise TypeError(f"run() got unexpected options {unknown}; use settings= for others")
    overrides = {RUN_OPTIONS[k]: v for k, v in options.items() if v is not None}
    for key in ("evaluate.label_budgets", "evaluate.seeds", "leakage.accept"):
        if key in overrides:
            given = overrides[key]
            given = list(given) if isinstance(given, list | tuple) else [given]
            overrides[key] = [str(b) for b in given] if key.endswith("budgets") else given
    return overrides


def evaluate(
    run_dir: str | Path, *, data: str | Path | None = None, n_boot: int | None = None
) -> RunResult:
    """(Re)score a complete run directory on its test split (what `ehr-ssl evaluate` does).
    `data`: the run's dataset (a directory, or a MEDS root read with the run's [meds]
    settings), for its visits' static columns (the report's subgroups), its keys (the MEDS
    predictions) and its oracle.parquet if it ships one; without it the report has no
    subgroups and no meds_predictions/ are written."""
    from ehr_ssl.config import MAX_BOOTSTRAP, read_run_config
    from ehr_ssl.data.meds_input import contract_data, is_meds_root
    from ehr_ssl.data.readers import is_present
    from ehr_ssl.data.schema import ORACLE_FILENAME
    from ehr_ssl.errors import InputError
    from ehr_ssl.pipeline import evaluate_run
    from ehr_ssl.settings import check_count

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if n_boot is not None:
        check_count(n_boot, "evaluate.n_boot", high=MAX_BOOTSTRAP)
        config.evaluate.n_boot = n_boot
    if data is not None and not Path(data).is_dir():
        raise InputError("dataset directory not found", file=str(data))
    made_on_meds = config.meds.labels is not None or config.meds.prediction_times is not None
    if data is not None and is_meds_root(Path(data)) != made_on_meds:
        made_on = "a MEDS root (its [meds] labels)" if made_on_meds else "a dataset directory"
        raise InputError(f"the run was made on {made_on}: give that dataset", file=str(data))
    if data is not None and made_on_meds:  # read as the run read it: its [meds] settings
        with contract_data(Path(data), config.tokenize_config()) as (contract_dir, data_config):
            config.data = data_config
            return RunResult(run_dir, evaluate_run(None, run_dir, config, data_dir=contract_dir))
    oracle = Path(data) if data and is_present(Path(data) / ORACLE_FILENAME) else None
    data_dir = Path(data) if data is not None else None  # its visits' statics: subgroups
    return RunResult(run_dir, evaluate_run(oracle, run_dir, config, data_dir=data_dir))
