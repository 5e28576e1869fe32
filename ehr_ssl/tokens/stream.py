"""The tokenize stage in chunks of patients, for datasets larger than memory.

The events are partitioned by a hash of patient_id into chunk files (`ehr_ssl.data.partitions`),
then read chunk by chunk twice. Pass A builds each chunk's event windows and keeps what fitting
needs: the distinct training patients per code (exact once summed, since a patient is in one
chunk) and the numeric values training visits read, spilled to bucket files by a hash of the code
so that each code's quantiles are computed later from one bucket in memory. Pass B encodes each
chunk with the fitted tokenizer. The tokenizer and every visit's tokens are those of the
in-memory stage (`tokenize_dataset` with one chunk): only the order of the visits differs.
Peak memory is about one chunk's events and tokens and the visits table.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ehr_ssl.artifacts import write_failure
from ehr_ssl.atomic import make_temporary_dir, renamed_error
from ehr_ssl.config import DataConfig, TokenizerConfig
from ehr_ssl.data.parquet import parquet_writer, read_parquet
from ehr_ssl.data.partitions import chunk_of, partition_events, read_chunk_events
from ehr_ssl.data.windows import EventWindows, build_windows
from ehr_ssl.tokens.backoff import rare_code_pairs, with_backoff_classes
from ehr_ssl.tokens.tokenizer import (
    Tokenizer,
    event_budget,
    fit_bin_edges,
    fit_rows,
    fit_vocabulary,
    patient_counts,
)
from ehr_ssl.tokens.vocab import SPECIAL_TOKENS

log = logging.getLogger("ehr_ssl")

VALUE_BUCKETS = 64  # spill files of numeric values; the fit holds one at a time


@dataclass
class EventChunks:
    """A dataset's events partitioned by patient into the chunk files of a work directory."""

    work: Path
    chunk: np.ndarray  # Shape: (V,) int32, the chunk of each visit
    n_chunks: int
    id_type: pl.DataType

    def visits_in(self, chunk: int) -> pl.Series:
        """Shape (V,) bool: the visits of `chunk`'s patients."""
        return pl.Series(self.chunk == chunk)

    def events(self, chunk: int) -> pl.DataFrame:
        """The checked events of `chunk`'s patients."""
        return read_chunk_events(self.work, chunk, self.id_type)


@contextlib.contextmanager
def partitioned_events(
    files: list[Path],
    visits: pl.DataFrame,
    *,
    n_chunks: int,
    times: list,
    config: DataConfig,
    source: str,
    beside: Path,
) -> Iterator[EventChunks]:
    """Check the events files and partition them by patient into `n_chunks` chunks, in a work
    directory beside the output `beside` (`.<name>.work-<pid>-*`, see `ehr_ssl.atomic`) that is
    removed on exit, whether the block succeeds or not.

    Raises InputError on bad input (`partition_events`), and an OSError naming `beside` when
    the work cannot be written (a full disk).
    """
    started = time.perf_counter()
    chunk = visits.select(chunk_of(pl.col("patient_id"), n_chunks)).to_series()
    work = make_temporary_dir(Path(beside), "work")
    try:
        rows = partition_events(
            files,
            n_chunks=n_chunks,
            id_type=visits.schema["patient_id"],
            times=times,
            config=config,
            source=source,
            work=work,
        )
        log.info(
            "tokenize: %d event rows of %d visits partitioned into %d chunks (%.1f s)",
            rows,
            visits.height,
            n_chunks,
            time.perf_counter() - started,
        )
        yield EventChunks(work, chunk.to_numpy(), n_chunks, visits.schema["patient_id"])
    except OSError as e:
        renamed = renamed_error(e, work, Path(beside), counterpart=False)
        if renamed is e:
            raise
        raise renamed from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fit_chunks(
    visits: pl.DataFrame,
    chunks: EventChunks,
    *,
    fit_mask: np.ndarray,
    static_columns: dict[str, str],
    config: TokenizerConfig,
    data_config: DataConfig,
) -> Tokenizer:
    """Pass A: `tokenizer.fit_tokenizer` over all chunks, holding one chunk at a time.

    Shape: visits (V rows), fit_mask (V,) bool (the training visits), aligned with
    `chunks.chunk`.
    """
    rare_below = config.min_count if config.rare_codes == "ancestor" else None
    statistics = FitStatistics(chunks.work / "values", rare_below=rare_below)
    for chunk in range(chunks.n_chunks):
        started = time.perf_counter()
        in_chunk = chunks.visits_in(chunk)
        part = visits.filter(in_chunk)
        if part.height == 0:
            continue
        windows = _windows(part, chunks, chunk, config, len(static_columns))
        mask = fit_mask[in_chunk.to_numpy()]
        rows = fit_rows(part, windows, fit_mask=mask, static_columns=static_columns)
        del windows  # before the spill's copies: the chunk's sorted events are the bulk
        statistics.add(rows)
        del rows
        log.info(
            "tokenize: fitting, chunk %d/%d (%d visits, %.1f s)",
            chunk + 1,
            chunks.n_chunks,
            part.height,
            time.perf_counter() - started,
        )
    return statistics.tokenizer(static_columns, config, data_config)


