"""Patient partitions: a dataset's events spilled to chunk files by a hash of patient_id, so that
every patient's visits and events meet in one chunk and a stage can stream chunk by chunk.

The events files are read one row group at a time, in batches, and checked as they go
(`readers.checked_events`), so memory holds one row group, not the events table. A chunk file
holds the normalized columns (patient_id, time, code, numeric_value) of the events of its
patients, in no particular order.
Events of patients without a visit land in a chunk too, where no visit reads them (as in memory).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ehr_ssl.artifacts import write_failure
from ehr_ssl.config import DataConfig
from ehr_ssl.data.parquet import parquet_writer, read_parquet
from ehr_ssl.data.readers import checked_events

CHUNK_COLUMN = "_chunk"
READ_BATCH_ROWS = 1_000_000  # events rows per record batch read from a file


def chunk_of(patient_id: pl.Expr, n_chunks: int) -> pl.Expr:
    """The chunk (Int32 in [0, n_chunks)) of each patient, as the column CHUNK_COLUMN.

    A hash of the id, stable within one process, which is all one run needs: the chunks only
    bound memory, they never change a result.
    """
    return (patient_id.hash(seed=0) % n_chunks).cast(pl.Int32).alias(CHUNK_COLUMN)


def chunk_path(work: Path, chunk: int) -> Path:
    return Path(work) / f"chunk-{chunk:05d}.parquet"


def partition_events(
    files: list[Path],
    *,
    n_chunks: int,
    id_type: pl.DataType,
    times: list,
    config: DataConfig,
    source: str,
    work: Path,
    batch_rows: int = READ_BATCH_ROWS,
) -> int:
    """Check every events file batch by batch and append each patient's events to the file of
    their chunk (`chunk_of`) in `work` (see `chunk_path`).

    Args:
        files: The events files (`readers.table_files`).
        n_chunks: The number of chunks.
        id_type: The visits' patient_id type, which the events must share.
        times: The visits' timestamp columns, for the time zone check (`readers.read_visits`).
        config: How the events are read.
        source: The visits file's name, for the patient_id type error.
        work: The directory the chunk files are written to.
        batch_rows: Rows per record batch (the memory bound of this pass).

    Returns:
        The events rows read.

    Raises:
        InputError: On bad input in any file; the chunk files are then incomplete.
    """
    writers: dict[int, pq.ParquetWriter] = {}
    rows = 0
    try:
        for events in checked_events(
            files,
            config=config,
            times=times,
            id_type=id_type,
            id_source=source,
            batch_rows=batch_rows,
        ):
            rows += events.height
            events = events.with_columns(chunk_of(pl.col("patient_id"), n_chunks))
            parts = events.partition_by(CHUNK_COLUMN, as_dict=True, include_key=False)
            for (chunk,), part in parts.items():
                _append(writers, work, chunk, part.to_arrow(compat_level=pl.CompatLevel.oldest()))
    finally:
        for chunk, writer in writers.items():
            try:
                writer.close()  # writes the last row group
            except (OSError, pa.ArrowException) as e:
                raise write_failure(chunk_path(work, chunk), e) from e
    return rows


def _append(writers: dict[int, pq.ParquetWriter], work: Path, chunk: int, table: pa.Table) -> None:
    """Append `table` to the file of `chunk`, opening its writer on first use. A failed write (a
    full disk, in pyarrow's words) raises an OSError naming the file."""
    path = chunk_path(work, chunk)
    try:
        if chunk not in writers:
            # lz4: writes twice as fast as snappy, and the files are read back twice
            writers[chunk] = parquet_writer(path, table.schema, compression="lz4")
        writers[chunk].write_table(table)
    except (OSError, pa.ArrowException) as e:
        raise write_failure(path, e) from e


def read_chunk_events(work: Path, chunk: int, id_type: pl.DataType) -> pl.DataFrame:
    """The events of one chunk's patients, as `partition_events` wrote them (an empty frame for
    a chunk whose patients have no events). Checked, as every read: a work file damaged on
    disk is an error, never silently different events."""
    path = chunk_path(work, chunk)
    if path.exists():
        return read_parquet(path)
    return pl.DataFrame(
        schema={
            "patient_id": id_type,
            "time": pl.Datetime("us"),
            "code": pl.String,
            "numeric_value": pl.Float64,
        }
    )
