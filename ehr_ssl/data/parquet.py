"""Parquet files read so that damage shows, and written so that it always can.

A read verifies each page's CRC checksum where the writer stored one, then checks every decoded
column of every row group against the statistics the row group stores (null count, min, max):
damaged bytes that still decode (in an uncompressed block or a dictionary page) mostly land
outside them. Damage that decodes to values inside the stored range is found by checksums only,
which polars, pandas and pyarrow do not write by default; ehr-ssl's own files have them
(`write_parquet`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehr_ssl.errors import InputError

# Page checksums on every Parquet file ehr-ssl writes (pyarrow's writer option).
CHECKSUM_OPTIONS = {"write_page_checksum": True}


def write_parquet(
    frame: pl.DataFrame,
    path: Path,
    *,
    compression: str = "zstd",
    schema: Callable[[pa.Table], pa.Table] | None = None,
) -> None:
    """Write `frame` to `path` with page checksums, so that any later damage to its pages is
    found when it is read (`read_parquet`). `schema` casts the Arrow table first (a MEDS
    schema's `align`: string, not polars's large_string)."""
    table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
    if schema is not None:
        table = schema(table)
    pq.write_table(table, str(path), compression=compression, **CHECKSUM_OPTIONS)


def parquet_writer(path: Path, schema: pa.Schema, *, compression: str = "zstd") -> pq.ParquetWriter:
    """A pyarrow ParquetWriter that writes page checksums (for files written piece by piece)."""
    return pq.ParquetWriter(str(path), schema, compression=compression, **CHECKSUM_OPTIONS)


def parquet_schema(path: Path) -> pa.Schema:
    """The Arrow schema of a Parquet file (its footer only); an unreadable file is an
    InputError naming it."""
    with _unreadable_as_input_error(path):
        return _open(path).schema_arrow


def parquet_rows(path: Path) -> int:
    """The row count of a Parquet file (its footer only)."""
    with _unreadable_as_input_error(path):
        return _open(path).metadata.num_rows


def parquet_columns(path: Path) -> list[str]:
    """The column names of a Parquet file (its footer only)."""
    return list(parquet_schema(path).names)


def read_parquet(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """Read a Parquet file (only `columns`, if given), checked for damage.

    Raises:
        InputError: naming the file (and the column, where known) if it cannot be read, fails a
            page checksum, or decodes to values its statistics rule out.
    """
    with _unreadable_as_input_error(path):
        file = _open(path)
    table = _decode(file, path, columns)
    offset = 0
    for index in range(file.metadata.num_row_groups):
        rows = file.metadata.row_group(index).num_rows
        check_statistics(file.metadata, index, table.slice(offset, rows), path)
        offset += rows
    return _to_polars(table, path)


def read_row_groups(path: Path, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
    """A Parquet file one row group at a time (memory holds one), each checked as in
    `read_parquet`."""
    with _unreadable_as_input_error(path):
        file = _open(path)
    for index in range(file.metadata.num_row_groups):
        table = _decode(file, path, columns, index)
        check_statistics(file.metadata, index, table, path)
        yield _to_polars(table, path)


def _decode(
    file: pq.ParquetFile, path: Path, columns: list[str] | None, row_group: int | None = None
) -> pa.Table:
    """The columns of the whole file, or of one row group; a failure names the column it is in
    where one column alone fails (damage mostly hits one column chunk)."""

    def read(names: list[str] | None) -> pa.Table:
        if row_group is None:
            return file.read(columns=names, use_threads=True)
        return file.read_row_group(row_group, columns=names, use_threads=True)

    try:
        with _unreadable_as_input_error(path):
            return read(columns)
    except InputError as error:
        for name in columns if columns is not None else file.schema_arrow.names:
            try:
                read([name])
            except Exception:
                raise InputError(error.problem, file=error.file, column=name) from None
        raise


def check_statistics(metadata: pq.FileMetaData, index: int, table: pa.Table, path: Path) -> None:
    """Each column of row group `index`, decoded as `table`, must have the null count and lie
    within the min and max its stored statistics give (where the file has them).

    Only comparisons that hold for any correct writer are made: min and max of integers,
    floats, timestamps and dates read in their stored unit, and strings (a truncated string
    bound still brackets the values).
    """
    row_group = metadata.row_group(index)
    leaves = {row_group.column(i).path_in_schema: i for i in range(row_group.num_columns)}
    for name in table.column_names:
        if name not in leaves:  # a nested column: not checked
            continue
        stats = row_group.column(leaves[name]).statistics
        if stats is None:
            continue
        values = table.column(name)
        if stats.has_null_count and values.null_count != stats.null_count:
            found = f"{values.null_count} nulls where its statistics say {stats.null_count}"
            raise _damaged(path, name, index, found)
        if stats.has_min_max and not _within(values, stats):
            raise _damaged(path, name, index, "values outside its stored min and max")


def _within(values: pa.ChunkedArray, stats: pq.Statistics) -> bool:
    """Whether the decoded values lie within the stored min and max (True when the type
    allows no comparison that is safe for every writer)."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        low, high = stats.min, stats.max  # logical values: unsigned integers read right
    elif _same_stored_integers(kind, stats):
        values = values.cast(pa.int64() if stats.physical_type == "INT64" else pa.int32())
        low, high = stats.min_raw, stats.max_raw
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or kind == pa.string_view():
        values = values.cast(pa.large_binary())  # Parquet orders strings as unsigned bytes
        low, high = stats.min_raw, stats.max_raw
    else:
        return True
    found = pc.min_max(values)
    found_low, found_high = found["min"].as_py(), found["max"].as_py()
    if found_low is None:  # all null (or all NaN)
        return True
    # Comparisons with a NaN bound are False: old writers that stored NaN are never refused.
    return not (found_low < low or found_high > high)


