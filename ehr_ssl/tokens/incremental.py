"""Incremental tokenization under a fixed tokenizer: a cache of every visit's tokens that a rerun
on a grown dataset updates by tokenizing only what is new or changed.

A cached visit's tokens are reused when its visit row (ids, times, static columns) is unchanged
and no new event falls in its window (from `lookback_days` before arrival up to its prediction
time). New events are those of events files that are new since the cache was written (a new
shard). Everything else is tokenized again: new and changed visits, and visits whose window
gained an event (late-arriving data in a new shard), reading their patients' events from every
file. An events file removed or rewritten (its size or modification time changed), another
tokenizer or a damaged cache means a full tokenization: a rewritten file may have lost or moved
events (a correction, an event now after its visit's prediction time), which its current rows
cannot show. The result equals a full tokenization of the same data (tests check both).

Layout of a cache directory (written atomically; identifiers stay in it, as in a tokens dir):

    cache.json      format, the tokenizer's hash, the events files' size and mtime
    visits.parquet  the checked visit rows the tokens were made from
    tokens.arrow    one row per visit, same order: visit_id, patient_id, length, token columns
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa

from ehr_ssl.atomic import atomic_directory, atomic_write_text
from ehr_ssl.data.parquet import read_parquet, write_parquet
from ehr_ssl.data.readers import checked_events, input_fingerprint, read_visits, table_files
from ehr_ssl.data.schema import EVENTS, VISITS
from ehr_ssl.errors import InputError
from ehr_ssl.tokens.shards import open_shard
from ehr_ssl.tokens.tokenizer import Tokenizer

log = logging.getLogger("ehr_ssl")

CACHE_FORMAT = "ehr-ssl-token-cache"
READ_BATCH_ROWS = 1_000_000


def cached_tokens(
    data_dir: Path, cache_dir: Path, tokenizer: Tokenizer
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, list[Path]], dict]:
    """Tokenize the dataset at `data_dir` with `tokenizer`, reusing `cache_dir`'s tokens where
    they are still valid, and update the cache.

    Returns:
        (visits, tokens, files, stats): the checked visits; their tokens, row for row (the
        columns of `Tokenizer.encode`); the input files by table; counts of tokenized and
        reused visits, and why the tokenization was full (None when it was not).
    """
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    (visits_path,) = table_files(data_dir, VISITS)
    event_files = table_files(data_dir, EVENTS)
    visits, static_columns, _, times = read_visits(visits_path, tokenizer.input_config())
    tokenizer.check_static_columns(static_columns, str(visits_path))
    files = {"visits": [visits_path], "events": event_files}
    fingerprint = input_fingerprint({"events": event_files}, data_dir)
    tokenizer_hash = hashlib.sha256(tokenizer.to_json().encode()).hexdigest()

    def events_of(paths: list[Path], patients: pl.Series | None = None) -> pl.DataFrame:
        """The checked events of `paths`, only those of `patients` (default: every visit's)."""
        keep = (visits["patient_id"] if patients is None else patients).unique().implode()
        chunks = [
            chunk.filter(pl.col("patient_id").is_in(keep))
            for chunk in checked_events(
                paths,
                config=tokenizer.input_config(),
                times=times,
                id_type=visits.schema["patient_id"],
                id_source=visits_path.name,
                batch_rows=READ_BATCH_ROWS,
            )
        ]
        return pl.concat(chunks) if chunks else _no_events(visits)

    cache = _read_cache(cache_dir, tokenizer_hash)
    full = "no valid cache" if cache is None else None
    if cache is not None and not _only_added(cache[0]["inputs"], fingerprint):
        full = "an events file was removed or rewritten"
    if full:
        tokens = tokenizer.encode_checked(visits, events_of(event_files))
        stats = {"tokenized": visits.height, "reused": 0, "full": full}
    else:
        tokens, stats = _update_from_cache(
            cache, visits, event_files, fingerprint, events_of, tokenizer
        )
    _write_cache(cache_dir, visits, tokens, tokenizer_hash, fingerprint)
    log.info(
        "tokenize: %d visits tokenized, %d reused from the cache%s",
        stats["tokenized"],
        stats["reused"],
        f" (full: {stats['full']})" if stats["full"] else "",
    )
    return visits, tokens, files, stats


def _update_from_cache(
    cache: tuple[dict, pl.DataFrame, pl.DataFrame],
    visits: pl.DataFrame,
    event_files: list[Path],
    fingerprint: dict[str, dict],
    events_of: Callable[..., pl.DataFrame],
    tokenizer: Tokenizer,
) -> tuple[pl.DataFrame, dict]:
    """The cached tokens of unchanged visits and fresh ones for the rest: visits new or changed
    since the cache, and those whose window gained an event from a new file.
    `cache` is `_read_cache`'s (record, visits, tokens)."""
    record, cached_visits, cached = cache
    new_files = [
        path
        for path, name in zip(event_files, fingerprint, strict=True)
        if name not in record["inputs"]
    ]
    new_events = events_of(new_files) if new_files else _no_events(visits)
    redo = _visits_to_redo(visits, cached_visits, new_events, tokenizer)
    again = visits.filter(redo)
    if again.height:
        old_files = [p for p in event_files if p not in new_files]
        patients = again["patient_id"]
        events = pl.concat(
            [events_of(old_files, patients) if old_files else _no_events(visits),
             new_events.filter(pl.col("patient_id").is_in(patients.unique().implode()))]
        )  # fmt: skip
        fresh = tokenizer.encode_checked(again, events)
    else:
        fresh = cached.clear()
    kept = cached.join(visits.filter(~redo).select("visit_id"), on="visit_id", how="semi")
    tokens = visits.select("visit_id").join(
        pl.concat([kept, fresh]), on="visit_id", how="left", maintain_order="left"
    )
    stats = {"tokenized": again.height, "reused": kept.height, "full": None}
    return tokens, stats


def _only_added(cached: dict[str, dict], current: dict[str, dict]) -> bool:
    """Whether the events files changed only by files added: each file the cache was made from
    is there with the same size and modification time."""
    return all(current.get(name) == entry for name, entry in cached.items())


def _visits_to_redo(
    visits: pl.DataFrame, cached: pl.DataFrame, new_events: pl.DataFrame, tokenizer: Tokenizer
) -> pl.Series:
    """Per visit (V,) bool: new or changed since the cache, or its window holds a new event."""
    if cached.schema != visits.schema:  # another id type or other static columns
        return pl.Series([True] * visits.height)
    same = visits.join(cached, on=visits.columns, how="semi", nulls_equal=True)["visit_id"]
    unchanged = visits["visit_id"].is_in(same.implode())
    lookback = pl.duration(microseconds=int(tokenizer.config.lookback_days * 86_400_000_000))
    touched = (
        visits.filter(unchanged)
        .select("visit_id", "patient_id", "arrival_time", "prediction_time")
        .join(new_events.select("patient_id", "time"), on="patient_id")
        .filter(
            (pl.col("time") >= pl.col("arrival_time") - lookback)
            & (pl.col("time") <= pl.col("prediction_time"))
        )["visit_id"]
        .unique()
    )
    return ~unchanged | visits["visit_id"].is_in(touched.implode())


def _no_events(visits: pl.DataFrame) -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "patient_id": visits.schema["patient_id"],
            "time": pl.Datetime("us"),
            "code": pl.String,
            "numeric_value": pl.Float64,
        }
    )


