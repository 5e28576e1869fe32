"""Readers: find a dataset's Parquet tables, check them against the contract once, at the boundary,
and return normalized polars frames. Every stage reads data through here.

Normalized form: ids are Int64 or String (the same type in every table), times Datetime("us")
naive UTC, numeric_value Float64 (NaN read as null), labels Boolean. Every problem raises
`InputError` naming the file, the column and the problem, never an identifier value.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from ehr_ssl.config import DataConfig
from ehr_ssl.data.parquet import parquet_columns, read_parquet, read_row_groups
from ehr_ssl.data.schema import (
    EARLIEST_TIME,
    EVENTS,
    LABELS,
    LATEST_TIME,
    ORACLE,
    VISITS,
    Column,
    Table,
)
from ehr_ssl.data.splits import SPLIT_NAMES
from ehr_ssl.errors import InputError

log = logging.getLogger("ehr_ssl")

KEY_COLUMNS = ("visit_id", "patient_id", "arrival_time", "prediction_time")


@dataclass
class Dataset:
    """A checked dataset. `static_columns` maps each static feature to "numeric" or
    "categorical"; `unused_columns` lists the other visit columns, which are not read."""

    root: Path
    visits: pl.DataFrame
    events: pl.DataFrame
    labels: pl.DataFrame | None
    static_columns: dict[str, str]
    unused_columns: list[str]
    files: dict[str, list[Path]]


def table_files(root: Path, table: Table) -> list[Path]:
    """The Parquet file(s) of `table` in dataset directory `root` (raises if there are none)."""
    single = root / table.filename
    shard_dir = root / table.name
    if table.sharded and is_present(shard_dir) and not shard_dir.is_file():
        if is_present(single):
            raise InputError(
                f"both {table.filename} and {table.name}/ exist; keep one", file=str(root)
            )
        check_file(shard_dir, directory=True)
        shards = sorted(shard_dir.glob("*.parquet"))
        if not shards:
            raise InputError("directory has no *.parquet files", file=str(shard_dir))
        return shards
    if not is_present(single):
        raise InputError("file not found", file=str(single))
    check_file(single)
    return [single]


def is_present(path: Path) -> bool:
    """Whether `path` exists as a name, even one that cannot be followed (a dangling symbolic
    link, a link loop): such a file is an error to report (`check_file`), never an absent
    table."""
    return os.path.lexists(path)


def check_file(path: Path, *, directory: bool = False) -> None:
    """A dataset file (or shard `directory`) that is present (`is_present`) must be one that
    can be opened."""
    try:
        mode = path.stat().st_mode  # follows symbolic links
    except OSError as e:
        dangling = e.errno == errno.ENOENT and path.is_symlink()
        why = "a symbolic link to a missing file" if dangling else e.strerror or str(e)
        raise InputError(f"cannot be read ({why})", file=str(path)) from None
    if directory and not stat.S_ISDIR(mode):
        raise InputError("is not a directory", file=str(path))
    if not directory and stat.S_ISDIR(mode):
        raise InputError("is a directory, expected a Parquet file", file=str(path))


def dataset_files(root: Path) -> dict[str, list[Path]]:
    """The visits and events files of dataset directory `root` (labels are optional: see
    `read_labels`)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("dataset directory not found", file=str(root))
    return {"visits": table_files(root, VISITS), "events": table_files(root, EVENTS)}


def read_dataset(root: Path, config: DataConfig) -> Dataset:
    """Read and check visits, events (one file or shards) and labels (optional) under `root`."""
    root = Path(root)
    files = dataset_files(root)
    (visits_path,) = files["visits"]
    visits, static_columns, unused, times = read_visits(visits_path, config)
    events = read_events(files["events"], visits, config=config, times=times,
                         source=visits_path.name)  # fmt: skip
    labels = read_labels(root, visits)
    if labels is not None:
        files["labels"] = [root / LABELS.filename]
    return Dataset(root, visits, events, labels, static_columns, unused, files)


def read_visits(
    path: Path, config: DataConfig
) -> tuple[pl.DataFrame, dict[str, str], list[str], list[tuple[str, pl.DataFrame]]]:
    """Read and check a visits file: (visits, static columns, unused columns, and its timestamp
    columns for the time zone check against the events files, see `checked_events`)."""
    raw = read_parquet(path)
    times = [(str(path), raw.select(contract_times(raw)))]
    visits, static_columns, unused = check_visits(raw, config=config, source=str(path))
    return visits, static_columns, unused, times


