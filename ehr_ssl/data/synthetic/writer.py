"""Writing a synthetic cohort as a dataset directory in the input contract (visits, events,
labels and the oracle), atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa

from ehr_ssl.atomic import atomic_directory
from ehr_ssl.data import schema
from ehr_ssl.data.parquet import write_parquet
from ehr_ssl.data.schema import EVENTS
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


def _write_events(
    events: pl.DataFrame,
    directory: Path,
    *,
    shards: int,
    stem: str | None = "part-",
    schema: Callable[[pa.Table], pa.Table] | None = None,
) -> None:
    """Events as one file (`shards` 1, contract layout) or shards of whole patients: the
    contract's events/part-00000.parquet ..., or MEDS's 0.parquet ... (`stem` None) in
    `directory` itself."""
    if shards == 1 and stem is not None:
        write_parquet(events, directory / EVENTS.filename)
        return
    shard_dir = directory / EVENTS.name if stem is not None else directory
    shard_dir.mkdir(exist_ok=True)
    patient = "patient_id" if "patient_id" in events.columns else "subject_id"
    n_patients = max(events[patient].n_unique(), 1)
    rank = pl.col(patient).rank("dense").cast(pl.Int64) - 1
    parts = events.with_columns(_shard=rank * shards // n_patients).partition_by(
        "_shard", as_dict=True, include_key=False, maintain_order=True
    )
    for i in range(shards):
        part = parts.get((i,), events.clear())
        name = f"{i}.parquet" if stem is None else f"{stem}{i:05d}.parquet"
        write_parquet(part, shard_dir / name, schema=schema)


# Where `write_meds_cohort` puts the prediction points, as MEDS label files: the labeled ED
# visits (boolean_value, never null in MEDS) and every ED visit (no label column).
MEDS_LABELS_FILE = "task_labels/ed_admission_7d.parquet"
MEDS_VISITS_FILE = "task_labels/ed_visits.parquet"
MEDS_SEX_PREFIX = "GENDER"  # static code GENDER//F, as MEDS-Extract writes MIMIC-IV's


def write_meds_cohort(
    cohort: Cohort, out_dir: Path, *, shards: int = 1, overwrite: bool = False
) -> None:
    """Write a cohort as a MEDS dataset root, atomically: data/{train,tuning,held_out}/N.parquet
    (the events, a GENDER//<sex> static row and a MEDS_BIRTH event per subject, in the `meds`
    schema: numeric_value float32), metadata/codes.parquet, metadata/dataset.json,
    metadata/subject_splits.parquet (the default patient split of `assign_splits`) and the ED
    visits as MEDS label files: MEDS_LABELS_FILE (subject_id, prediction_time, boolean_value)
    for the labeled ones, MEDS_VISITS_FILE (subject_id, prediction_time) for all. Read with
    `--meds-labels ROOT/MEDS_LABELS_FILE --meds-prediction-times ROOT/MEDS_VISITS_FILE`.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be an integer >= 1, got {shards!r}")
    out_dir = Path(out_dir)
    if overwrite:
        check_output_dir(out_dir, "dataset")
    import meds

    splits = _meds_splits(cohort.visits)
    with output_lock(out_dir), atomic_directory(out_dir, overwrite=overwrite) as tmp:
        write_marker(tmp, "dataset")
        rows = _meds_rows(cohort).join(splits, on="subject_id")
        for (split,), part in rows.partition_by("split", as_dict=True, include_key=False).items():
            (tmp / "data" / split).mkdir(parents=True)
            _write_events(part, tmp / "data" / split, shards=shards, stem=None,
                          schema=meds.DataSchema.align)  # fmt: skip
        (tmp / "metadata").mkdir()
        _write_meds_metadata(rows, splits, tmp / "metadata")
        (tmp / MEDS_LABELS_FILE).parent.mkdir(parents=True)
        points = _meds_points(cohort)
        labeled = points.filter(pl.col("boolean_value").is_not_null())
        write_parquet(labeled, tmp / MEDS_LABELS_FILE, schema=meds.LabelSchema.align)
        every = points.drop("boolean_value")
        write_parquet(every, tmp / MEDS_VISITS_FILE, schema=meds.LabelSchema.align)


def _meds_splits(visits: pl.DataFrame) -> pl.DataFrame:
    import meds

    from ehr_ssl.config import SplitConfig
    from ehr_ssl.data.splits import assign_splits

    names = {"train": meds.train_split, "val": meds.tuning_split, "test": meds.held_out_split}
    patients = visits["patient_id"].unique().sort()
    split = assign_splits(patients, SplitConfig()).cast(pl.String).replace_strict(names)
    return pl.DataFrame({"subject_id": patients, "split": split})


def _meds_rows(cohort: Cohort) -> pl.DataFrame:
    """The events, static sex rows and birth events, sorted by subject and time (static rows
    first), in the `meds` DataSchema's types."""
    import meds

    first = cohort.visits.sort("arrival_time").group_by("patient_id").first()
    year_us = 365.25 * 24 * 3600 * 1e6
    birth = first.select(
        "patient_id",
        time=pl.col("arrival_time") - pl.duration(microseconds=(pl.col("age") * year_us).round()),
        code=pl.lit(meds.birth_code),
    )
    sex = first.select(
        "patient_id",
        time=pl.lit(None, pl.Datetime("us")),
        code=pl.lit(MEDS_SEX_PREFIX + "//") + pl.col("sex"),
    )
    events = cohort.events.select("patient_id", "time", "code", "numeric_value")
    rows = pl.concat([sex, birth, events], how="diagonal_relaxed")
    rows = rows.rename({"patient_id": "subject_id"}).sort("subject_id", "time", nulls_last=False)
    return rows.with_columns(pl.col("numeric_value").cast(pl.Float32))


def _meds_points(cohort: Cohort) -> pl.DataFrame:
    points = cohort.visits.join(cohort.labels, on="visit_id", how="left")
    return points.sort("patient_id", "prediction_time").select(
        subject_id=pl.col("patient_id"),
        prediction_time=pl.col("prediction_time"),
        boolean_value=pl.col("label"),
    )


def _write_meds_metadata(rows: pl.DataFrame, splits: pl.DataFrame, directory: Path) -> None:
    import json

    import meds

    from ehr_ssl import __version__

    codes = rows.select(pl.col("code").unique().sort())
    # The cohort's hierarchy: a diagnosis's parent is its category, the part before the dot
    # ("DX//K67.3B" -> "DX//K67"), as in ICD-10; the other codes have none.
    stem = pl.col("code").str.split(".").list.first()
    parents = pl.when(pl.col("code").str.contains(".", literal=True)).then(pl.concat_list(stem))
    codes = codes.with_columns(description=pl.lit(None, pl.String), parent_codes=parents)
    write_parquet(codes, directory / "codes.parquet", schema=meds.CodeMetadataSchema.align)
    write_parquet(
        splits, directory / "subject_splits.parquet", schema=meds.SubjectSplitSchema.align
    )
    dataset = {
        "dataset_name": "ehr-ssl synthetic ED cohort",
        "dataset_version": __version__,
        "etl_name": "ehr-ssl synth --format meds",
        "etl_version": __version__,
        "meds_version": meds.__version__,
    }
    (directory / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
