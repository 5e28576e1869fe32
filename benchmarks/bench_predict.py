"""Batch scoring throughput and peak memory: `ehr-ssl predict` on N synthetic visits.

Synthesizes a cohort, tokenizes it to fit a tokenizer, and saves a bundle of that tokenizer with
an encoder of the chosen preset (random weights: speed does not depend on them), then runs the
whole `ehr-ssl predict` command in a child process once per `--chunk-visits` value and reports
wall time (start-up included), visits/s, input events/s and the child's peak RSS.

usage: python benchmarks/bench_predict.py --visits 100000 [--preset small]
                                          [--chunk-visits 100000,20000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from ehr_ssl.config import PRESETS, TokenizeConfig, load_pretrain_config
from ehr_ssl.data.synthetic import DEFAULT_COHORT_VERSION, generate_cohort, write_cohort
from ehr_ssl.deploy.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, AdmissionModel
from ehr_ssl.model.encoder import readout_dim
from ehr_ssl.tokens.tokenize import tokenize_dataset
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.training.pretrain import build_encoder, read_code_hierarchy


def build_bundle(data: Path, work: Path, preset: str) -> Path:
    """A bundle with the cohort's fitted tokenizer and a random encoder of `preset`."""
    tokenize_dataset(data, work / "tokens", TokenizeConfig(), overwrite=True)
    tokenizer = Tokenizer.load(work / "tokens")
    torch.manual_seed(0)
    config = load_pretrain_config(None, {"preset": preset})
    hierarchy = read_code_hierarchy(work / "tokens", tokenizer, config)
    encoder = build_encoder(tokenizer, config, hierarchy)
    width = readout_dim(encoder.config)  # what the head reads
    head = torch.randn(width) / width**0.5
    info = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "model": f"random-{preset}"}
    model = AdmissionModel(tokenizer, encoder, head, torch.tensor(0.0), info)
    return model.save(work / "bundle", overwrite=True)


def run_child(args: list[str]) -> tuple[float, float]:
    """Run a child process; returns (wall seconds, peak RSS in MiB)."""
    started = time.perf_counter()
    process = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"child failed: {' '.join(args)}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=100_000)
    parser.add_argument(
        "--cohort-version",
        type=int,
        default=DEFAULT_COHORT_VERSION,
        help="synthetic cohort version (1: the figures recorded before 2026-12-04 (fifth session))",
    )
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--chunk-visits", default="100000,20000")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--work", type=Path, help="keep data and bundle here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_predict-"))
    data = work / "data"
    write_cohort(
        generate_cohort(args.visits, labeled_frac=0.05, seed=0, version=args.cohort_version),
        data,
        overwrite=True,
    )
    events = pl.scan_parquet(data / "events.parquet").select(pl.len()).collect().item()
    bundle = build_bundle(data, work, args.preset)
    exe = str(Path(sys.executable).with_name("ehr-ssl"))
    rows = []
    for chunk in [int(c) for c in args.chunk_visits.split(",")]:
        out = work / f"predictions-{chunk}.parquet"
        argv = [exe, "predict", "--model", str(bundle), "--data", str(data), "--out", str(out),
                "--chunk-visits", str(chunk), "--device", args.device]  # fmt: skip
        wall, rss = run_child(argv)
        assert pl.scan_parquet(out).select(pl.len()).collect().item() == args.visits
        rows.append(
            {
                "chunk_visits": chunk,
                "wall_seconds_with_startup": round(wall, 2),
                "visits_per_s": round(args.visits / wall),
                "events_per_s": round(events / wall),
                "peak_rss_mib": round(rss),
            }
        )
    print(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                "visits": args.visits,
                "events": events,
                "preset": args.preset,
                "runs": rows,
            },
            indent=2,
        )
    )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
