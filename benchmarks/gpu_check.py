"""The prepared GPU check (issue 22): one command, within 8 minutes on one NVIDIA GPU.

1. The CUDA path's correctness: a few bf16 pretraining steps of `tiny` give finite losses and
   fp32 weights, and a run resumed from its mid-run checkpoint ends bitwise identical to the
   uninterrupted run (deterministic kernels; a second uninterrupted run is the control).
2. The `base` preset's throughput (`bench_train.measure`, the real loop): tokens/s, MFU against
   the bf16 matmul rate measured on the spot, padding fraction, peak GPU memory, at growing batch
   sizes up to the largest that fits, then at that batch with torch.compile.
3. One pretraining epoch over 8M visits, extrapolated from the best measured throughput and the
   cohort's mean tokens per visit.

Every figure goes to OUT/gpu_check.json; a summary table is printed. Steps that would overrun
`--budget-s` are skipped and recorded as skipped. `--device cpu --dry-run` runs the same steps
at tiny sizes (the test suite runs it, so the script cannot rot). On the GPU machine run it
through benchmarks/gpu_check.sh, which installs what that machine lacks from carried wheels.

usage: python benchmarks/gpu_check.py [--device auto|cuda|cpu] [--dry-run] [--out DIR]
           [--budget-s 420]
"""

from __future__ import annotations

import os

# cuBLAS reads this when it starts: the correctness check's deterministic kernels need it.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402

from ehr_ssl.atomic import atomic_write_text  # noqa: E402
from ehr_ssl.config import TokenizeConfig, load_pretrain_config  # noqa: E402
from ehr_ssl.data.synthetic import generate_cohort, write_cohort  # noqa: E402
from ehr_ssl.tokens.batching import TokenDataset  # noqa: E402
from ehr_ssl.tokens.tokenize import tokenize_dataset  # noqa: E402
from ehr_ssl.training.pretrain import SPLITS, pretrain, pretraining_selection  # noqa: E402

EPOCH_VISITS = 8_000_000
COMPILE_RESERVE_S = 150  # compiling `base` and its recompiles for new lengths: about a minute


@dataclass(frozen=True)
class Sizes:
    """How big each step is: the GPU check's, or the dry run's (seconds on CPU)."""

    visits: int  # synthetic cohort (its pretraining share must hold the largest batch)
    preset: str  # the throughput preset
    batches: tuple[int, ...]  # tried in order until one does not fit
    steps: int  # steps per throughput measurement ...
    warmup: int  # ... of which the first are not measured
    check_steps: int  # steps of the correctness run (a checkpoint halfway)