def _read_cache(
    cache_dir: Path, tokenizer_hash: str
) -> tuple[dict, pl.DataFrame, pl.DataFrame] | None:
    """The cache's record, visits and tokens, or None when there is no usable cache for this
    tokenizer (a damaged one included: it only costs a full tokenization)."""
    try:
        record = json.loads((cache_dir / "cache.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("format") != CACHE_FORMAT or record.get("tokenizer_sha256") != tokenizer_hash:
        return None
    if not ((cache_dir / "visits.parquet").exists() and (cache_dir / "tokens.arrow").exists()):
        return None
    try:
        visits = read_parquet(cache_dir / "visits.parquet")
        tokens = pl.from_arrow(open_shard(cache_dir / "tokens.arrow"))
    except InputError as e:
        log.warning("tokenize: token cache not used: %s", e)
        return None
    if tokens.height != visits.height:
        log.warning("tokenize: token cache not used: its visits and tokens differ in length")
        return None
    return record, visits, tokens


def _write_cache(
    cache_dir: Path, visits: pl.DataFrame, tokens: pl.DataFrame, tokenizer_hash: str, inputs: dict
) -> None:
    with atomic_directory(cache_dir, overwrite=True) as tmp:
        write_parquet(visits, tmp / "visits.parquet")
        table = tokens.to_arrow(compat_level=pl.CompatLevel.oldest())
        with (
            pa.OSFile(str(tmp / "tokens.arrow"), "wb") as sink,
            pa.ipc.new_file(sink, table.schema) as writer,
        ):
            writer.write_table(table)
        record = {"format": CACHE_FORMAT, "tokenizer_sha256": tokenizer_hash, "inputs": inputs}
        atomic_write_text(tmp / "cache.json", json.dumps(record, indent=2) + "\n")