def _same_stored_integers(kind: pa.DataType, stats: pq.Statistics) -> bool:
    """Whether a timestamp or date column is read as the integers it is stored as (not when a
    reader converts the unit, as for seconds stored as milliseconds, or date64)."""
    if pa.types.is_date32(kind):
        return stats.physical_type == "INT32"
    if not pa.types.is_timestamp(kind) or stats.physical_type != "INT64":
        return False
    logical = json.loads(stats.logical_type.to_json()) if stats.logical_type else {}
    return _PARQUET_UNITS.get(logical.get("timeUnit")) == kind.unit


_PARQUET_UNITS = {"milliseconds": "ms", "microseconds": "us", "nanoseconds": "ns"}


def _damaged(path: Path, column: str, row_group: int, found: str) -> InputError:
    return InputError(
        f"damaged Parquet file: row group {row_group} decodes to {found}",
        file=str(path),
        column=column,
    )


def _open(path: Path) -> pq.ParquetFile:
    # Checksums are verified for the pages that have one; others are read as before.
    file = pq.ParquetFile(str(path), page_checksum_verification=True)
    names = file.schema_arrow.names
    for name in names:  # Parquet allows a name twice; which one a reader takes is arbitrary
        if names.count(name) > 1:
            raise InputError(f"appears {names.count(name)} times", file=str(path), column=name)
    return file


@contextmanager
def _unreadable_as_input_error(path: Path) -> Iterator[None]:
    """Turn any failure of pyarrow to open or decode `path` into one InputError naming it: a
    damaged file raises many types (OSError for a failed checksum, ArrowInvalid, ...)."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:
        damaged = "checksum" in str(e).lower()
        problem = "damaged Parquet file" if damaged else "not a readable Parquet file"
        raise InputError(f"{problem} ({_first_line(e)})", file=str(path)) from None


def _to_polars(table: pa.Table, path: Path) -> pl.DataFrame:
    try:
        return pl.from_arrow(table)
    except Exception as e:  # a type polars cannot hold
        raise InputError(
            f"column types polars cannot read ({_first_line(e)})", file=str(path)
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line[:200]
