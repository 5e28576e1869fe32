"""MEDS in: a MEDS dataset root read as it is, through the input contract.

A MEDS root holds `data/**/*.parquet` (subject_id, time, code, numeric_value, text_value; rows
with a null time are static), `metadata/codes.parquet`, `metadata/dataset.json` and
`metadata/subject_splits.parquet`. It has no visits table: the ED visits are prediction points
from MEDS label files, as ACES writes them (`config.MedsConfig`). `contract_data` turns such a
root into the contract's layout in a temporary directory, which every stage then reads as any
other dataset:

- visits.parquet: one row per prediction point (sorted by subject and time; visit_id is the row
  number), arrival_time from the configured arrival code or offset, the split from
  subject_splits.parquet when present, age at arrival from the birth event (meds.birth_code),
  sex and the other static rows as static columns (`static_<prefix>` by code prefix);
- labels.parquet: the points whose boolean_value is not null;
- events/: links to the data shards, read with data.drop_null_time_events (their static rows
  are read through the visits' static columns instead);
- codes.parquet: a link to metadata/codes.parquet, when the root has one (descriptions and
  parent codes: the code hierarchy).

Nothing is copied but the points and the patients' static rows. Each file is checked against
the `meds` package's schema: a missing column stops the read (exit 2, one line), a type that
differs from MEDS's but reads the same (float64 values) is reported in `summary["warnings"]`.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import meds
import polars as pl
import pyarrow as pa

from ehr_ssl.config import DataConfig, TokenizeConfig
from ehr_ssl.data.parquet import (
    parquet_columns,
    parquet_schema,
    read_parquet,
    read_row_groups,
    write_parquet,
)
from ehr_ssl.data.readers import check_file, is_present
from ehr_ssl.data.schema import LABELS, VISITS
from ehr_ssl.data.splits import SPLIT_NAMES
from ehr_ssl.errors import InputError
from ehr_ssl.layout import CODES_FILE

log = logging.getLogger("ehr_ssl")

SEX_PREFIXES = ("GENDER", "SEX")  # static codes read as the contract's `sex` column
STATIC_PREFIX = "static_"  # the other static codes: one visit column per code prefix
MEDS_FILE = "meds.json"  # in the contract directory: where it came from, what was read


@dataclass
class MedsSummary:
    """What a MEDS root gave: counts and settings, no identifier."""

    points: int = 0
    labeled: int = 0
    subjects: int = 0
    static_rows: int = 0
    static_columns: list[str] = field(default_factory=list)
    age_from_birth: int = 0
    split_from: str = "hash of subject_id ([split] settings)"
    arrival: str = ""
    dataset: dict = field(default_factory=dict)
    codes: dict = field(default_factory=dict)  # metadata/codes.parquet: rows, with parents
    warnings: dict[str, int] = field(default_factory=dict)  # schema differences: files


def is_meds_root(path: Path) -> bool:
    """A MEDS dataset root: a data/ directory and no contract visits table."""
    path = Path(path)
    return (path / meds.data_subdirectory).is_dir() and not is_present(path / VISITS.filename)


def data_shards(root: Path) -> list[Path]:
    """The data shards of MEDS root `root` (data/**/*.parquet, in path order)."""
    shards = sorted((Path(root) / meds.data_subdirectory).rglob("*.parquet"))
    if not shards:
        raise InputError("no *.parquet files under data/", file=str(Path(root) / "data"))
    for shard in shards:
        check_file(shard)
    return shards


def check_schema(path: Path, schema: type, summary: MedsSummary, *, required: tuple = ()) -> None:
    """`path` against a `meds` schema: its required columns (and `required`) present, else an
    InputError; a type MEDS would refuse but the contract reads (float64 for float32) is a
    warning, since the contract's reader checks and casts every column it reads."""
    found = parquet_schema(path)
    names = found.names
    for column in (*schema.required_columns(), *required):
        if column not in names:
            raise InputError(
                f"missing: a MEDS {schema.__name__} file needs it (meds {meds.__version__}; "
                f"columns present: {', '.join(names) or 'none'})",
                file=str(path),
                column=column,
            )
    try:
        schema.validate(found)
    except Exception as e:  # flexible_schema's SchemaValidationError
        warning = f"{schema.__name__}: {str(e).splitlines()[0]}, read with a cast"
        summary.warnings[warning] = summary.warnings.get(warning, 0) + 1


