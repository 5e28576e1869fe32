"""Pretraining throughput per preset and device: tokens/s, padding, data vs compute, peak memory,
and on CUDA the model FLOPs utilization (MFU).

Synthesizes and tokenizes a cohort once, then runs the real training loop
(`ehr_ssl.training.pretrain`) for
`--steps` steps per preset, each preset in a fresh process (its peak RSS is its own), and reads
its metrics log, skipping the first `--warmup` steps (first-call allocation and kernel
selection). tokens/s counts the visits' real tokens per second of step time; encoder tokens/s
the real tokens the encoder ran on (both views). MFU = (6 x non-embedding parameters + 12 x
layers x hidden x T) x encoder tokens/s over the GPU's bf16 matmul rate measured on the spot,
with T the mean padded length of the encoder's input.

usage: python benchmarks/bench_train.py --presets tiny,small [--device cpu] [--steps 60]
           [--views augment|disjoint|patient] [--mask-unit token|encounter] [--precision bf16]
           [--visit-values-weight W] [--value-embedding shared|per_code]
           [--code-hierarchy none|ancestors] [--pool-width K]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ehr_ssl.config import OBJECTIVE_WEIGHTS, TokenizeConfig, TokenizerConfig, load_pretrain_config
from ehr_ssl.data.synthetic import DEFAULT_COHORT_VERSION, generate_cohort, write_cohort
from ehr_ssl.tokens.tokenize import tokenize_dataset
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.training.device import device_settings
from ehr_ssl.training.pretrain import build_encoder, pretrain, read_code_hierarchy


def matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """Measured dense bf16 matmul rate of the device, in TFLOP/s."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def measure(tokens_dir: Path, preset: str, args: argparse.Namespace) -> dict:
    """Train one preset in this process and summarize its metrics log."""
    config = load_pretrain_config(
        None,
        {
            "preset": preset,
            "train.device": args.device,
            "train.max_steps": args.steps,
            "train.log_every": 1,
            "train.checkpoint_every": 10**9,
            "train.batch_size": args.batch_size,
            "train.compile": args.compile or None,
            "train.precision": args.precision,
            "objective.masked_weight": args.masked_weight,
            "objective.contrastive_weight": args.contrastive_weight,
            "objective.forecast_weight": args.forecast_weight,
            "objective.forecast_share": args.forecast_share,
            "objective.contrastive_views": args.views,
            "objective.mask_unit": args.mask_unit,
            "objective.visit_values_weight": args.visit_values_weight,
            "model.value_embedding": args.value_embedding,
            "model.code_hierarchy": args.code_hierarchy,
            "model.pool_width": args.pool_width,
        },
    )
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    hardware = device_settings(device, config.train.precision, config.train.pad_to_multiple_of)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # the peak of this measurement, not of an earlier one
    run = Path(tempfile.mkdtemp(prefix=f"bench-{preset}-")) / "run"
    try:
        started = time.perf_counter()
        pretrain(tokens_dir, run, config)
        wall = time.perf_counter() - started
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(run.parent, ignore_errors=True)
    steady = [r for r in records if r["step"] > args.warmup]
    median = {k: statistics.median(r[k] for r in steady) for k in steady[0] if k != "epoch"}
    tokenizer = Tokenizer.load(tokens_dir)
    encoder = build_encoder(tokenizer, config, read_code_hierarchy(tokens_dir, tokenizer, config))
    result = {
        "preset": preset,
        "device": str(device),
        "parameters_M": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 3),
        "batch_size": config.train.batch_size,
        "objectives": [
            name.removesuffix("_weight")
            for name in OBJECTIVE_WEIGHTS
            if getattr(config.objective, name) > 0
        ],
        "views": config.objective.contrastive_views,
        "mask_unit": config.objective.mask_unit,
        "forecast_share": config.objective.forecast_share,
        "value_embedding": encoder.config.value_embedding,
        "code_hierarchy": encoder.config.code_hierarchy,
        "pool_width": encoder.config.pool_width,
        "precision": hardware.precision,
        "pad_to_multiple_of": hardware.pad_to_multiple_of,
        "compile": config.train.compile,
        "steps_measured": len(steady),
        "tokens_per_s": round(median["tokens_per_s"]),
        "encoder_tokens_per_s": round(median["encoder_tokens_per_s"]),
        "step_ms": round(1000 * (median["data_s"] + median["compute_s"]), 1),
        "data_ms": round(1000 * median["data_s"], 2),
        "encoder_padding_fraction": round(median["padding_fraction"], 3),
        "wall_s_including_setup": round(wall, 1),
    }
    if device.type == "cuda":
        result["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        # FLOPs of the tokens the encoder really ran on (both views), at their mean padded
        # length; the heads are left out (a lower bound on the model's FLOPs).
        passes = (
            1 + (config.objective.contrastive_weight > 0) + (config.objective.forecast_weight > 0)
        )
        encoder_rows = config.train.batch_size * passes  # views, and the forecast's prefixes
        step_s = median["data_s"] + median["compute_s"]
        padded_t = median["encoder_tokens_per_s"] * step_s / (1 - median["padding_fraction"])
        flops = encoder.num_flops_per_token(int(padded_t / encoder_rows))
        peak = matmul_tflops(device)
        result["matmul_tflops_measured"] = round(peak, 1)
        result["mfu"] = round(flops * median["encoder_tokens_per_s"] / (peak * 1e12), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--visits", type=int, default=20_000)
    parser.add_argument(
        "--cohort-version",
        type=int,
        default=DEFAULT_COHORT_VERSION,
        help="synthetic cohort version (1: the figures recorded before 2026-12-04 (fifth session))",
    )
    parser.add_argument("--rare-codes", help="tokenizer.rare_codes [the default's]")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--precision", help="train.precision [auto: bf16 on GPU, fp32 on CPU]")
    parser.add_argument("--masked-weight", type=float)
    parser.add_argument("--contrastive-weight", type=float)
    parser.add_argument("--forecast-weight", type=float)
    parser.add_argument(
        "--forecast-share", type=float, help="objective.forecast_share [the config's]"
    )
    parser.add_argument("--views", help="objective.contrastive_views [the preset's]")
    parser.add_argument("--mask-unit", help="objective.mask_unit [the preset's]")
    parser.add_argument("--visit-values-weight", type=float)
    parser.add_argument("--value-embedding", help="model.value_embedding [the preset's]")
    parser.add_argument("--code-hierarchy", help="model.code_hierarchy [the preset's]")
    parser.add_argument("--pool-width", type=int, help="model.pool_width [the preset's]")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tokens", type=Path, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()

    if args.tokens is not None:  # child: one preset, report as JSON on stdout
        print(json.dumps(measure(args.tokens, args.presets, args)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    results = []
    try:
        write_cohort(
            generate_cohort(args.visits, seed=0, version=args.cohort_version), work / "data"
        )
        rare = {} if args.rare_codes is None else {"rare_codes": args.rare_codes}
        tokenizer = TokenizerConfig(**rare)
        tokenize_dataset(work / "data", work / "tokens", TokenizeConfig(tokenizer=tokenizer))
        for preset in args.presets.split(","):
            # Each preset in a fresh process, so its peak RSS is its own.
            argv = [sys.executable, __file__, "--presets", preset, "--tokens", str(work / "tokens")]
            argv += _passthrough(args)
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            stdout = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
            if os.waitstatus_to_exitcode(status):
                raise SystemExit(f"preset {preset} failed")
            result = json.loads(stdout.strip().splitlines()[-1])
            result["peak_rss_mib"] = round(usage.ru_maxrss / 1024)
            result["rare_codes"] = tokenizer.rare_codes
            results.append(result)
            print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _passthrough(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--masked-weight", args.masked_weight),
        ("--contrastive-weight", args.contrastive_weight),
        ("--forecast-weight", args.forecast_weight),
        ("--forecast-share", args.forecast_share),
        ("--views", args.views),
        ("--mask-unit", args.mask_unit),
        ("--visit-values-weight", args.visit_values_weight),
        ("--value-embedding", args.value_embedding),
        ("--code-hierarchy", args.code_hierarchy),
        ("--pool-width", args.pool_width),
        ("--precision", args.precision),
    ):
        if value is not None:
            out += [flag, str(value)]
    return out + (["--compile"] if args.compile else [])


if __name__ == "__main__":
    main()
