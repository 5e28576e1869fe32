"""Batch scoring of a dataset directory with a bundle (`ehr-ssl predict` / `ehr-ssl embed`),
streamed in chunks of patients so memory stays bounded however large the input.

Two passes: (1) the events files are read in record batches, checked, and written to temporary
per-chunk files by a hash of patient_id, so every patient's events land in one chunk; (2) each
chunk's visits and events are tokenized with the bundle's tokenizer and scored, and the rows are
appended to the output. Peak memory is about one chunk's events and tokens, not the dataset's.
The output is written under a temporary name and renamed when complete. Rows come chunk by chunk
(input order within a chunk): join on visit_id.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ehr_ssl.atomic import atomic_file
from ehr_ssl.data.partitions import (
    CHUNK_COLUMN,
    chunk_of,
    partition_events,
    read_chunk_events,
)
from ehr_ssl.data.readers import read_visits, table_files
from ehr_ssl.data.schema import EVENTS, VISITS
from ehr_ssl.deploy.bundle import AdmissionModel
from ehr_ssl.errors import InputError
from ehr_ssl.tokens.vocab import UNK_ID

log = logging.getLogger("ehr_ssl")

OUTPUTS = ("predict", "embed")


def score_dataset(
    model: AdmissionModel,
    data_dir: Path,
    out_path: Path,
    *,
    output: str = "predict",
    chunk_visits: int = 100_000,
    batch_size: int = 256,
    progress: bool | None = None,
) -> dict:
    """Score (or embed) every visit of the dataset at `data_dir` into one Parquet file.

    Args:
        model: A loaded bundle.
        data_dir: A dataset directory (visits, events; labels, if any, are not read).
        out_path: The output Parquet file: `visit_id`, then `score` (float64) or `embedding`
            (fixed-size list of D float32).
        output: "predict" or "embed".
        chunk_visits: About how many visits are tokenized and scored at once (memory bound).
        progress: A progress bar (default: when stderr is a terminal); else log lines.

    Returns:
        Counts: visits, chunks, event rows read, unknown-code share, seconds. No identifiers.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if chunk_visits < 1:
        raise InputError(f"must be >= 1, got {chunk_visits}", column="chunk_visits")
    data_dir, out_path = Path(data_dir), Path(out_path)
    if not data_dir.is_dir():
        raise InputError("dataset directory not found", file=str(data_dir))
    if out_path.is_dir():
        raise InputError("is a directory, expected an output file path", file=str(out_path))
    started = time.perf_counter()
    tokenizer = model.tokenizer
    (visits_path,) = table_files(data_dir, VISITS)
    event_files = table_files(data_dir, EVENTS)
    visits, static_columns, _, times = read_visits(visits_path, tokenizer.input_config())
    tokenizer.check_static_columns(static_columns, str(visits_path))
    n_chunks = max(1, math.ceil(visits.height / chunk_visits))
    visits = visits.with_columns(chunk_of(pl.col("patient_id"), n_chunks))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if progress is None else progress
    work = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.chunks-", dir=out_path.parent))
    try:
        n_events = partition_events(
            event_files,
            n_chunks=n_chunks,
            id_type=visits.schema["patient_id"],
            times=times,
            config=tokenizer.input_config(),
            source=visits_path.name,
            work=work,
        )
        log.info(
            "%s: %d visits, %d event rows in %d chunk(s)", output, visits.height, n_events, n_chunks
        )
        unknown = tokens_read = 0
        with atomic_file(out_path) as tmp:
            writer = None
            bar = tqdm(total=visits.height, unit="visit", desc=output, disable=not show)
            for chunk in range(n_chunks):
                in_chunk = pl.col(CHUNK_COLUMN) == chunk
                chunk_visits_frame = visits.filter(in_chunk).drop(CHUNK_COLUMN)
                if chunk_visits_frame.height == 0:
                    continue
                events = read_chunk_events(work, chunk, visits.schema["patient_id"])
                tokens = tokenizer.encode_checked(chunk_visits_frame, events)
                del events
                ids = tokens["input_ids"].explode()
                unknown += int((ids == UNK_ID).sum())
                tokens_read += ids.len()
                table = _output_table(model, tokens, output, batch_size)
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp), table.schema)
                writer.write_table(table)
                bar.update(tokens.height)
                if not show:
                    log.info(
                        "%s: chunk %d/%d done (%d visits)",
                        output,
                        chunk + 1,
                        n_chunks,
                        tokens.height,
                    )
            bar.close()
            if writer is None:  # pragma: no cover - visits tables are never empty
                raise InputError("no visits to score", file=str(visits_path))
            writer.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "visits": visits.height,
        "chunks": n_chunks,
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