# The data shards' key columns: the types they can be read as (MEDS's own in parentheses). A
# float subject id or a string time is no cast away from a key: it is refused.
SHARD_KEY_TYPES = {
    "subject_id": (pa.types.is_integer, "int64"),
    "time": (lambda t: pa.types.is_timestamp(t) or pa.types.is_null(t), "timestamp[us]"),
    "code": (lambda t: _is_text(t.value_type if pa.types.is_dictionary(t) else t), "string"),
}


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or kind == pa.string_view()


def check_shard_keys(path: Path) -> None:
    """A data shard's subject_id, time and code of a type they can be read as, else an
    InputError naming the column (MEDS's other differences are warnings: `check_schema`)."""
    found = parquet_schema(path)
    for column, (readable, expected) in SHARD_KEY_TYPES.items():
        if not readable(found.field(column).type):
            raise InputError(
                f"type {found.field(column).type} (MEDS: {expected})",
                file=str(path),
                column=column,
            )


@contextmanager
def contract_data(path: Path, config: TokenizeConfig) -> Iterator[tuple[Path, DataConfig]]:
    """The dataset at `path` in the contract's layout, with the data settings to read it: the
    directory itself for a contract dataset, or a MEDS root converted into a temporary
    directory (removed on exit). Raises InputError on bad input, before anything is written."""
    path = Path(path)
    if not is_meds_root(path):
        _check_no_meds_settings(path, config)
        yield path, config.data
        return
    with tempfile.TemporaryDirectory(prefix="ehr-ssl-meds-") as work:
        summary = write_contract(path, Path(work), config)
        log.info("%s", format_meds_summary(summary))
        statics = config.data.static_columns
        data = replace(
            config.data,
            drop_null_time_events=True,
            static_columns=summary.static_columns if statics is None else statics,
        )
        try:
            yield Path(work), data
        except InputError as e:  # name the user's files, not the temporary ones
            raise _in_source_files(e, Path(work), path, config) from None


def _check_no_meds_settings(path: Path, config: TokenizeConfig) -> None:
    """A MEDS setting given for a dataset that is no MEDS root would be ignored: refused."""
    for name in ("labels", "prediction_times", "arrival_code"):
        if getattr(config.meds, name) is not None:
            raise InputError(
                f"not a MEDS root (no data/ directory, or a {VISITS.filename} beside it), so "
                f"meds.{name} (--meds-{name.replace('_', '-')}) would be ignored",
                file=str(path),
            )


# The contract's columns as the MEDS files name them: in a data shard, and in a label file
# (arrival_time is the prediction time less the offset, or the arrival event before it).
SHARD_COLUMNS = {"patient_id": "subject_id"}
POINT_COLUMNS = SHARD_COLUMNS | {
    "label": "boolean_value",
    "arrival_time": "prediction_time",
}


def _in_source_files(
    error: InputError, work: Path, root: Path, config: TokenizeConfig
) -> InputError:
    """`error` with a file of the contract directory `work` replaced by the MEDS file it
    stands for: a data shard for a link of events/, the root's data directory for events/
    itself (an error about every shard, a leak), the label file for visits and labels."""
    if error.file is None or not error.file.startswith(str(work)):
        return error
    file, events = Path(error.file), work / "events"
    if file == events or (file.parent == events and file.is_symlink()):
        # the shard itself, row for row; every shard: the root's data directory
        shard = root / meds.data_subdirectory if file == events else file.resolve()
        column = SHARD_COLUMNS.get(error.column, error.column)
        return InputError(error.problem, file=str(shard), column=column)
    source = str(config.meds.labels or config.meds.prediction_times)
    # The visits were built from the points, sorted: a row index there is not the file's.
    problem = re.sub(r" \(first at row index \d+\)", "", error.problem)
    column = POINT_COLUMNS.get(error.column, error.column)
    return InputError(problem, file=source, column=column)


def format_meds_summary(summary: MedsSummary) -> str:
    """The MEDS reading in a few log lines: counts, where arrival, split and statics came from."""
    name = summary.dataset.get("dataset_name", "MEDS dataset")
    lines = [
        f"MEDS: {name}: {summary.points} prediction points ({summary.labeled} labeled) of "
        f"{summary.subjects} subjects",
        f"  arrival_time: {summary.arrival}",
        f"  split: {summary.split_from}",
        f"  static columns: {', '.join(summary.static_columns) or 'none'} (from "
        f"{summary.static_rows} static rows; age from {meds.birth_code} for "
        f"{summary.age_from_birth} points)",
    ]
    if summary.codes:
        lines.append(
            f"  code metadata: {summary.codes['codes']} codes, "
            f"{summary.codes['with_parent_codes']} with parent codes"
        )
    notes = [f"  warning: {w} ({n} files)" for w, n in summary.warnings.items()]
    return "\n".join(lines + notes)


