"""Tokenization at scale: `ehr-ssl tokenize` on N synthetic visits (default 8M), wall time and
peak memory of the command.

Generates the dataset block by block (`generate_cohort` per block of `--block` visits, patient
and visit ids offset so they stay unique, each block's events written as its own
events/part-XXXXX.parquet), so generating never holds more than one block's events. Then runs
`ehr-ssl -q tokenize DATA --out OUT` in a child process and reports its wall time (start-up
included), its peak RSS, input event rows, output tokens, events/s and the number of chunks.
With `--phases` the child logs (no -q) and the script samples its RSS, printing the peak
between consecutive log lines: where the memory goes.

With `--generate-only` it writes the dataset (`--data`) and reports the generation alone: how
the cohort generator streams at this scale.

usage: python benchmarks/bench_scale_tokenize.py [--visits 8000000] [--block 500000]
           [--chunk-visits N] [--chunk-events N] [--data DIR] [--phases] [--json FILE]
           [--cohort-version 2] [--generate-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from ehr_ssl.cli.options import add_cohort_version
from ehr_ssl.config import TokenizeConfig
from ehr_ssl.data.parquet import parquet_rows
from ehr_ssl.data.readers import dataset_files
from ehr_ssl.data.synthetic import generate_cohort
from ehr_ssl.tokens.tokenize import chunk_count

LABELED = 100_000 / 8_000_000  # about 100k labeled visits of 8M


def generate(data: Path, n_visits: int, block: int, version: int) -> None:
    """Write a dataset of `n_visits` visits of cohort `version`, generated in blocks of at most
    `block` visits (block k with seed k), into the new directory `data`."""
    (data / "events").mkdir(parents=True)
    visits, labels = [], []
    patient_offset = 0
    for k, start in enumerate(range(0, n_visits, block)):
        cohort = generate_cohort(
            min(block, n_visits - start), labeled_frac=LABELED, seed=k, version=version
        )
        patients = int(cohort.events["patient_id"].max())
        pid = pl.col("patient_id") + patient_offset
        vid = pl.col("visit_id") + start
        cohort.events.with_columns(pid).write_parquet(data / "events" / f"part-{k:05d}.parquet")
        visits.append(cohort.visits.with_columns(pid, vid))
        labels.append(cohort.labels.with_columns(vid))
        patient_offset += patients
        print(f"generated block {k}: {start + cohort.visits.height:,} visits", file=sys.stderr)
        del cohort
    pl.concat(visits).write_parquet(data / "visits.parquet")
    pl.concat(labels).write_parquet(data / "labels.parquet")


def generated_figures(data: Path, seconds: float) -> dict:
    """What `--generate-only` reports: the dataset's size and how long generating it took."""
    events = [pq.ParquetFile(path).metadata.num_rows for path in (data / "events").glob("*")]
    size = sum(path.stat().st_size for path in data.rglob("*.parquet"))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "visits": pq.ParquetFile(data / "visits.parquet").metadata.num_rows,
        "event_files": len(events),
        "events": sum(events),
        "generate_seconds": seconds,
        "parquet_gib": round(size / 2**30, 2),
        "peak_rss_mib": round(peak_mib),
    }


def run_child(args: list[str], phases: bool) -> tuple[float, float, list[tuple[str, float]]]:
    """Run a child process; returns (wall seconds, peak RSS in MiB, and with `phases` each log
    line with the peak RSS sampled since the line before, in MiB)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if phases else subprocess.DEVNULL,
        text=True,
    )
    lines: list[tuple[str, float]] = []
    if phases:
        peak = [0.0]
        done = threading.Event()

        def sample() -> None:  # VmRSS every 0.1 s: the peak of each phase
            status = Path(f"/proc/{process.pid}/status")
            while not done.is_set():
                try:
                    kb = int(re.search(r"VmRSS:\s+(\d+)", status.read_text()).group(1))
                except (OSError, AttributeError):
                    break
                peak[0] = max(peak[0], kb / 1024)
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for line in process.stderr:
            lines.append((line.rstrip(), peak[0]))
            peak[0] = 0.0
        done.set()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"child failed: {' '.join(args)}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=8_000_000)
    parser.add_argument("--block", type=int, default=500_000, help="visits generated at once")
    parser.add_argument(
        "--chunk-visits", type=int, help="passed to ehr-ssl tokenize (default: its own)"
    )
    parser.add_argument(
        "--chunk-events", type=int, help="passed to ehr-ssl tokenize (default: its own)"
    )
    parser.add_argument(
        "--data", type=Path, help="dataset directory: reused if it exists, else generated and kept"
    )
    parser.add_argument("--phases", action="store_true", help="peak RSS between log lines")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--generate-only", action="store_true", help="write --data, no tokenize")
    add_cohort_version(parser)
    args = parser.parse_args()
    if args.generate_only and (args.data is None or args.data.exists()):
        parser.error("--generate-only needs a --data directory that does not exist yet")

    work = Path(tempfile.mkdtemp(prefix="bench-scale-tokenize-"))
    try:
        data = args.data or work / "data"
        generate_seconds = None
        if not data.exists():
            started = time.perf_counter()
            generate(data, args.visits, args.block, args.cohort_version)
            generate_seconds = round(time.perf_counter() - started, 1)
        if args.generate_only:
            print(json.dumps(generated_figures(data, generate_seconds), indent=2))
            return
        n_visits = pq.ParquetFile(data / "visits.parquet").metadata.num_rows
        event_files = dataset_files(data)["events"]
        events = sum(parquet_rows(path) for path in event_files)
        out = work / "tokens"
        argv = [str(Path(sys.executable).with_name("ehr-ssl"))]
        argv += [] if args.phases else ["-q"]
        argv += ["tokenize", str(data), "--out", str(out)]
        if args.chunk_visits:
            argv += ["--chunk-visits", str(args.chunk_visits)]
        if args.chunk_events:
            argv += ["--chunk-events", str(args.chunk_events)]
        wall, rss, lines = run_child(argv, args.phases)
        manifest = json.loads((out / "manifest.json").read_text())
        bounds = {"chunk_visits": args.chunk_visits, "chunk_events": args.chunk_events}
        config = TokenizeConfig(**{k: v for k, v in bounds.items() if v})  # else the default
        result = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "visits": n_visits,
            "input_events": events,
            "generate_seconds": generate_seconds,
            "chunk_visits": config.chunk_visits,
            "chunk_events": config.chunk_events,
            "chunks": chunk_count(n_visits, event_files, config),
            "wall_seconds_with_startup": round(wall, 1),
            "peak_rss_mib": round(rss),
            "output_tokens": sum(s["tokens"] for s in manifest["splits"].values()),
            "labeled_visits": sum(s["labeled"] for s in manifest["splits"].values()),
            "vocab_size": manifest["vocab_size"],
            "input_events_per_s": round(events / wall),
            "visits_per_s": round(n_visits / wall),
            "output_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for line, peak in lines:
        print(f"{peak:8,.0f} MiB peak before: {line}")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
