"""Incremental tokenization: a rerun on a dataset that grew (new visits, a new events shard,
late events inside old visits' windows) tokenizes only what is new, a rewritten or removed events
file means a full tokenization, and either gives exactly the tokens of a full tokenization."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from ehr_ssl.config import TokenizeConfig, TokenizerConfig
from ehr_ssl.data.synthetic import generate_cohort
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenize import tokenize_dataset
from ehr_ssl.tokens.tokenizer import Tokenizer

CONFIG = TokenizeConfig(tokenizer=TokenizerConfig(max_length=64))


def _write(directory: Path, visits: pl.DataFrame, parts: list[pl.DataFrame], labels) -> None:
    (directory / "events").mkdir(parents=True, exist_ok=True)
    visits.write_parquet(directory / "visits.parquet")
    labels.join(visits.select("visit_id"), on="visit_id", how="semi").write_parquet(
        directory / "labels.parquet"
    )
    for i, part in enumerate(parts):
        path = directory / "events" / f"part-{i}.parquet"
        if not path.exists():  # earlier shards stay untouched, as appended exports do
            part.write_parquet(path)


def _tokens(tokens_dir: Path) -> pl.DataFrame:
    return pl.concat([read_split(tokens_dir, s) for s in ("train", "val", "test")]).sort("visit_id")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    cohort = generate_cohort(1500, labeled_frac=0.3, seed=2)
    cut = cohort.visits["arrival_time"].quantile(0.8)
    # the tokenizer of a production model: fitted on the early data
    early = root / "early"
    _write(early, cohort.visits.filter(pl.col("arrival_time") < cut),
           [cohort.events.filter(pl.col("time") < cut)], cohort.labels)  # fmt: skip
    tokenize_dataset(early, root / "fitted", CONFIG)
    return root, cohort, cut, Tokenizer.load(root / "fitted")


def test_a_grown_dataset_tokenizes_only_what_is_new(cohort, tmp_path, caplog):
    root, cohort, cut, tokenizer = cohort
    data, cache = tmp_path / "data", tmp_path / "cache"
    first = [cohort.events.filter(pl.col("time") < cut)]
    _write(data, cohort.visits.filter(pl.col("arrival_time") < cut), first, cohort.labels)
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        tokenize_dataset(data, tmp_path / "t1", CONFIG, tokenizer=tokenizer, cache_dir=cache)
    assert "reused from the cache (full: no valid cache)" in caplog.text

    # the export grows: every visit, and the later events as a new shard; one late event lands
    # inside an early visit's window (late-arriving data)
    late_visit = cohort.visits.filter(pl.col("arrival_time") < cut).row(10, named=True)
    late = pl.DataFrame(
        {"patient_id": [late_visit["patient_id"]],
         "time": [late_visit["prediction_time"] - timedelta(minutes=5)],
         "code": ["LAB//LACTATE"], "numeric_value": [4.2]},
        schema=cohort.events.schema,
    )  # fmt: skip
    second = pl.concat([cohort.events.filter(pl.col("time") >= cut), late])
    _write(data, cohort.visits, [*first, second], cohort.labels)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        tokenize_dataset(data, tmp_path / "t2", CONFIG, tokenizer=tokenizer, cache_dir=cache)
    message = next(r.getMessage() for r in caplog.records if "reused" in r.getMessage())
    tokenized, reused = (int(w) for w in message.split() if w.isdigit())
    n_new = cohort.visits.height - cohort.visits.filter(pl.col("arrival_time") < cut).height
    assert tokenized + reused == cohort.visits.height
    assert n_new < tokenized < n_new + cohort.visits.height // 10  # new + the touched few
    full = tmp_path / "full"
    tokenize_dataset(data, full, CONFIG, tokenizer=tokenizer)
    assert _tokens(tmp_path / "t2").equals(_tokens(full))
    # the late event changed the early visit's tokens
    before = _tokens(tmp_path / "t1").filter(pl.col("visit_id") == late_visit["visit_id"])
    after = _tokens(tmp_path / "t2").filter(pl.col("visit_id") == late_visit["visit_id"])
    assert not before.equals(after)


def test_a_changed_visit_row_or_removed_shard_is_seen(cohort, tmp_path, caplog):
    root, cohort, cut, tokenizer = cohort
    data, cache = tmp_path / "data", tmp_path / "cache"
    parts = [
        cohort.events.filter(pl.col("time") < cut),
        cohort.events.filter(pl.col("time") >= cut),
    ]
    _write(data, cohort.visits, parts, cohort.labels)
    tokenize_dataset(data, tmp_path / "t1", CONFIG, tokenizer=tokenizer, cache_dir=cache)
    older = cohort.visits.with_columns(
        age=pl.when(pl.int_range(pl.len()) == 3).then(pl.col("age") + 30).otherwise(pl.col("age"))
    )
    older.write_parquet(data / "visits.parquet")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        tokenize_dataset(data, tmp_path / "t2", CONFIG, tokenizer=tokenizer, cache_dir=cache)
    assert "tokenize: 1 visits tokenized" in caplog.text
    full = tmp_path / "full"
    tokenize_dataset(data, full, CONFIG, tokenizer=tokenizer)
    assert _tokens(tmp_path / "t2").equals(_tokens(full))
    (data / "events" / "part-1.parquet").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        tokenize_dataset(data, tmp_path / "t3", CONFIG, tokenizer=tokenizer, cache_dir=cache)
    assert "(full: an events file was removed or rewritten)" in caplog.text


def test_a_rewritten_events_file_loses_what_it_no_longer_holds(cohort, tmp_path, caplog):
    """A correction rewrites an events file: every event of a visit's window moved to after its
    prediction time. The file's current rows put nothing in that window, so they cannot show
    that it lost events: the cached tokens must not be kept. The rerun equals a full
    tokenization, and the visit no longer reads the moved events."""
    root, cohort, cut, tokenizer = cohort
    data, cache = tmp_path / "data", tmp_path / "cache"
    _write(data, cohort.visits, [cohort.events], cohort.labels)
    tokenize_dataset(data, tmp_path / "t1", CONFIG, tokenizer=tokenizer, cache_dir=cache)
    visit = cohort.visits.row(10, named=True)
    lookback = timedelta(days=tokenizer.config.lookback_days)
    in_window = (pl.col("patient_id") == visit["patient_id"]) & pl.col("time").is_between(
        visit["arrival_time"] - lookback, visit["prediction_time"]
    )
    assert cohort.events.filter(in_window).height > 0
    moved = cohort.events.with_columns(
        time=pl.when(in_window).then(pl.col("time") + timedelta(days=400)).otherwise("time")
    )
    moved.write_parquet(data / "events" / "part-0.parquet")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        tokenize_dataset(data, tmp_path / "t2", CONFIG, tokenizer=tokenizer, cache_dir=cache)
    full = tmp_path / "full"
    tokenize_dataset(data, full, CONFIG, tokenizer=tokenizer)
    assert _tokens(tmp_path / "t2").equals(_tokens(full))
    assert "(full: an events file was removed or rewritten)" in caplog.text
    before = _tokens(tmp_path / "t1").filter(pl.col("visit_id") == visit["visit_id"])
    after = _tokens(tmp_path / "t2").filter(pl.col("visit_id") == visit["visit_id"])
    assert not before.equals(after)


@pytest.mark.parametrize("damaged", ["visits.parquet", "tokens.arrow"])
def test_a_damaged_cache_means_a_full_tokenization(cohort, tmp_path, caplog, damaged):
    """The cache is ours to rebuild: a damaged file in it costs a full tokenization (with a
    warning naming it), never an error and never tokens read from damaged bytes."""
    root, cohort, cut, tokenizer = cohort
    data, cache = tmp_path / "data", tmp_path / "cache"
    _write(data, cohort.visits, [cohort.events], cohort.labels)
    tokenize_dataset(data, tmp_path / "t1", CONFIG, tokenizer=tokenizer, cache_dir=cache)
    raw = bytearray((cache / damaged).read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(range(64))
    (cache / damaged).write_bytes(bytes(raw[: len(raw) * 3 // 4]))  # and truncated
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        tokenize_dataset(data, tmp_path / "t2", CONFIG, tokenizer=tokenizer, cache_dir=cache)
    assert f"token cache not used: {cache / damaged}" in caplog.text
    assert "(full: no valid cache)" in caplog.text
    assert _tokens(tmp_path / "t2").equals(_tokens(tmp_path / "t1"))
