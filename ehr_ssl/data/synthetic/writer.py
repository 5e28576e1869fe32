"""Writing a synthetic cohort as a dataset directory in the input contract (visits, events,
labels and the oracle), atomically."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ehr_ssl.atomic import atomic_directory
from ehr_ssl.data import schema
from ehr_ssl.data.parquet import write_parquet
from ehr_ssl.data.synthetic.simulation import Cohort
from ehr_ssl.outputs import check_output_dir, output_lock, write_marker


def write_cohort(
    cohort: Cohort, out_dir: Path, *, shards: int = 1, overwrite: bool = False
) -> None:
    """Write a cohort as a dataset directory, atomically (a failed run leaves nothing).

    Layout: visits.parquet, labels.parquet, oracle.parquet, and events.parquet (shards == 1) or
    events/part-00000.parquet ... (shards > 1; each patient's events in one shard, contiguous
    blocks of patients in patient_id order, so shards keep the (patient_id, time) order).

    Args:
        cohort: The cohort to write.
        out_dir: The dataset directory to create.
        shards: Number of event files, >= 1.
        overwrite: Replace an existing `out_dir`, if it is a synthetic dataset directory.

    Raises:
        ValueError: If `shards` < 1.
        FileExistsError: If `out_dir` exists, is not empty and `overwrite` is False.
        InputError: If `overwrite` is True and `out_dir` is a file, or a non-empty directory
            other than a synthetic dataset (never replaced: it may be someone's data).
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
    out_dir = Path(out_dir)
    if overwrite:
        check_output_dir(out_dir, "dataset")
    with output_lock(out_dir), atomic_directory(out_dir, overwrite=overwrite) as tmp:
        write_marker(tmp, "dataset")
        write_parquet(cohort.visits, tmp / schema.VISITS.filename)
        if cohort.labels.height:  # no labels: no labels.parquet (an empty table is bad input)
            write_parquet(cohort.labels, tmp / schema.LABELS.filename)
        write_parquet(cohort.oracle, tmp / schema.ORACLE_FILENAME)
        _write_events(cohort.events, tmp, shards=shards)


def _write_events(events: pl.DataFrame, directory: Path, *, shards: int) -> None:
    if shards == 1:
        write_parquet(events, directory / schema.EVENTS.filename)
        return
    shard_dir = directory / schema.EVENTS.name
    shard_dir.mkdir()
    n_patients = max(events["patient_id"].n_unique(), 1)
    rank = pl.col("patient_id").rank("dense").cast(pl.Int64) - 1
    parts = events.with_columns(_shard=rank * shards // n_patients).partition_by(
        "_shard", as_dict=True, include_key=False, maintain_order=True
    )
    for i in range(shards):
        part = parts.get((i,), events.clear())
        write_parquet(part, shard_dir / f"part-{i:05d}.parquet")
