"""Readers: find a dataset's Parquet tables, check them against the contract once, at the boundary,
and return normalized polars frames. Every stage reads data through here.

Normalized form: ids are Int64 or String (the same type in every table), times Datetime("us")
naive UTC, numeric_value Float64 (NaN read as null), labels Boolean. Every problem raises
`InputError` naming the file, the column and the problem, never an identifier value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import polars as pl

from ehr_ssl.config import DataConfig
from ehr_ssl.data.schema import EVENTS, LABELS, VISITS, Column, Table
from ehr_ssl.errors import InputError

KEY_COLUMNS = ("visit_id", "patient_id", "arrival_time", "prediction_time")


@dataclass
class Dataset:
    """A checked dataset. `static_columns` maps each static feature to "numeric" or
    "categorical"; `ignored_columns` lists visit columns of unusable types."""

    root: Path
    visits: pl.DataFrame
    events: pl.DataFrame
    labels: pl.DataFrame | None
    static_columns: dict[str, str]
    ignored_columns: list[str]
    files: dict[str, list[Path]]


def table_files(root: Path, table: Table) -> list[Path]:
    """The Parquet file(s) of `table` in dataset directory `root` (raises if there are none)."""
    single = root / table.filename
    shard_dir = root / table.name
    if table.sharded and shard_dir.is_dir():
        if single.exists():
            raise InputError(
                f"both {table.filename} and {table.name}/ exist; keep one", file=str(root)
            )
        shards = sorted(shard_dir.glob("*.parquet"))
        if not shards:
            raise InputError("directory has no *.parquet files", file=str(shard_dir))
        return shards
    if not single.is_file():
        raise InputError("file not found", file=str(single))
    return [single]


def read_parquet(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """Read a Parquet file, turning any decoding failure into an InputError naming the file."""
    try:
        return pl.read_parquet(path, columns=columns)
    except Exception as e:  # polars/arrow raise many types for corrupt files
        raise InputError(
            f"not a readable Parquet file ({_first_line(e)})", file=str(path)
        ) from None


def parquet_columns(path: Path) -> list[str]:
    try:
        return list(pl.read_parquet_schema(path))
    except Exception as e:
        raise InputError(
            f"not a readable Parquet file ({_first_line(e)})", file=str(path)
        ) from None


def read_dataset(root: Path, config: DataConfig) -> Dataset:
    """Read and check visits, events (one file or shards) and labels (optional) under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("dataset directory not found", file=str(root))
    files = {"visits": table_files(root, VISITS), "events": table_files(root, EVENTS)}
    (visits_path,) = files["visits"]
    visits, static_columns, ignored = check_visits(
        read_parquet(visits_path), config=config, source=str(visits_path)
    )
    id_type = visits.schema["patient_id"]

    wanted = {c.name for c in EVENTS.columns} | {a for c in EVENTS.columns for a in c.aliases}
    shards = []
    for path in files["events"]:
        present = [c for c in parquet_columns(path) if c in wanted]
        shard = check_events(read_parquet(path, present), config=config, source=str(path))
        if shard.schema["patient_id"] != id_type:
            raise InputError(
                f"type {shard.schema['patient_id']} differs from {visits_path.name} "
                f"patient_id type {id_type}",
                file=str(path),
                column="patient_id",
            )
        shards.append(shard)
    events = pl.concat(shards, rechunk=True) if len(shards) > 1 else shards[0]

    labels = None
    labels_path = root / LABELS.filename
    if labels_path.exists():
        files["labels"] = [labels_path]
        labels = check_labels(read_parquet(labels_path), source=str(labels_path))
        check_labels_match_visits(labels, visits, source=str(labels_path))
    return Dataset(root, visits, events, labels, static_columns, ignored, files)


def check_visits(
    df: pl.DataFrame, *, config: DataConfig, source: str = "visits"
) -> tuple[pl.DataFrame, dict[str, str], list[str]]:
    """Check and normalize a visits table; returns (visits, static columns, ignored columns)."""
    df = _normalize(df, VISITS, source)
    if "prediction_time" not in df.columns:
        offset = timedelta(minutes=config.prediction_offset_minutes)
        df = df.with_columns(prediction_time=pl.col("arrival_time") + offset)
    _check_unique(df, VISITS.column("visit_id"), source)
    _first_bad(
        df,
        pl.col("prediction_time") < pl.col("arrival_time"),
        source,
        "prediction_time",
        "before arrival_time",
    )
    static_columns, ignored = _static_columns(df, config.static_columns, source)
    df = df.select(*KEY_COLUMNS, *static_columns)
    return df, static_columns, ignored


def check_events(df: pl.DataFrame, *, config: DataConfig, source: str = "events") -> pl.DataFrame:
    """Check and normalize an events table to patient_id, time, code, numeric_value."""
    if config.drop_null_time_events and "time" in df.columns:
        df = df.filter(pl.col("time").is_not_null())
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


def _normalize(df: pl.DataFrame, table: Table, source: str) -> pl.DataFrame:
    """Rename aliases, check presence and types, cast the contract's columns to normal form."""
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
    return df


def _cast(df: pl.DataFrame, column: Column, source: str) -> pl.Expr:
    dtype = df.schema[column.name]
    col = pl.col(column.name)
    if column.kind == "id":
        if dtype.is_integer():
            return col.cast(pl.Int64)
        if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
            return col.cast(pl.String)
        expected = "string or integer ids"
    elif column.kind == "timestamp":
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone is not None:
                col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
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


def _check_unique(df: pl.DataFrame, column: Column, source: str) -> None:
    duplicated = pl.col(column.name).is_duplicated()
    _first_bad(df, duplicated, source, column.name, "duplicate values")


def _first_bad(df: pl.DataFrame, bad: pl.Expr, source: str, column: str, what: str) -> None:
    """Raise naming how many rows satisfy `bad` and the first one's 0-based row index."""
    found = df.lazy().select(n=bad.sum(), first=bad.arg_true().first()).collect().row(0)
    n, first = found
    if n:
        raise InputError(f"{n} {what} (first at row index {first})", file=source, column=column)


def _static_columns(
    df: pl.DataFrame, requested: list[str] | None, source: str
) -> tuple[dict[str, str], list[str]]:
    """Classify extra visit columns as numeric or categorical static features."""
    known = {c.name for c in VISITS.columns} - {"age", "sex"}
    candidates = [c for c in df.columns if c not in known]
    statics: dict[str, str] = {}
    ignored: list[str] = []
    for name in candidates if requested is None else requested:
        if name not in df.columns:
            raise InputError("static column not in the visits table", file=source, column=name)
        if name in KEY_COLUMNS:
            raise InputError("a key column cannot be a static feature", file=source, column=name)
        dtype = df.schema[name]
        if dtype.is_numeric():
            statics[name] = "numeric"
        elif dtype in (pl.String, pl.Categorical, pl.Boolean) or isinstance(dtype, pl.Enum):
            statics[name] = "categorical"
        elif requested is None:
            ignored.append(name)
        else:
            raise InputError(
                f"type {dtype} cannot be a static feature (numeric, string, categorical or "
                "boolean only)",
                file=source,
                column=name,
            )
    return statics, ignored


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line[:200]
