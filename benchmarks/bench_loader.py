"""Training input at scale: the DataLoader alone over memory-mapped token shards, against a full
pretraining step, and how much memory the dataset takes.

Synthesizes and tokenizes `--visits` visits (or reuses `--tokens DIR`), then in fresh child
processes: (1) iterates the pretraining DataLoader alone (TokenDataset + LengthBucketSampler +
collate, as `ehr_ssl.training.pretrain` builds it) for `--batches` batches of `--batch-size`
visits and reports visits/s and tokens/s; (2) runs `--steps` steps of the real loop (`pretrain`,
preset `--preset`) on the same shards and reports its tokens/s and data-wait share from the metrics
log. Both report the child's peak RSS and its anonymous (non-file) resident memory at the end:
token shards are memory-mapped, so their pages are file cache the kernel may drop, not heap.

usage: python benchmarks/bench_loader.py --visits 1000000 [--tokens DIR] [--workers 0,2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _memory() -> dict:
    """Peak RSS, and resident anonymous memory now (MiB), from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    mib = {k: int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon", "RssFile")}
    return {
        "peak_rss_mib": round(mib["VmHWM"]),
        "anon_rss_mib": round(mib["RssAnon"]),
        "file_rss_mib": round(mib["RssFile"]),
    }


def loader_alone(tokens: Path, batch_size: int, batches: int, workers: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from ehr_ssl.data.splits import SPLITS
    from ehr_ssl.tokens.batching import LengthBucketSampler, TokenDataset, collate
    from ehr_ssl.training.pretrain import pretraining_selection

    started = time.perf_counter()
    dataset = TokenDataset(tokens, pretraining_selection(False), splits=SPLITS)
    opened = time.perf_counter() - started
    sampler = LengthBucketSampler(dataset.lengths, batch_size, seed=0)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        generator=torch.Generator(),
    )
    n_visits = n_tokens = 0
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    started = time.perf_counter()
    for _, batch in zip(range(batches), iterator, strict=False):
        n_visits += batch["input_ids"].shape[0]
        n_tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - started
    return {
        "visits_in_dataset": len(dataset),
        "dataset_open_s": round(opened, 2),
        "workers": workers,
        "visits_per_s": round(n_visits / seconds),
        "tokens_per_s": round(n_tokens / seconds),
        **_memory(),
    }


def full_steps(tokens: Path, preset: str, batch_size: int, steps: int, workers: int) -> dict:
    from ehr_ssl.config import load_pretrain_config
    from ehr_ssl.training.pretrain import pretrain

    config = load_pretrain_config(
        None,
        {
            "preset": preset,
            "train.device": "cpu",
            "train.max_steps": steps,
            "train.batch_size": batch_size,
            "train.num_workers": workers,
            "train.log_every": 1,
            "train.checkpoint_every": 10**9,
        },
    )
    out = Path(tempfile.mkdtemp(prefix="bench-loader-run-"))
    try:
        pretrain(tokens, out / "run", config)
        records = [
            json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()
        ][5:]  # first steps: allocation warm-up
    finally:
        shutil.rmtree(out, ignore_errors=True)
    data_s = sum(r["data_s"] for r in records)
    step_s = data_s + sum(r["compute_s"] for r in records)
    return {
        "preset": preset,
        "workers": workers,
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in records)),
        "data_share_of_step": round(data_s / step_s, 4),
        **_memory(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=1_000_000)
    parser.add_argument(
        "--cohort-version",
        type=int,
        default=2,  # ehr_ssl.data.synthetic.DEFAULT_COHORT_VERSION (imported lazily here)
        help="synthetic cohort version (1: the figures recorded before 2026-12-04 (fifth session))",
    )
    parser.add_argument("--tokens", type=Path, help="reuse a tokens directory")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--workers", default="0")
    parser.add_argument("--child", choices=["loader", "steps"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    if args.child == "loader":
        print(json.dumps(loader_alone(args.tokens, args.batch_size, args.batches, workers[0])))
        return
    if args.child == "steps":
        result = full_steps(args.tokens, args.preset, args.batch_size, args.steps, workers[0])
        print(json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        tokens = args.tokens
        if tokens is None:
            from ehr_ssl.config import TokenizeConfig
            from ehr_ssl.data.synthetic import generate_cohort, write_cohort
            from ehr_ssl.tokens.tokenize import tokenize_dataset

            write_cohort(
                generate_cohort(args.visits, seed=0, version=args.cohort_version),
                work / "data",
                shards=8,
            )
            tokens = work / "tokens"
            tokenize_dataset(work / "data", tokens, TokenizeConfig())
        size = sum(p.stat().st_size for p in tokens.rglob("*.arrow"))
        print(json.dumps({"tokens_dir_mib": round(size / 2**20)}))
        for child in ("loader", "steps"):
            for w in workers:
                command = [sys.executable, __file__, "--child", child, "--tokens", str(tokens)]
                command += ["--batch-size", str(args.batch_size), "--batches", str(args.batches)]
                command += ["--steps", str(args.steps), "--preset", args.preset]
                command += ["--workers", str(w)]
                output = subprocess.run(command, check=True, capture_output=True, text=True)
                print(json.dumps({child: json.loads(output.stdout.splitlines()[-1])}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