def read_events(
    files: list[Path],
    visits: pl.DataFrame,
    *,
    config: DataConfig,
    times: list[tuple[str, pl.DataFrame]],
    source: str,
) -> pl.DataFrame:
    """The events files, checked (`checked_events`), as one frame. `visits` (checked) and its
    file's name `source` give the patient_id type they must share."""
    shards = list(
        checked_events(files, config=config, times=times, id_type=visits.schema["patient_id"],
                       id_source=source)
    )  # fmt: skip
    return pl.concat(shards, rechunk=True) if len(shards) > 1 else shards[0]


def read_labels(root: Path, visits: pl.DataFrame) -> pl.DataFrame | None:
    """The checked labels table of dataset `root` (None when it has no labels.parquet; a
    labels.parquet that cannot be read is an error, never "no labels")."""
    path = Path(root) / LABELS.filename
    if not is_present(path):
        return None
    check_file(path)
    labels = check_labels(read_parquet(path), source=str(path))
    check_labels_match_visits(labels, visits, source=str(path))
    return labels


def read_oracle(root: Path) -> pl.DataFrame | None:
    """The true admission probabilities that a synthetic dataset `root` ships (visit_id,
    admission_probability in [0, 1]), checked; None when it has no oracle.parquet."""
    path = Path(root) / ORACLE.filename
    if not is_present(path):
        return None
    check_file(path)
    source = str(path)
    oracle = _normalize(read_parquet(path), ORACLE, source)
    _check_unique(oracle, ORACLE.column("visit_id"), source)
    probability = pl.col("admission_probability")
    outside = (probability < 0) | (probability > 1)
    _first_bad(oracle, outside, source, "admission_probability", "values outside [0, 1]")
    return oracle.select("visit_id", "admission_probability")


def checked_events(
    files: list[Path],
    *,
    config: DataConfig,
    times: list[tuple[str, pl.DataFrame]],
    id_type: pl.DataType,
    id_source: str,
    batch_rows: int | None = None,
) -> Iterator[pl.DataFrame]:
    """The events files, checked and normalized (`check_events`), one frame per file, or per
    batch of at most `batch_rows` rows (memory holds one row group of the file; errors still
    name the file's row). Only the contract's columns are read. Empty files or batches of a
    partitioned export are skipped; an events table with no rows at all is rejected. `times`
    holds the timestamp columns seen so far (the visits'), for the time zone check across
    tables."""
    wanted = {c.name for c in EVENTS.columns} | {a for c in EVENTS.columns for a in c.aliases}
    any_rows, dropped = False, 0
    for path in files:
        present = parquet_columns(path)
        check_misnamed(present, EVENTS, str(path))
        columns = [c for c in present if c in wanted]
        offset = 0
        for raw in _raw_batches(path, columns, batch_rows):
            if raw.height == 0:
                continue
            any_rows = True
            check_time_zones([*times, (str(path), raw.select(contract_times(raw)))])
            events = check_events(raw, config=config, source=str(path), row_offset=offset)
            offset += raw.height
            dropped += raw.height - events.height  # null times, by data.drop_null_time_events
            if events.schema["patient_id"] != id_type:
                raise InputError(
                    f"type {events.schema['patient_id']} differs from {id_source} patient_id "
                    f"type {id_type}",
                    file=str(path),
                    column="patient_id",
                )
            yield events
    if not any_rows:
        if len(files) == 1:
            raise InputError("table is empty", file=str(files[0]))
        raise InputError("every shard is empty", file=str(files[0].parent))
    if dropped:  # nothing is dropped without a word
        where = files[0] if len(files) == 1 else files[0].parent
        log.info("%s: %d events with a null time left out (data.drop_null_time_events)",
                 where, dropped)  # fmt: skip


def _raw_batches(path: Path, columns: list[str], batch_rows: int | None) -> Iterator[pl.DataFrame]:
    """A Parquet file whole (`batch_rows` None) or in batches of at most `batch_rows` rows (read
    one row group at a time), as polars frames."""
    if batch_rows is None:
        yield read_parquet(path, columns)
        return
    for row_group in read_row_groups(path, columns):
        for start in range(0, row_group.height, batch_rows):
            yield row_group.slice(start, batch_rows)


