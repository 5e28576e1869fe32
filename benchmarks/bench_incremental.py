"""Incremental tokenization: the time to retokenize a dataset that grew by its most recent
visits and one new events shard, with the token cache (`ehr_ssl.tokens.incremental`) and without.

Synthesizes N visits; a tokenizer is fitted on the visits before the growth cut (a production
model's). The first export holds the visits and events before the cut; it is tokenized once to
fill the cache. Then the export grows (every visit, the later events as a new shard) and is
tokenized again with the cache and, for comparison, in full with the same tokenizer; the two
token sets are checked equal.

usage: python benchmarks/bench_incremental.py --visits 100000 [--new-fraction 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl

from ehr_ssl.config import TokenizeConfig
from ehr_ssl.data.synthetic import DEFAULT_COHORT_VERSION, generate_cohort
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenize import tokenize_dataset
from ehr_ssl.tokens.tokenizer import Tokenizer


def write_export(directory: Path, visits, labels, shards: list[pl.DataFrame]) -> None:
    (directory / "events").mkdir(parents=True, exist_ok=True)
    visits.write_parquet(directory / "visits.parquet")
    labels.join(visits.select("visit_id"), on="visit_id", how="semi").write_parquet(
        directory / "labels.parquet"
    )
    for i, shard in enumerate(shards):
        path = directory / "events" / f"part-{i}.parquet"
        if not path.exists():
            shard.write_parquet(path)


def all_tokens(tokens_dir: Path) -> pl.DataFrame:
    splits = [read_split(tokens_dir, s) for s in ("train", "val", "test")]
    return pl.concat(splits).sort("visit_id")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=100_000)
    parser.add_argument(
        "--cohort-version",
        type=int,
        default=DEFAULT_COHORT_VERSION,
        help="synthetic cohort version (1: the figures recorded before 2026-12-04 (fifth session))",
    )
    parser.add_argument("--new-fraction", type=float, default=0.05)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_incremental-"))
    config = TokenizeConfig()
    cohort = generate_cohort(args.visits, labeled_frac=0.05, seed=0, version=args.cohort_version)
    cut = cohort.visits["arrival_time"].quantile(1 - args.new_fraction)
    before = cohort.visits.filter(pl.col("arrival_time") < cut)
    old_events = cohort.events.filter(pl.col("time") < cut)
    write_export(work / "fit", before, cohort.labels, [old_events])
    tokenize_dataset(work / "fit", work / "fitted", config)
    tokenizer = Tokenizer.load(work / "fitted")

    data, cache = work / "data", work / "cache"
    write_export(data, before, cohort.labels, [old_events])
    started = time.perf_counter()
    tokenize_dataset(data, work / "t0", config, tokenizer=tokenizer, cache_dir=cache)
    first = time.perf_counter() - started
    new_events = cohort.events.filter(pl.col("time") >= cut)
    write_export(data, cohort.visits, cohort.labels, [old_events, new_events])
    started = time.perf_counter()
    tokenize_dataset(data, work / "t1", config, tokenizer=tokenizer, cache_dir=cache)
    incremental = time.perf_counter() - started
    started = time.perf_counter()
    tokenize_dataset(data, work / "t2", config, tokenizer=tokenizer)
    full = time.perf_counter() - started
    assert all_tokens(work / "t1").equals(all_tokens(work / "t2"))
    print(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                "visits": args.visits,
                "new_visits": args.visits - before.height,
                "events": cohort.events.height,
                "new_event_rows": new_events.height,
                "first_tokenization_filling_the_cache_s": round(first, 2),
                "incremental_s": round(incremental, 2),
                "full_s": round(full, 2),
                "equal_tokens": True,
            },
            indent=2,
        )
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
