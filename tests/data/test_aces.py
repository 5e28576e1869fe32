"""The ACES task of pipelines/aces (ED visit -> admission within 7 days), run by ACES itself on
the synthetic cohort in MEDS form: ehr-ssl then makes, from ACES's label files, the tokens and
labels it makes from the cohort's contract form.

ACES (es-aces) needs polars < 2, so it lives in its own environment, `.venv-aces`, which
`make test` builds (ACES is a command users run before ehr-ssl, not a library it imports)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from ehr_ssl.config import MedsConfig, TokenizeConfig
from ehr_ssl.data.meds_input import contract_data
from ehr_ssl.data.synthetic import generate_cohort, write_cohort, write_meds_cohort
from ehr_ssl.data.synthetic.writer import MEDS_VISITS_FILE
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenize import tokenize_dataset

REPO = Path(__file__).resolve().parents[2]
TASK = REPO / "pipelines" / "aces" / "ed_admission_7d.yaml"
ACES_CLI = Path(os.environ.get("EHR_SSL_ACES_CLI", REPO / ".venv-aces" / "bin" / "aces-cli"))

pytestmark = pytest.mark.skipif(
    not ACES_CLI.exists(), reason=f"no ACES at {ACES_CLI}: `make test` builds .venv-aces"
)


def _aces(meds_root: Path, work: Path) -> pl.DataFrame:
    """ACES's labels for the task, one file per data shard, as one frame."""
    work.mkdir()
    shutil.copy(TASK, work / TASK.name)
    shards = sorted(
        p.relative_to(meds_root / "data") for p in (meds_root / "data").rglob("*.parquet")
    )
    argv = [str(ACES_CLI), "data=sharded", "data.standard=meds", f"data.root={meds_root / 'data'}",
            "data.shard=" + ",".join(str(s.with_suffix("")) for s in shards),
            f"cohort_dir={work}", f"cohort_name={TASK.stem}", "-m"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return pl.read_parquet(work / TASK.stem / "**" / "*.parquet")


def _tokens(directory: Path, keys: pl.DataFrame) -> pl.DataFrame:
    frames = [
        read_split(directory, s).with_columns(split=pl.lit(s)) for s in ("train", "val", "test")
    ]
    tokens = pl.concat(frames).select("visit_id", "input_ids", "split", "labeled", "label")
    return tokens.join(keys, on="visit_id").drop("visit_id").sort("patient_id", "prediction_time")


def test_aces_labels_give_the_contract_forms_tokens_and_labels(tmp_path):
    cohort = generate_cohort(600, labeled_frac=1.0, seed=13)
    as_stored = pl.col("numeric_value").cast(pl.Float32).cast(pl.Float64)  # MEDS: float32
    cohort.events = cohort.events.with_columns(as_stored)
    write_cohort(cohort, tmp_path / "contract")
    write_meds_cohort(cohort, tmp_path / "meds", shards=2)
    aces = _aces(tmp_path / "meds", tmp_path / "aces")
    # ACES triggers on every ENC//ED event; the cohort also keeps the events of the visits it
    # cut at its size (no visit row): ehr-ssl is compared on the cohort's visits.
    visits = pl.read_parquet(tmp_path / "meds" / MEDS_VISITS_FILE)
    aces = aces.join(visits, on=["subject_id", "prediction_time"], how="semi")
    assert aces.height == cohort.visits.height
    aces.select("subject_id", "prediction_time", "boolean_value").write_parquet(
        tmp_path / "l.parquet"
    )

    tokenize_dataset(tmp_path / "contract", tmp_path / "t_contract", TokenizeConfig())
    config = TokenizeConfig(
        meds=MedsConfig(labels=str(tmp_path / "l.parquet"), arrival_code="ENC//ED")
    )
    with contract_data(tmp_path / "meds", config) as (data_dir, config.data):
        tokenize_dataset(data_dir, tmp_path / "t_meds", config)
    ours = _tokens(
        tmp_path / "t_contract", cohort.visits.select("visit_id", "patient_id", "prediction_time")
    )
    meds_keys = (
        aces.sort("subject_id", "prediction_time")
        .with_row_index("visit_id")
        .select(
            pl.col("visit_id").cast(pl.Int64),
            patient_id="subject_id",
            prediction_time="prediction_time",
        )
    )
    theirs = _tokens(tmp_path / "t_meds", meds_keys)
    assert ours["labeled"].all() and ours.equals(theirs)