# Batches double from the preset's 256 up to what 100,000 visits hold (the first run, on
# 2026-12-04, tried 256, 1,024, 4,096: 4,096 did not fit, 2,048 was not tried).
GPU_SIZES = Sizes(100_000, "base", tuple(256 * 2**i for i in range(9)), 16, 6, 12)
DRY_SIZES = Sizes(1_500, "tiny", (16, 64), 6, 2, 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--dry-run", action="store_true", help="the same steps at tiny sizes")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    parser.add_argument("--budget-s", type=float, default=420, help="skip what would overrun")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but torch sees no CUDA device")
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    started = time.monotonic()
    deadline = started + args.budget_s
    report = {"environment": environment(device), "sizes": asdict(sizes), "dry_run": args.dry_run}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        report["data"] = make_tokens(work, sizes.visits)
        tokens = work / "tokens"
        report["correctness"] = _guarded(check_cuda_path, tokens, work, device, sizes.check_steps)
        report["throughput"] = sweep(tokens, device, sizes, deadline)
        report["epoch_8m"] = extrapolate(report["throughput"], report["data"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        report["wall_s"] = round(time.monotonic() - started, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    print_summary(report)
    sys.exit(0 if report["correctness"].get("passed") else 1)


def environment(device: str) -> dict:
    """What the figures were measured on."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            bf16_supported=torch.cuda.is_bf16_supported(including_emulation=False),
        )
    return env


def make_tokens(work: Path, visits: int) -> dict:
    """A synthetic cohort, tokenized; its size and mean tokens per pretraining visit."""
    started = time.perf_counter()
    write_cohort(generate_cohort(visits, seed=0), work / "data")
    tokenize_dataset(work / "data", work / "tokens", TokenizeConfig())
    lengths = TokenDataset(work / "tokens", pretraining_selection(False), splits=SPLITS).lengths
    return {
        "visits": visits,
        "pretraining_visits": len(lengths),
        "mean_tokens_per_visit": round(float(lengths.mean()), 2),
        "seconds": round(time.perf_counter() - started, 1),
    }


@contextlib.contextmanager
def deterministic():
    """Kernels that give the same bits on every run (the math attention kernel; deterministic
    scatter-adds), so that a resume can be compared bit for bit."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.use_deterministic_algorithms(False)


def check_cuda_path(tokens: Path, work: Path, device: str, steps: int) -> dict:
    """bf16 pretraining of `tiny`: finite losses, fp32 weights, a bitwise resume."""
    config = load_pretrain_config(
        None,
        {
            "preset": "tiny",
            "train.device": device,
            "train.precision": "bf16",
            "train.max_steps": steps,
            "train.checkpoint_every": steps // 2,
            "train.log_every": 1,
            "train.batch_size": 32,
        },
    )
    started = time.perf_counter()
    with deterministic():
        reference, control, resumed = (work / name for name in ("reference", "control", "resumed"))
        pretrain(tokens, reference, config)
        pretrain(tokens, control, config)
        shutil.copytree(reference, resumed)
        shutil.rmtree(resumed / "checkpoints" / f"step-{steps:08d}")
        shutil.rmtree(resumed / "encoder")
        for name in ("pretraining_heads.safetensors", "pretrain_summary.json"):
            (resumed / name).unlink()
        pretrain(tokens, resumed, config, resume=True)
    losses = [json.loads(x)["loss"] for x in (reference / "metrics.jsonl").read_text().splitlines()]
    expected = _weights(reference)
    result = {
        "steps": steps,
        "precision": config.train.precision,
        "losses": [round(x, 4) for x in losses],
        "losses_finite": all(math.isfinite(x) for x in losses),
        # every learned weight; the code hierarchy's ancestor ids are an integer buffer
        "weights_fp32": {t.dtype for t in expected.values() if t.is_floating_point()}
        == {torch.float32},
        "resume_max_abs_diff": _max_diff(_weights(resumed), expected),
        "rerun_max_abs_diff": _max_diff(_weights(control), expected),
        "seconds": round(time.perf_counter() - started, 1),
    }
    result["resume_bitwise"] = result["resume_max_abs_diff"] == 0.0
    result["passed"] = result["losses_finite"] and result["weights_fp32"]
    result["passed"] = result["passed"] and result["resume_bitwise"]
    return result


def _weights(run: Path) -> dict[str, torch.Tensor]:
    weights = load_file(run / "encoder" / "model.safetensors")
    weights.update(load_file(run / "pretraining_heads.safetensors"))
    return weights


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in b)


def sweep(tokens: Path, device: str, sizes: Sizes, deadline: float) -> list[dict]:
    """The preset at each batch size until one does not fit (or the budget runs short), then
    the largest that fit with torch.compile."""
    rows, last = [], None  # last: (batch, seconds) of the previous measurement
    for batch in sizes.batches:
        if last is not None and not _time_for(last[1] * batch / last[0], deadline):
            rows.append({"batch_size": batch, "status": "skipped: time budget"})
            continue
        row, seconds = _measure(tokens, device, sizes, batch, compile=False)
        rows.append(row)
        if row["status"] != "ok":
            break
        last = (batch, seconds)
    if last is None:
        return rows
    if _time_for(last[1] + COMPILE_RESERVE_S, deadline):
        rows.append(_measure(tokens, device, sizes, last[0], compile=True)[0])
    else:
        rows.append({"batch_size": last[0], "compile": True, "status": "skipped: time budget"})
    return rows


def _guarded(step, *args) -> dict:
    """What `step` returns, or, when it fails, why: GPU minutes are too scarce to lose the
    remaining steps to one failure (an out-of-memory batch is an expected one)."""
    try:
        return step(*args)
    except Exception as e:  # noqa: BLE001 - recorded, and the check goes on
        message = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        if isinstance(e, torch.OutOfMemoryError) or "out of memory" in message.lower():
            return {"status": "out of memory"}
        return {"status": f"failed: {type(e).__name__}: {message}"}


def _time_for(seconds: float, deadline: float) -> bool:
    return time.monotonic() + seconds < deadline


def _measure(tokens: Path, device: str, sizes: Sizes, batch: int, *, compile: bool):
    """One throughput measurement (the figures, its wall time), or why it did not run."""
    options = argparse.Namespace(
        device=device,
        steps=sizes.steps,
        warmup=sizes.warmup,
        batch_size=batch,
        compile=compile,
        precision=None,  # the default: bf16 on a GPU, fp32 on CPU
        masked_weight=None,
        contrastive_weight=None,
        forecast_weight=None,
        forecast_share=None,
        views=None,
        mask_unit=None,
        visit_values_weight=None,
        value_embedding=None,
        code_hierarchy=None,
        pool_width=None,
    )
    started = time.perf_counter()
    row = _guarded(bench_train.measure, tokens, sizes.preset, options)
    if "status" in row:
        row = {"batch_size": batch, "compile": compile} | row
    else:
        row["status"] = "ok"
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    seconds = time.perf_counter() - started
    row["wall_s"] = round(seconds, 1)
    print(json.dumps(row), flush=True)
    return row, seconds


def extrapolate(rows: list[dict], data: dict) -> dict | None:
    """One epoch over 8M visits at the best measured tokens/s (steps alone: no tokenizing)."""
    measured = [r for r in rows if r["status"] == "ok"]
    if not measured:
        return None
    best = max(measured, key=lambda r: r["tokens_per_s"])
    tokens = EPOCH_VISITS * data["mean_tokens_per_visit"]
    return {
        "visits": EPOCH_VISITS,
        "mean_tokens_per_visit": data["mean_tokens_per_visit"],
        "at": {k: best[k] for k in ("batch_size", "compile", "tokens_per_s")},
        "hours": round(tokens / best["tokens_per_s"] / 3600, 2),
    }


def print_summary(report: dict) -> None:
    env, check = report["environment"], report["correctness"]
    print(f"\ngpu_check on {env.get('gpu', env['device'])}, torch {env['torch']}")
    if "status" in check:  # it raised
        print(f"correctness: {check['status']} -> FAILED")
    else:
        print(
            f"correctness ({check['precision']}, {check['steps']} steps): losses finite "
            f"{check['losses_finite']}, weights fp32 {check['weights_fp32']}, resume bitwise "
            f"{check['resume_bitwise']} (max diff {check['resume_max_abs_diff']:.3g}; rerun "
            f"{check['rerun_max_abs_diff']:.3g}) -> {'PASSED' if check['passed'] else 'FAILED'}"
        )
    columns = ("batch_size", "compile", "precision", "tokens_per_s", "encoder_tokens_per_s", "mfu",
               "encoder_padding_fraction", "peak_gpu_mem_gib", "step_ms", "status")  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in report["throughput"]:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    epoch = report["epoch_8m"]
    if epoch:
        print(
            f"one epoch over {epoch['visits']:,} visits ({epoch['mean_tokens_per_visit']} "
            f"tokens each) at {epoch['at']['tokens_per_s']:,} tokens/s: {epoch['hours']} h"
        )
    print(f"wall {report['wall_s']} s; figures in gpu_check.json")


if __name__ == "__main__":
    main()