def check_visits(
    df: pl.DataFrame, *, config: DataConfig, source: str = "visits"
) -> tuple[pl.DataFrame, dict[str, str], list[str]]:
    """Check and normalize a visits table; returns (visits, static columns, unused columns)."""
    df = _normalize(df, VISITS, source)
    if "prediction_time" not in df.columns:
        offset = timedelta(minutes=config.prediction_offset_minutes)
        df = df.with_columns(prediction_time=pl.col("arrival_time") + offset)
    _check_unique(df, VISITS.column("visit_id"), source)
    if "age" in df.columns:
        _first_bad(df, pl.col("age") < 0, source, "age", "negative values")
    _first_bad(
        df,
        pl.col("prediction_time") < pl.col("arrival_time"),
        source,
        "prediction_time",
        "before arrival_time",
    )
    static_columns, unused = _static_columns(df, config.static_columns, source)
    split = []
    if "split" in df.columns:
        df, split = _check_split(df, source), ["split"]
        unused.remove("split")
    df = df.select(*KEY_COLUMNS, *static_columns, *split)
    return df, static_columns, unused


def _check_split(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """The visits' own split column in normal form (train, val, test), one split per patient."""
    known = pl.col("split").is_in(list(SPLIT_NAMES))
    _first_bad(df, ~known, source, "split", f"values other than {', '.join(SPLIT_NAMES)}")
    df = df.with_columns(pl.col("split").replace_strict(SPLIT_NAMES, return_dtype=pl.String))
    per_patient = df.group_by("patient_id").agg(pl.col("split").n_unique().alias("n"))
    if (n := per_patient.filter(pl.col("n") > 1).height) > 0:
        raise InputError(
            f"{n} patients have visits in more than one split (a patient's visits share one)",
            file=source,
            column="split",
        )
    return df


def check_events(
    df: pl.DataFrame, *, config: DataConfig, source: str = "events", row_offset: int = 0
) -> pl.DataFrame:
    """Check and normalize an events table to patient_id, time, code, numeric_value.

    `row_offset` is the row index of `df`'s first row in `source` (for a chunk of a file), so
    that errors name the row of the file."""
    if config.drop_null_time_events and "time" in df.columns:
        # Row indices stay those of the file: count from the unfiltered rows.
        df = df.with_row_index("_row", offset=row_offset).filter(pl.col("time").is_not_null())
    elif row_offset:
        df = df.with_row_index("_row", offset=row_offset)
    df = _normalize(df, EVENTS, source)
    if "numeric_value" not in df.columns:
        df = df.with_columns(numeric_value=pl.lit(None, pl.Float64))
    _first_bad(df, pl.col("code").str.len_bytes() == 0, source, "code", "empty strings")
    _first_bad(
        df, pl.col("numeric_value").is_infinite(), source, "numeric_value", "infinite values"
    )
    return df.select("patient_id", "time", "code", "numeric_value")


def check_labels(df: pl.DataFrame, *, source: str = "labels") -> pl.DataFrame:
    """Check and normalize a labels table to visit_id, label."""
    df = _normalize(df, LABELS, source)
    _check_unique(df, LABELS.column("visit_id"), source)
    return df.select("visit_id", "label")


def check_labels_match_visits(labels: pl.DataFrame, visits: pl.DataFrame, *, source: str) -> None:
    if labels.schema["visit_id"] != visits.schema["visit_id"]:
        raise InputError(
            f"type {labels.schema['visit_id']} differs from the visits table's visit_id type "
            f"{visits.schema['visit_id']}",
            file=source,
            column="visit_id",
        )
    known = pl.col("visit_id").is_in(visits["visit_id"].implode())
    _first_bad(labels, ~known, source, "visit_id", "labels for visits not in the visits table")


def check_misnamed(columns: list[str], table: Table, source: str) -> None:
    """A column spelled like a contract column that is absent (`Column.misnamed`) stops the
    read: read as an unused column, a "value" for numeric_value would silently be nothing.

    Raises:
        InputError: naming the file, the column and the contract's name for it.
    """
    lowered = {name.lower(): name for name in columns}
    for column in table.columns:
        if any(name in columns for name in (column.name, *column.aliases)):
            continue
        found = [lowered[m] for m in column.misnamed if m in lowered]
        if found:
            raise InputError(
                f"looks like the contract's {column.name!r}, which is missing: rename it to "
                f"{column.name!r} (or drop it if it is something else)",
                file=source,
                column=found[0],
            )


def _normalize(df: pl.DataFrame, table: Table, source: str) -> pl.DataFrame:
    """Rename aliases, check presence and types, cast the contract's columns to normal form."""
    check_misnamed(df.columns, table, source)
    for column in table.columns:
        present = [n for n in (column.name, *column.aliases) if n in df.columns]
        if len(present) > 1:
            raise InputError(f"both {' and '.join(present)} present; keep one", file=source)
        if present and present[0] != column.name:
            df = df.rename({present[0]: column.name})
        if not present and column.required:
            names = ", ".join(df.columns) or "none"
            raise InputError(f"missing (columns present: {names})", file=source, column=column.name)
    if df.height == 0:
        raise InputError("table is empty", file=source)
    df = df.with_columns([_cast(df, c, source) for c in table.columns if c.name in df.columns])
    for column in table.columns:
        if column.name in df.columns and not column.nullable:
            _first_bad(df, pl.col(column.name).is_null(), source, column.name, "null values")
        if column.kind == "id" and df.schema.get(column.name) == pl.String:  # as good as null
            empty = pl.col(column.name).str.len_bytes() == 0
            _first_bad(df, empty, source, column.name, "empty strings")
    return df


def _cast(df: pl.DataFrame, column: Column, source: str) -> pl.Expr:
    dtype = df.schema[column.name]
    col = pl.col(column.name)
    if dtype == pl.Null and column.nullable:  # an all-null column written without a type
        return pl.lit(None, _NORMAL_TYPES[column.kind]).alias(column.name)
    if column.kind == "id":
        if dtype == pl.UInt64:
            too_large = col > 2**63 - 1
            _first_bad(df, too_large, source, column.name, "ids above 2**63 - 1 (store as strings)")
        if dtype.is_integer():
            return col.cast(pl.Int64)
        if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
            return col.cast(pl.String)
        expected = "string or integer ids"
    elif column.kind == "timestamp":
        if isinstance(dtype, pl.Datetime):
            _check_time_range(df, column.name, dtype, source)
            if dtype.time_zone is not None:
                col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            if dtype.time_unit == "ns":
                # Whole microseconds, rounded so the cutoff stays conservative: event times up,
                # visit times down. Truncating both would let an event 500 ns after the
                # prediction time in.
                ns = col.dt.epoch("ns")
                us = (ns + 999) // 1000 if column.round_up else ns // 1000
                return pl.from_epoch(us, time_unit="us").alias(column.name)
            return col.cast(pl.Datetime("us"))
        expected = "a timestamp"
    elif column.kind == "float":
        if dtype.is_numeric():
            return col.cast(pl.Float64).fill_nan(None)
        expected = "a numeric type"
    elif column.kind == "string":
        if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
            return col.cast(pl.String)
        expected = "strings"
    else:  # bool
        if dtype == pl.Boolean:
            return col
        if dtype.is_integer():
            not_binary = col.is_not_null() & ~col.is_in([0, 1])
            _first_bad(df, not_binary, source, column.name, "values other than 0 and 1")
            return col.cast(pl.Boolean)
        expected = "booleans (or integers 0/1)"
    raise InputError(f"expected {expected}, found {dtype}", file=source, column=column.name)


def _check_time_range(df: pl.DataFrame, name: str, dtype: pl.Datetime, source: str) -> None:
    """Times must lie in [EARLIEST_TIME, LATEST_TIME) (see schema.py). Compared as the stored
    integers, in the column's own unit and before any conversion, which could overflow."""
    per_second = {"ms": 10**3, "us": 10**6, "ns": 10**9}[dtype.time_unit]
    epoch = datetime(1970, 1, 1)
    low = int((EARLIEST_TIME - epoch).total_seconds()) * per_second
    last = int((LATEST_TIME - epoch).total_seconds()) * per_second - 1
    # Bounds past the int64 range (nanoseconds reach 1677 to 2262 only) rule nothing out.
    low, last = max(low, -(2**63)), min(last, 2**63 - 1)
    stored = pl.col(name).to_physical()  # UTC epoch, also for time-zone-aware columns
    outside = (stored < low) | (stored > last)
    years = f"{EARLIEST_TIME.year} to {LATEST_TIME.year - 1}"
    _first_bad(df, outside, source, name, f"times outside the years {years}")


_NORMAL_TYPES = {
    "id": pl.Int64,
    "timestamp": pl.Datetime("us"),
    "float": pl.Float64,
    "string": pl.String,
    "bool": pl.Boolean,
}


def contract_times(df: pl.DataFrame) -> list[str]:
    """The input contract's timestamp columns present in `df` (for the time zone check)."""
    timestamps = {c.name for t in (VISITS, EVENTS) for c in t.columns if c.kind == "timestamp"}
    return [c for c in df.columns if c in timestamps]


def check_time_zones(sources: list[tuple[str, pl.DataFrame]]) -> None:
    """Timestamps must be all time-zone aware or all naive across the tables: naive times are
    read as UTC, so mixing them with local-time-aware ones would shift the cutoff by hours."""
    seen: tuple[str, str, bool] | None = None
    for source, df in sources:
        for name, dtype in df.schema.items():
            if not isinstance(dtype, pl.Datetime):
                continue
            aware = dtype.time_zone is not None
            if seen is None:
                seen = (source, name, aware)
            elif aware != seen[2]:
                kind = "time-zone aware" if aware else "naive"
                raise InputError(
                    f"{kind} timestamps, while {Path(seen[0]).name} column '{seen[1]}' is "
                    f"{'naive' if aware else 'time-zone aware'}: store every table's times "
                    "with a time zone or every table's without",
                    file=source,
                    column=name,
                )


def _check_unique(df: pl.DataFrame, column: Column, source: str) -> None:
    duplicated = pl.col(column.name).is_duplicated()
    _first_bad(df, duplicated, source, column.name, "duplicate values")


def _first_bad(df: pl.DataFrame, bad: pl.Expr, source: str, column: str, what: str) -> None:
    """Raise naming how many rows satisfy `bad` and the first one's 0-based row index (in the
    file: a `_row` column, where present, holds each row's index there)."""
    row = pl.col("_row") if "_row" in df.columns else pl.int_range(pl.len())
    found = df.lazy().select(n=bad.sum(), first=row.filter(bad).first()).collect().row(0)
    n, first = found
    if n:
        raise InputError(f"{n} {what} (first at row index {first})", file=source, column=column)


DEFAULT_STATIC_COLUMNS = ("age", "sex")


def _static_columns(
    df: pl.DataFrame, requested: list[str] | None, source: str
) -> tuple[dict[str, str], list[str]]:
    """Classify the static feature columns as numeric or categorical.

    Only `age` and `sex` are used unless columns are named explicitly: an extra visit column may
    hold an identifier (its values would end up in the tokenizer's bin edges) or something known
    only after the prediction time. Returns (statics, other visit columns left out).
    """
    chosen = (
        [c for c in DEFAULT_STATIC_COLUMNS if c in df.columns] if requested is None else requested
    )
    statics: dict[str, str] = {}
    for name in chosen:
        if name not in df.columns:
            raise InputError("static column not in the visits table", file=source, column=name)
        if name in KEY_COLUMNS:
            raise InputError("a key column cannot be a static feature", file=source, column=name)
        dtype = df.schema[name]
        if dtype.is_numeric():
            statics[name] = "numeric"
            _first_bad(df, pl.col(name).is_infinite(), source, name, "infinite values")
        elif dtype in (pl.String, pl.Categorical, pl.Boolean) or isinstance(dtype, pl.Enum):
            statics[name] = "categorical"
        else:
            raise InputError(
                f"type {dtype} cannot be a static feature (numeric, string, categorical or "
                "boolean only)",
                file=source,
                column=name,
            )
    others = [c for c in df.columns if c not in KEY_COLUMNS and c not in statics]
    return statics, others


def input_fingerprint(files: dict[str, list[Path]], root: Path) -> dict[str, dict]:
    """Size and modification time of each input file, to tell later whether inputs changed."""
    return {
        str(path.relative_to(root)): {
            "bytes": path.stat().st_size,
            "mtime_ns": path.stat().st_mtime_ns,
        }
        for paths in files.values()
        for path in paths
    }
