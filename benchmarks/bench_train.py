"""Pretraining throughput per preset and device: tokens/s, padding, data vs compute, peak memory,
and on CUDA the model FLOPs utilization (MFU).

Synthesizes and tokenizes a cohort once, then runs the real training loop (`ehr_ssl.train`) for
`--steps` steps per preset and reads its metrics log, skipping the first `--warmup` steps
(first-call allocation and kernel selection). Tokens are real (non-pad) visit tokens per second
of step time; MFU = (6 x non-embedding parameters + 12 x layers x hidden x T) x tokens/s over the
GPU's bf16 matmul rate measured on the spot (the attention term of the FLOPs count per token,
with T the mean padded length).

usage: python benchmarks/bench_train.py --presets tiny,small [--device cpu] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ehr_ssl.config import TokenizeConfig, load_pretrain_config
from ehr_ssl.data.synthetic import generate_cohort, write_cohort
from ehr_ssl.model import EHREncoder
from ehr_ssl.tokenizer import Tokenizer, tokenize_dataset
from ehr_ssl.train import encoder_config, pretrain


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--visits", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--masked-weight", type=float)
    parser.add_argument("--contrastive-weight", type=float)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    results = []
    try:
        write_cohort(generate_cohort(args.visits, seed=0), work / "data")
        tokenize_dataset(work / "data", work / "tokens", TokenizeConfig())
        tokenizer = Tokenizer.load(work / "tokens")
        for preset in args.presets.split(","):
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
                    "objective.masked_weight": args.masked_weight,
                    "objective.contrastive_weight": args.contrastive_weight,
                },
            )
            device = torch.device(
                "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
            )
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            run = work / f"run-{preset}"
            started = time.perf_counter()
            pretrain(work / "tokens", run, config)
            wall = time.perf_counter() - started
            records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            steady = [r for r in records if r["step"] > args.warmup]
            tokens_per_s = statistics.median(r["tokens_per_s"] for r in steady)
            step_s = statistics.median(r["data_s"] + r["compute_s"] for r in steady)
            encoder = EHREncoder(encoder_config(tokenizer, config))
            result = {
                "preset": preset,
                "device": str(device),
                "parameters_M": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 3),
                "batch_size": config.train.batch_size,
                "objectives": [
                    name
                    for name, w in (
                        ("masked", config.objective.masked_weight),
                        ("contrastive", config.objective.contrastive_weight),
                    )
                    if w > 0
                ],
                "steps_measured": len(steady),
                "tokens_per_s": round(tokens_per_s),
                "step_ms": round(1000 * step_s, 1),
                "data_ms": round(1000 * statistics.median(r["data_s"] for r in steady), 2),
                "padding_fraction": round(
                    statistics.mean(r["padding_fraction"] for r in steady), 3
                ),
                "wall_s_including_setup": round(wall, 1),
            }
            if device.type == "cuda":
                result["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                tokens_per_step = tokens_per_s * step_s
                mean_t = (
                    tokens_per_step / config.train.batch_size / (1 - result["padding_fraction"])
                )
                # Encoder passes per step: view A (+ view B with the contrastive term).
                passes = 1 + (config.objective.contrastive_weight > 0)
                flops = encoder.num_flops_per_token(int(mean_t)) * tokens_per_s * passes
                peak = matmul_tflops(device)
                result["matmul_tflops_measured"] = round(peak, 1)
                result["mfu"] = round(flops / (peak * 1e12), 3)
            else:
                result["peak_rss_mib"] = round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                )
            results.append(result)
            print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