def sources(path: Path, config: TokenizeConfig) -> list[Path]:
    """The files outside `path` that a MEDS dataset is read from (its label files), for the
    data's fingerprint; none for a contract dataset."""
    if not is_meds_root(path):
        return []
    files = [config.meds.labels, config.meds.prediction_times]
    return [Path(f) for f in files if f is not None]


def write_contract(root: Path, out: Path, config: TokenizeConfig) -> MedsSummary:
    """Write MEDS root `root` in the contract's layout into directory `out` (see the module's
    docstring); returns what was read."""
    summary = MedsSummary(dataset=_dataset_metadata(root))
    shards = data_shards(root)
    for shard in shards:
        check_schema(shard, meds.DataSchema, summary)
        check_shard_keys(shard)
    points = read_points(config, summary)
    rows = patient_rows(shards, config.meds.arrival_code, points["subject_id"])
    visits = build_visits(points, rows, root, config, summary)
    write_parquet(visits, out / VISITS.filename)
    labels = points.select(pl.col("visit_id"), pl.col("boolean_value").alias("label"))
    labels = labels.filter(pl.col("label").is_not_null())
    if labels.height:
        write_parquet(labels, out / LABELS.filename)
    (out / "events").mkdir()
    for i, shard in enumerate(shards):  # in path order: the reader reads them sorted
        (out / "events" / f"{i:06d}.parquet").symlink_to(shard.resolve())
    _link_code_metadata(root, out, summary)
    summary.points, summary.labeled = visits.height, labels.height
    summary.subjects = visits["patient_id"].n_unique()
    (out / MEDS_FILE).write_text(json.dumps(summary.__dict__, indent=2, default=str) + "\n")
    return summary


def _link_code_metadata(root: Path, out: Path, summary: MedsSummary) -> None:
    """metadata/codes.parquet, checked against the meds schema and linked into the contract
    directory (`CODES_FILE`): its descriptions and parent codes (the code hierarchy) for
    whatever reads codes; counted in the summary."""
    path = root / meds.code_metadata_filepath
    if not is_present(path):
        return
    check_file(path)
    check_schema(path, meds.CodeMetadataSchema, summary)
    names = parquet_columns(path)
    codes = read_parquet(path, [c for c in ("code", "parent_codes") if c in names])
    with_parents = 0
    if "parent_codes" in codes.columns:
        with_parents = int((codes["parent_codes"].list.len().fill_null(0) > 0).sum())
    summary.codes = {"codes": codes.height, "with_parent_codes": with_parents}
    (out / CODES_FILE).symlink_to(path.resolve())


def copy_code_hierarchy(source: Path, target: Path) -> None:
    """Copy the code hierarchy (code, parent_codes) of a MEDS codes.parquet or a contract
    directory's `CODES_FILE` to `target`, if `source` exists and has parent_codes (the tabular
    baselines roll counts up it)."""
    if not source.exists() or "parent_codes" not in parquet_columns(source):
        return
    write_parquet(read_parquet(source, ["code", "parent_codes"]), target)


def _dataset_metadata(root: Path) -> dict:
    path = root / meds.dataset_metadata_filepath
    if not is_present(path):
        return {}
    check_file(path)
    try:
        document = json.loads(path.read_text())
        meds.DatasetMetadataSchema.validate(document)
    except Exception as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"not a MEDS dataset.json: {why}", file=str(path)) from None
    return {k: document[k] for k in ("dataset_name", "dataset_version", "etl_name",
                                     "meds_version") if k in document}  # fmt: skip


def read_points(config: TokenizeConfig, summary: MedsSummary) -> pl.DataFrame:
    """The prediction points (subject_id, prediction_time, boolean_value, visit_id), sorted by
    subject and time; visit_id is the row number."""
    labels, times = config.meds.labels, config.meds.prediction_times
    if labels is None and times is None:
        raise InputError(
            "a MEDS dataset has no visits table: name its ED visits with --meds-labels FILE "
            "(a MEDS label file, as ACES writes it) and/or --meds-prediction-times FILE",
            setting="meds.labels",
        )
    points = pl.DataFrame(schema=POINT_SCHEMA)
    if labels is not None:
        points = _point_files(Path(labels), summary, labeled=True)
    if times is not None:
        unlabeled = _point_files(Path(times), summary, labeled=False)
        new = unlabeled.join(points, on=["subject_id", "prediction_time"], how="anti")
        points = pl.concat([points, new])
    points = points.sort("subject_id", "prediction_time")
    return points.with_row_index("visit_id").with_columns(pl.col("visit_id").cast(pl.Int64))


