"""Shared test fixtures: small hand-made datasets written as Parquet in a temporary directory."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

T0 = datetime(2023, 5, 1, 12, 0)
EVENTS_SCHEMA = {
    "patient_id": pl.Int64,
    "time": pl.Datetime("us"),
    "code": pl.String,
    "numeric_value": pl.Float64,
}


def hours(h: float) -> timedelta:
    return timedelta(hours=h)


def make_tables(n_patients: int = 40) -> dict[str, pl.DataFrame]:
    """A small, fully known cohort: each patient has two visits 30 days apart, history codes,
    current-visit labs with values, and a disposition after the prediction time."""
    visits, events, labels = [], [], []
    for p in range(n_patients):
        for v in range(2):
            arrival = T0 + timedelta(days=30 * v, hours=p)
            vid = 2 * p + v
            visits.append((vid, p, arrival, arrival + hours(1), 40.0 + p, "F" if p % 2 else "M"))
            events += [
                (p, arrival - timedelta(days=10), f"DX//C{p % 4}", None),
                (p, arrival + hours(0.25), "LAB//LACTATE", 1.0 + (p % 7) * 0.5),
                (p, arrival + hours(0.5), "VITAL//HR", 60.0 + p),
                (p, arrival + hours(3), "DISP//ADMIT" if p % 3 == 0 else "DISP//HOME", None),
            ]
            if vid % 3 == 0:
                labels.append((vid, p % 3 == 0))
    return {
        "visits": pl.DataFrame(
            visits,
            schema=["visit_id", "patient_id", "arrival_time", "prediction_time", "age", "sex"],
            orient="row",
        ),
        "events": pl.DataFrame(events, schema=EVENTS_SCHEMA, orient="row"),
        "labels": pl.DataFrame(labels, schema=["visit_id", "label"], orient="row"),
    }


def copy_as_killed(finished: Path, run: Path, last_step: int) -> Path:
    """A copy of a finished pretraining directory as if killed after its checkpoint before
    `last_step`: the last checkpoint and the final outputs removed, ready for --resume."""
    shutil.copytree(finished, run)
    shutil.rmtree(run / "checkpoints" / f"step-{last_step:08d}")
    shutil.rmtree(run / "encoder")
    for name in ("pretraining_heads.safetensors", "pretrain_summary.json"):
        (run / name).unlink()
    return run


def write_tables(directory: Path, tables: dict[str, pl.DataFrame]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.write_parquet(directory / f"{name}.parquet")
    return directory


@pytest.fixture
def tables() -> dict[str, pl.DataFrame]:
    return make_tables()


@pytest.fixture
def dataset_dir(tmp_path: Path, tables: dict[str, pl.DataFrame]) -> Path:
    return write_tables(tmp_path / "data", tables)


@pytest.fixture(scope="session")
def cohort_tokens(tmp_path_factory) -> Path:
    """A small synthetic cohort tokenized once per test session (max_length 64)."""
    from ehr_ssl.config import TokenizeConfig, TokenizerConfig
    from ehr_ssl.data.synthetic import generate_cohort, write_cohort
    from ehr_ssl.tokens.tokenize import tokenize_dataset

    root = tmp_path_factory.mktemp("cohort")
    write_cohort(generate_cohort(1200, labeled_frac=0.2, seed=1), root / "data")
    config = TokenizeConfig(tokenizer=TokenizerConfig(max_length=64))
    tokenize_dataset(root / "data", root / "tokens", config)
    return root / "tokens"


PATIENT_PREFIX, VISIT_PREFIX = "PAT-Q7", "VIS-Z9"  # distinctive, for the scans of logs and bundles


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset dir, run dir): a small synthetic cohort with string identifiers, through the
    whole pipeline with the tiny preset, once per test session. The run has RUN/bundle."""
    from ehr_ssl.config import load_pipeline_config
    from ehr_ssl.data.synthetic import generate_cohort, write_cohort
    from ehr_ssl.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("finished")
    cohort = generate_cohort(1500, labeled_frac=0.4, seed=5)
    pid = pl.format(PATIENT_PREFIX + "{}", pl.col("patient_id").cast(pl.String))
    vid = pl.format(VISIT_PREFIX + "{}", pl.col("visit_id").cast(pl.String))
    cohort.visits = cohort.visits.with_columns(patient_id=pid, visit_id=vid)
    cohort.events = cohort.events.with_columns(patient_id=pid)
    cohort.labels = cohort.labels.with_columns(visit_id=vid)
    cohort.oracle = cohort.oracle.with_columns(visit_id=vid)
    write_cohort(cohort, root / "data")
    config = load_pipeline_config(
        None,
        {
            "preset": "tiny",
            "train.max_steps": 12,
            "tokenizer.max_length": 64,
            "finetune.max_epochs": 2,
            "finetune.patience": 1,
            "finetune.cv_folds": 3,  # cv selection at a test's cost
            "finetune.cv_repeats": 1,
            "evaluate.n_boot": 50,
        },
    )
    run_pipeline(root / "data", root / "run", config, device="cpu")
    return root / "data", root / "run"


# What safetensors raises when the disk fills up (measured on a 64 KiB tmpfs).
SAFETENSORS_DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.fixture
def full_disk(monkeypatch):
    """Every safetensors write fails as on a full disk (a stub: tests cannot mount a tmpfs)."""
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(*args, **kwargs):
        raise SafetensorError(SAFETENSORS_DISK_FULL)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
