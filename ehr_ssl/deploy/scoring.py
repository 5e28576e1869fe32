"""Batch scoring of a dataset directory with a bundle (`ehr-ssl predict` / `ehr-ssl embed`),
streamed in chunks of patients so memory stays bounded however large the input.

Two passes: (1) the events files are read in record batches, checked, and written to temporary
per-chunk files by a hash of patient_id, so every patient's events land in one chunk; (2) each
chunk's visits and events are tokenized with the bundle's tokenizer and scored, and the rows are
appended to the output. Peak memory is about one chunk's events and tokens, not the dataset's.
The chunk files and the output are written beside the output, under hidden temporary names
(`ehr_ssl.atomic`): removed when the command ends, or by the next one to the same output if it
was killed. The output is renamed into place when complete. Rows come chunk by chunk
(input order within a chunk): join on visit_id.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ehr_ssl.artifacts import write_failure
from ehr_ssl.atomic import atomic_file, make_temporary_dir, renamed_error
from ehr_ssl.config import PREDICTION_FORMATS, SCORING_CHUNK_VISITS, DataConfig
from ehr_ssl.data.parquet import parquet_writer
from ehr_ssl.data.partitions import (
    CHUNK_COLUMN,
    chunk_of,
    partition_events,
    read_chunk_events,
)
from ehr_ssl.data.readers import read_labels, read_visits, table_files
from ehr_ssl.data.schema import EVENTS, VISITS
from ehr_ssl.deploy.bundle import SCORING_BATCH_SIZE, AdmissionModel
from ehr_ssl.errors import InputError
from ehr_ssl.evaluation.predictions import MEDS_PREDICTION_SCHEMA, meds_keys, meds_predictions
from ehr_ssl.outputs import check_outside_inputs, output_lock
from ehr_ssl.tokens.vocab import UNK_ID

log = logging.getLogger("ehr_ssl")

OUTPUTS = ("predict", "embed")
# The schema metadata key that marks a file `predict` or `embed` wrote (its value: which), so
# that a rerun replaces its own output and never a file of the user's.
OUTPUT_KEY = b"ehr_ssl.output"
# The columns of the outputs written before the mark: predict, embed, MEDS with and without
# boolean_value.
_MEDS = tuple(MEDS_PREDICTION_SCHEMA)
UNMARKED_OUTPUT_COLUMNS = {("visit_id", "score"), ("visit_id", "embedding"), _MEDS,
                           tuple(c for c in _MEDS if c != "boolean_value")}  # fmt: skip


def score_dataset(
    model: AdmissionModel,
    data_dir: Path,
    out_path: Path,
    *,
    output: str = "predict",
    output_format: str = "ehr-ssl",
    threshold: float | None = None,
    chunk_visits: int = SCORING_CHUNK_VISITS,
    batch_size: int = SCORING_BATCH_SIZE,
    progress: bool | None = None,
    data_config: DataConfig | None = None,
    overwrite: bool = False,
) -> dict:
    """Score (or embed) every visit of the dataset at `data_dir` into one Parquet file.

    Args:
        model: A loaded bundle.
        data_dir: A dataset directory (visits, events; labels, if any, are not read).
        out_path: The output Parquet file: `visit_id`, then `score` (float64) or `embedding`
            (fixed-size list of the bundle's `embedding_dim` float32); or, for "meds", the MEDS
            prediction schema (`ehr_ssl.evaluation.predictions.MEDS_PREDICTION_SCHEMA`).
        output: "predict" or "embed".
        output_format: "ehr-ssl" or "meds" (predict only; the dataset's labels become
            boolean_value when every visit has one).
        threshold: "meds": predicted_boolean_value is score >= threshold (null without one).
        chunk_visits: About how many visits are tokenized and scored at once (memory bound).
        progress: A progress bar (default: when stderr is a terminal); else log lines.
        data_config: How to read the data (default: the bundle's tokenizer's input settings;
            a MEDS root's from `ehr_ssl.data.meds_input.contract_data`).
        overwrite: Replace `out_path` whatever it is (else only an earlier predict or embed
            output is replaced).

    Returns:
        Counts: visits, chunks, event rows read, unknown-code share, seconds. No identifiers.
    """
    data_dir, out_path = _check_inputs(data_dir, out_path, output, chunk_visits, overwrite)
    _check_format(output, output_format, threshold)
    started = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    with output_lock(out_path):  # and the temporaries of a killed run removed
        data_config = data_config or model.tokenizer.input_config()
        dataset = _read_dataset(model, data_dir, chunk_visits, data_config,
                                meds=output_format == "meds")  # fmt: skip
        work = make_temporary_dir(out_path, "chunks")
        try:
            n_events = _partition_events(model, dataset, work, output)
            unknown, tokens_read = _score_chunks(
                model,
                dataset,
                work,
                out_path,
                output=output,
                batch_size=batch_size,
                show=show,
                threshold=threshold,
            )
        except OSError as e:  # a work file that cannot be written: name the output it serves
            renamed = renamed_error(e, work, out_path, counterpart=False)
            if renamed is e:
                raise
            raise renamed from e
        finally:
            shutil.rmtree(work, ignore_errors=True)
    summary = {
        "visits": dataset.visits.height,
        "chunks": dataset.n_chunks,
        "event_rows": n_events,
        "unknown_token_share": unknown / max(tokens_read, 1),
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info(
        "%s: %d visits -> %s in %.1f s (%.2f%% of tokens unknown codes)",
        output,
        summary["visits"],
        out_path,
        summary["seconds"],
        100 * summary["unknown_token_share"],
    )
    return summary


@dataclass
class _Dataset:
    """The dataset to score: its visits, each with its chunk, and the files they came from."""

    visits: pl.DataFrame  # the visits table plus CHUNK_COLUMN
    visits_path: Path
    event_files: list[Path]
    times: list[tuple[str, pl.DataFrame]]  # timestamp columns, for the time zone check
    n_chunks: int
    data_config: DataConfig  # how its files are read
    meds_keys: pl.DataFrame | None = None  # MEDS output: visit_id -> subject, time (, label)


def _check_inputs(
    data_dir: Path, out_path: Path, output: str, chunk_visits: int, overwrite: bool
) -> tuple[Path, Path]:
    """The dataset directory and output file as paths, after checking the arguments."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if chunk_visits < 1:
        raise InputError(f"must be >= 1, got {chunk_visits}", setting="chunk_visits")
    data_dir, out_path = Path(data_dir), Path(out_path)
    if not data_dir.is_dir():
        raise InputError("dataset directory not found", file=str(data_dir))
    check_output_file(out_path, {"--data": data_dir}, overwrite=overwrite)
    return data_dir, out_path


def _check_format(output: str, output_format: str, threshold: float | None) -> None:
    if threshold is not None and output_format != "meds":
        raise InputError(
            "applies to --format meds only (the ehr-ssl format holds scores, no decision)",
            setting="threshold",
        )
    if output_format not in PREDICTION_FORMATS:
        raise InputError(f"must be one of {', '.join(PREDICTION_FORMATS)}", setting="format")
    if output_format == "meds" and output != "predict":
        raise InputError(
            "the MEDS prediction schema holds predictions: predict only", setting="format"
        )
    if threshold is not None and not 0 <= threshold <= 1:
        raise InputError(f"must be in [0, 1], got {threshold}", setting="threshold")


def check_output_file(
    out_path: Path, inputs: dict[str, Path | None], *, overwrite: bool = False
) -> None:
    """The output file of `predict`/`embed`: not a directory, at, inside or above none of
    `inputs` ({flag: path}), and new or an earlier `predict`/`embed` output (any file with
    `overwrite`). Raises InputError naming it."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise InputError("is a directory, expected an output file path", file=str(out_path))
    check_outside_inputs(out_path, inputs)
    if out_path.exists() and not overwrite and not is_scoring_output(out_path):
        raise InputError(
            "exists and is neither marked nor shaped as a predict or embed output (your own "
            "file?): not replaced (use --overwrite)",
            file=str(out_path),
        )


def is_scoring_output(path: Path) -> bool:
    """Whether `path` is a Parquet file `predict` or `embed` wrote: its schema's mark, or,
    written before the mark existed, exactly the columns of one of their outputs."""
    try:
        schema = pq.read_schema(path)
    except Exception:  # not Parquet, damaged, unreadable: not ours
        return False
    if (schema.metadata or {}).get(OUTPUT_KEY, b"").decode(errors="replace") in OUTPUTS:
        return True
    return tuple(schema.names) in UNMARKED_OUTPUT_COLUMNS


def _read_dataset(
    model: AdmissionModel,
    data_dir: Path,
    chunk_visits: int,
    data_config: DataConfig,
    *,
    meds: bool = False,
) -> _Dataset:
    """Read and check the visits table, find the events files, and give each visit its chunk (a
    hash of patient_id, so a patient's visits share one); for MEDS output, each visit's keys."""
    tokenizer = model.tokenizer
    (visits_path,) = table_files(data_dir, VISITS)
    event_files = table_files(data_dir, EVENTS)
    visits, static_columns, _, times = read_visits(visits_path, data_config)
    tokenizer.check_static_columns(static_columns, str(visits_path))
    n_chunks = max(1, math.ceil(visits.height / chunk_visits))
    keys = None
    if meds:  # the labels, if any, are read only for MEDS output's boolean_value
        keys = meds_keys(visits, read_labels(data_dir, visits), str(visits_path))
    visits = visits.with_columns(chunk_of(pl.col("patient_id"), n_chunks))
    return _Dataset(visits, visits_path, event_files, times, n_chunks, data_config, keys)


def _partition_events(model: AdmissionModel, dataset: _Dataset, work: Path, output: str) -> int:
    """Pass 1: check the events and write them to per-chunk files in `work`; the rows read."""
    n_events = partition_events(
        dataset.event_files,
        n_chunks=dataset.n_chunks,
        id_type=dataset.visits.schema["patient_id"],
        times=dataset.times,
        config=dataset.data_config,
        source=dataset.visits_path.name,
        work=work,
    )
    log.info(
        "%s: %d visits, %d event rows in %d chunk(s)",
        output,
        dataset.visits.height,
        n_events,
        dataset.n_chunks,
    )
    return n_events


def _score_chunks(
    model: AdmissionModel,
    dataset: _Dataset,
    work: Path,
    out_path: Path,
    *,
    output: str,
    batch_size: int,
    show: bool,
    threshold: float | None = None,
) -> tuple[int, int]:
    """Pass 2: tokenize and score chunk by chunk, appending to `out_path` (written atomically).
    Returns the number of unknown-code tokens and of all tokens read."""
    unknown = tokens_read = 0
    with atomic_file(out_path) as tmp:
        writer = None
        bar = tqdm(total=dataset.visits.height, unit="visit", desc=output, disable=not show)
        for chunk in range(dataset.n_chunks):
            tokens = _chunk_tokens(model, dataset, work, chunk)
            if tokens is None:
                continue
            ids = tokens["input_ids"].explode()
            unknown += int((ids == UNK_ID).sum())
            tokens_read += ids.len()
            table = _output_table(model, tokens, output, batch_size)
            if dataset.meds_keys is not None:
                table = _meds_table(table, dataset.meds_keys, threshold)
            writer = _write_rows(writer, table, tmp, out_path, output)
            bar.update(tokens.height)
            if not show:
                log.info(
                    "%s: chunk %d/%d done (%d visits)",
                    output,
                    chunk + 1,
                    dataset.n_chunks,
                    tokens.height,
                )
        bar.close()
        if writer is None:  # pragma: no cover - visits tables are never empty
            raise InputError("no visits to score", file=str(dataset.visits_path))
        try:
            writer.close()  # writes the last row group and the footer
        except (OSError, pa.ArrowException) as e:
            raise write_failure(out_path, e) from e
    return unknown, tokens_read


def _write_rows(
    writer: pq.ParquetWriter | None, table: pa.Table, tmp: Path, out_path: Path, output: str
) -> pq.ParquetWriter:
    """Append one chunk's rows to the temporary output `tmp` (opening the writer on the first,
    its schema marked as `output`'s: `is_scoring_output`); a failed write (a full disk, in
    pyarrow's words) raises an OSError naming `out_path`."""
    try:
        if writer is None:
            schema = table.schema.with_metadata({OUTPUT_KEY: output.encode()})
            writer = parquet_writer(tmp, schema)
        writer.write_table(table)
    except (OSError, pa.ArrowException) as e:
        raise write_failure(out_path, e) from e
    return writer


def _chunk_tokens(
    model: AdmissionModel, dataset: _Dataset, work: Path, chunk: int
) -> pl.DataFrame | None:
    """One chunk's visits tokenized with their events; None for a chunk without visits."""
    visits = dataset.visits
    visits_in_chunk = visits.filter(pl.col(CHUNK_COLUMN) == chunk).drop(CHUNK_COLUMN)
    if visits_in_chunk.height == 0:
        return None
    events = read_chunk_events(work, chunk, visits.schema["patient_id"])
    return model.tokenizer.encode_checked(visits_in_chunk, events)


def _meds_table(table: pa.Table, keys: pl.DataFrame, threshold: float | None) -> pa.Table:
    """One chunk's scores (visit_id, score) as MEDS prediction rows."""
    rows = meds_predictions(pl.from_arrow(table), keys, threshold)
    return rows.to_arrow(compat_level=pl.CompatLevel.oldest())


def _output_table(model: AdmissionModel, tokens: pl.DataFrame, output: str, batch_size: int):
    """One chunk's output rows as an Arrow table."""
    pooled = model.embed_tokens(tokens, batch_size)
    ids = tokens["visit_id"].to_arrow(compat_level=pl.CompatLevel.oldest())
    if output == "predict":
        scores = model.score_pooled(pooled)
        return pa.table({"visit_id": ids, "score": pa.array(scores, pa.float64())})
    flat = pa.array(np.ascontiguousarray(pooled).ravel(), pa.float32())
    vectors = pa.FixedSizeListArray.from_arrays(flat, pooled.shape[1])
    return pa.table({"visit_id": ids, "embedding": vectors})