POINT_SCHEMA = {"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"),
                "boolean_value": pl.Boolean}  # fmt: skip


def _point_files(path: Path, summary: MedsSummary, *, labeled: bool) -> pl.DataFrame:
    """A MEDS label file, or a directory of them, as POINT_SCHEMA (boolean_value null when not
    `labeled`); a point given twice is an error."""
    if not is_present(path):
        raise InputError("file not found", file=str(path))
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise InputError("directory has no *.parquet files", file=str(path))
    frames = [_point_file(f, summary, labeled=labeled) for f in files]
    points = pl.concat(frames)
    duplicated = points.select("subject_id", "prediction_time").is_duplicated()
    if (n := int(duplicated.sum())) > 0:
        raise InputError(
            f"{n} rows share their (subject_id, prediction_time) with another row: one row per ED "
            "visit",
            file=str(path),
            column="prediction_time",
        )
    return points


def _point_file(path: Path, summary: MedsSummary, *, labeled: bool) -> pl.DataFrame:
    check_file(path)
    check_schema(path, meds.LabelSchema, summary, required=("boolean_value",) * labeled)
    columns = ["subject_id", "prediction_time", *["boolean_value"] * labeled]
    frame = read_parquet(path, columns)
    for column in ("subject_id", "prediction_time"):
        if (n := frame[column].null_count()) > 0:
            raise InputError(f"{n} null values", file=str(path), column=column)
    checks = {"subject_id": lambda t: t.is_integer(), "prediction_time": _is_datetime,
              "boolean_value": lambda t: t in (pl.Boolean, pl.Null)}  # fmt: skip
    for column in columns:
        if not checks[column](frame.schema[column]):
            expected = meds.LabelSchema.schema().field(column).type
            raise InputError(
                f"type {frame.schema[column]} (MEDS: {expected})",
                file=str(path),
                column=column,
            )
    if not labeled:
        frame = frame.with_columns(boolean_value=pl.lit(None, pl.Boolean))
    return frame.select(
        pl.col("subject_id").cast(pl.Int64),
        _naive_utc(pl.col("prediction_time"), frame.schema["prediction_time"]),
        pl.col("boolean_value").cast(pl.Boolean),
    )


def _is_datetime(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.Datetime)


def _naive_utc(column: pl.Expr, dtype: pl.Datetime) -> pl.Expr:
    """Times as the contract holds them: naive UTC, microseconds (rounded down, as visit times
    are)."""
    if dtype.time_zone is not None:
        column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return column.dt.cast_time_unit("us")


def patient_rows(shards: list[Path], arrival_code: str | None, subjects: pl.Series) -> pl.DataFrame:
    """The rows of the points' subjects that make visit columns: static rows (null time), birth
    events and arrival events (subject_id, time, code), read one row group at a time."""
    codes = [meds.birth_code, *([arrival_code] if arrival_code else [])]
    wanted = subjects.unique().implode()
    frames = []
    for shard in shards:
        for group in read_row_groups(shard, ["subject_id", "time", "code"]):
            keep = pl.col("time").is_null() | pl.col("code").is_in(codes)
            group = group.filter(keep & pl.col("subject_id").is_in(wanted))
            frames.append(group.with_columns(pl.col("subject_id").cast(pl.Int64)))
    rows = pl.concat(frames, how="vertical_relaxed")
    return rows.with_columns(_naive_utc(pl.col("time"), rows.schema["time"]))


def build_visits(
    points: pl.DataFrame, rows: pl.DataFrame, root: Path, config: TokenizeConfig,
    summary: MedsSummary,
) -> pl.DataFrame:  # fmt: skip
    """The contract's visits table of the prediction points."""
    visits = _with_arrival(points, rows, config, summary)
    births = rows.filter((pl.col("code") == meds.birth_code) & pl.col("time").is_not_null())
    births = births.group_by("subject_id").agg(pl.col("time").min().alias("birth"))
    if births.height:
        visits = visits.join(births, on="subject_id", how="left")
        years = (pl.col("arrival_time") - pl.col("birth")).dt.total_seconds() / (365.25 * 86400)
        visits = visits.with_columns(age=years).drop("birth")
        summary.age_from_birth = visits["age"].is_not_null().sum()
    static = rows.filter(pl.col("time").is_null())
    summary.static_rows = static.height
    statics = static_columns(static)
    visits = visits.join(statics, on="subject_id", how="left")
    summary.static_columns = [c for c in ("age", "sex") if c in visits.columns] + sorted(
        c for c in statics.columns if c.startswith(STATIC_PREFIX)
    )
    visits = _with_split(visits, root, summary)
    return visits.rename({"subject_id": "patient_id"}).drop("boolean_value").sort("visit_id")