def encode_chunks(
    visits: pl.DataFrame, split: pl.Series, chunks: EventChunks, tokenizer: Tokenizer
) -> Iterator[pl.DataFrame]:
    """Pass B: each chunk's visits encoded (`Tokenizer.encode` columns and `split`).

    Shape: visits (V rows) and split (V,) aligned with `chunks.chunk`.
    """
    for chunk in range(chunks.n_chunks):
        started = time.perf_counter()
        in_chunk = chunks.visits_in(chunk)
        part = visits.filter(in_chunk)
        if part.height == 0:
            continue
        windows = _windows(part, chunks, chunk, tokenizer.config, len(tokenizer.static_columns))
        tokens = tokenizer.encode_windows(part, windows).with_columns(split.filter(in_chunk))
        del windows
        log.info(
            "tokenize: encoding, chunk %d/%d (%d visits, %.1f s)",
            chunk + 1,
            chunks.n_chunks,
            part.height,
            time.perf_counter() - started,
        )
        yield tokens
        del tokens  # before the next chunk is encoded, once the caller is done with it


def _windows(
    part: pl.DataFrame, chunks: EventChunks, chunk: int, config: TokenizerConfig, n_static: int
) -> EventWindows:
    """The event windows of one chunk's visits `part`. The chunk's events are read here, so that
    the unsorted frame is freed once build_windows returns its sorted copy (a caller holding it
    would keep both while encoding: 1.7 GB more at 1M visits)."""
    return build_windows(
        part,
        chunks.events(chunk),
        lookback_days=config.lookback_days,
        max_events=event_budget(config, n_static),
    )


class FitStatistics:
    """What fitting needs, accumulated chunk by chunk from `fit_rows` of disjoint patients:
    per-code patient counts in memory (a row per code and chunk), the numeric values on disk,
    in VALUE_BUCKETS files by a hash of the code so that a code's values are all in one, and,
    when rare codes back off (`rare_below` = min_count), the patient-code pairs of the codes
    rare within a chunk: a code rare over all chunks is rare in each, so they hold its pairs."""

    def __init__(
        self, work: Path, n_buckets: int = VALUE_BUCKETS, rare_below: int | None = None
    ) -> None:
        self.work, self.n_buckets, self.rare_below = Path(work), n_buckets, rare_below
        self.work.mkdir(parents=True, exist_ok=True)
        self._counts: list[pl.DataFrame] = []
        self._rare_pairs: list[pl.DataFrame] = []
        self._writers: dict[int, pq.ParquetWriter] = {}

    def add(self, rows: pl.DataFrame) -> None:
        """Take one chunk's `fit_rows` (patient_id, code, numeric_value)."""
        self._counts.append(patient_counts(rows))
        if self.rare_below is not None:
            self._rare_pairs.append(rare_code_pairs(rows, self.rare_below))
        values = rows.filter(pl.col("numeric_value").is_not_null()).select(
            "code",
            "numeric_value",
            (pl.col("code").hash(seed=0) % self.n_buckets).cast(pl.Int32).alias("_bucket"),
        )
        parts = values.partition_by("_bucket", as_dict=True, include_key=False)
        for (bucket,), part in parts.items():
            table = part.to_arrow(compat_level=pl.CompatLevel.oldest())
            try:
                if bucket not in self._writers:
                    self._writers[bucket] = parquet_writer(self._path(bucket), table.schema)
                self._writers[bucket].write_table(table)
            except (OSError, pa.ArrowException) as e:  # a full disk, in pyarrow's words
                raise write_failure(self._path(bucket), e) from e

    def _path(self, bucket: int) -> Path:
        return self.work / f"bucket-{bucket:03d}.parquet"

    def tokenizer(
        self, static_columns: dict[str, str], config: TokenizerConfig, data_config: DataConfig
    ) -> Tokenizer:
        """The tokenizer `fit_tokenizer` would fit on all the rows taken."""
        for bucket, writer in self._writers.items():
            try:
                writer.close()  # writes the last row group
            except (OSError, pa.ArrowException) as e:
                raise write_failure(self._path(bucket), e) from e
        counts = pl.concat(self._counts).group_by("code").agg(pl.col("patients").sum())
        if self.rare_below is not None:
            counts = with_backoff_classes(counts, pl.concat(self._rare_pairs), self.rare_below)
        vocab = fit_vocabulary(counts, config)
        codes = vocab[len(SPECIAL_TOKENS) :]
        bin_edges: dict[str, list[float]] = {}
        for bucket in sorted(self._writers):
            values = read_parquet(self._path(bucket))
            bin_edges.update(fit_bin_edges(values, codes, config.n_bins))
        return Tokenizer(
            vocab, dict(sorted(bin_edges.items())), dict(static_columns), config, data_config
        )