def _with_arrival(
    points: pl.DataFrame, rows: pl.DataFrame, config: TokenizeConfig, summary: MedsSummary
) -> pl.DataFrame:
    """arrival_time: the latest arrival-code event at or before each prediction time, or the
    prediction time less the configured offset."""
    code = config.meds.arrival_code
    if code is None:
        minutes = config.data.prediction_offset_minutes
        summary.arrival = f"prediction_time - {minutes:g} minutes (data.prediction_offset_minutes)"
        return points.with_columns(
            arrival_time=pl.col("prediction_time") - timedelta(minutes=minutes)
        )
    summary.arrival = f"the latest {code} event at or before prediction_time (meds.arrival_code)"
    arrivals = rows.filter((pl.col("code") == code) & pl.col("time").is_not_null())
    arrivals = arrivals.select("subject_id", arrival_time=pl.col("time")).sort("arrival_time")
    visits = points.sort("prediction_time").join_asof(
        arrivals, left_on="prediction_time", right_on="arrival_time", by="subject_id",
        strategy="backward", check_sortedness=False,  # both sorted by time, so per subject
    )  # fmt: skip
    if (n := visits["arrival_time"].null_count()) > 0:
        raise InputError(
            f"{n} of {visits.height} prediction points have no {code} event at or before their "
            "prediction_time (set meds.arrival_code to the arrival event, or leave it unset)",
            file=str(config.meds.labels or config.meds.prediction_times),
            column="prediction_time",
        )
    return visits


def static_columns(static: pl.DataFrame) -> pl.DataFrame:
    """One column per static code prefix (code "PREFIX//value"; `sex` for GENDER and SEX,
    else static_<prefix>), one row per subject: the values, sorted and joined by "|" when a
    subject has several; "present" for a code without a value part."""
    parts = pl.col("code").str.splitn("//", 2)
    prefix = parts.struct.field("field_0")
    named = (
        pl.when(prefix.str.to_uppercase().is_in(list(SEX_PREFIXES)))
        .then(pl.lit("sex"))
        .otherwise(pl.lit(STATIC_PREFIX) + prefix.str.to_lowercase().str.replace_all(r"\W", "_"))
    )
    coded = static.select(
        "subject_id",
        column=named,
        value=parts.struct.field("field_1").fill_null("present"),
    ).unique()
    if coded.height == 0:
        return pl.DataFrame(schema={"subject_id": pl.Int64})
    values = coded.group_by("subject_id", "column").agg(pl.col("value").sort().str.join("|"))
    return values.pivot(on="column", index="subject_id", values="value")


def _with_split(visits: pl.DataFrame, root: Path, summary: MedsSummary) -> pl.DataFrame:
    """The split column from metadata/subject_splits.parquet, when the root has one."""
    path = root / meds.subject_splits_filepath
    if not is_present(path):
        return visits
    check_file(path)
    check_schema(path, meds.SubjectSplitSchema, summary)
    splits = read_parquet(path, ["subject_id", "split"])
    if not splits["subject_id"].dtype.is_integer():
        raise InputError(f"type {splits['subject_id'].dtype} (MEDS: int64)", file=str(path),
                         column="subject_id")  # fmt: skip
    splits = splits.with_columns(
        pl.col("subject_id").cast(pl.Int64), pl.col("split").cast(pl.String)
    )
    unknown = splits.filter(~pl.col("split").is_in(list(SPLIT_NAMES)))
    if unknown.height:
        raise InputError(
            f"{unknown.height} rows name a split other than {', '.join(SPLIT_NAMES)}",
            file=str(path),
            column="split",
        )
    if splits["subject_id"].is_duplicated().any():
        raise InputError("subjects listed more than once", file=str(path), column="subject_id")
    visits = visits.join(splits, on="subject_id", how="left")
    if (n := visits["split"].null_count()) > 0:
        raise InputError(
            f"{n} prediction points belong to subjects without a split", file=str(path),
            column="subject_id",
        )  # fmt: skip
    summary.split_from = f"{meds.subject_splits_filepath} (train, tuning -> val, held_out -> test)"
    return visits
