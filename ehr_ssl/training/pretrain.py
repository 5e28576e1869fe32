"""The pretraining loop, explicit and readable top to bottom (no Trainer framework).

AdamW (no decay on biases, norms and embeddings), linear warmup then cosine decay (a pure function
of the step), gradient clipping, bf16 autocast on CUDA and fp32 on CPU, optional torch.compile,
length-bucketed batches streamed from memory-mapped shards, atomic checkpoints every N steps, and
a resume that continues bit for bit. The loop owns device and precision; the model and the losses
know nothing about either.

Under torchrun the same loop runs data-parallel (DistributedDataParallel): train.batch_size is
the global batch, each process reads and encodes its share of it, contrastive negatives come
from every process, and rank 0 alone writes checkpoints, metrics and the encoder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import polars as pl
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ehr_ssl.atomic import atomic_directory, atomic_file, atomic_write_text
from ehr_ssl.config import PretrainConfig, TrainConfig, to_dict
from ehr_ssl.data.splits import SPLITS
from ehr_ssl.errors import InputError, TrainingError
from ehr_ssl.layout import (
    ENCODER_DIR,
    HEADS_FILE,
    METRICS_FILE,
    PRETRAIN_SUMMARY_FILE,
    RUN_CONFIG_FILE,
    TENSORBOARD_DIR,
    TOKENIZER_FILE,
)
from ehr_ssl.model.encoder import EHRConfig, EHREncoder, config_from_settings
from ehr_ssl.model.pretraining import PretrainingModel
from ehr_ssl.tokens.batching import LengthBucketSampler, TokenDataset, collate
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.training import distributed
from ehr_ssl.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger("ehr_ssl")


def resolve_device(name: str) -> torch.device:
    """The training device; CUDA with its index, so tensors and generators agree exactly."""
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but no CUDA device is available", column="device")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def learning_rate(step: int, config: TrainConfig, total_steps: int) -> float:
    """Linear warmup over warmup_steps, then cosine decay to learning_rate * min_lr_ratio."""
    peak, floor = config.learning_rate, config.learning_rate * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    span = max(total_steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices of linear layers only; biases, norms and embeddings get none."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_matrix = isinstance(module, nn.Linear) and name == "weight"
            (decay if is_matrix else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def pretraining_selection(include_test_unlabeled: bool) -> pl.Expr:
    """Every visit of patients outside the test split, labeled or not; optionally also the test
    patients' unlabeled visits (transductive). Test labels are never used."""
    outside_test = pl.col("split") != "test"
    if include_test_unlabeled:
        return outside_test | ~pl.col("labeled")
    return outside_test


class MetricsLog:
    """metrics.jsonl (one JSON object per logged step), optionally mirrored to TensorBoard."""

    def __init__(self, run_dir: Path, *, resume_step: int, tensorboard: bool):
        self.path = run_dir / METRICS_FILE
        self.last: dict = {}
        if self.path.exists():
            # Keep what led to the checkpoint being resumed; drop what a killed run wrote after
            # it, and a half-written last line.
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record["step"] <= resume_step:
                    kept.append(record)
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            self.last = kept[-1] if kept else {}
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops the points a killed run logged after the checkpoint.
            self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=resume_step + 1)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.last = record
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, float) and key != "elapsed_s":
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def pretrain(
    tokens_dir: Path,
    out_dir: Path,
    config: PretrainConfig,
    *,
    resume: bool = False,
    init_encoder: Path | None = None,
) -> dict:
    """Pretrain an encoder on the token shards of `tokens_dir`; write the run to `out_dir`.

    `init_encoder` (a save_pretrained directory) warm-starts from that encoder's weights and
    architecture instead of a random `config.model` (its vocabulary must be the tokens'); the
    pretraining heads start fresh. Returns the run summary (also written as
    pretrain_summary.json, the completion marker).
    """
    tokens_dir, out_dir = Path(tokens_dir), Path(out_dir)
    # Every check comes before anything is written, so a refused start leaves no trace.
    tokenizer = Tokenizer.load(tokens_dir)
    train = config.train
    rank = distributed.current()
    device = resolve_device(train.device)
    if train.batch_size % rank.world_size:
        raise InputError(
            f"{train.batch_size} is not divisible by the {rank.world_size} processes (it is the "
            "global batch: each process takes an equal share)",
            column="train.batch_size",
        )
    dataset = TokenDataset(
        tokens_dir, pretraining_selection(train.include_test_unlabeled), splits=SPLITS
    )
    if len(dataset) < train.batch_size:
        raise InputError(
            f"{len(dataset)} visits for pretraining, fewer than one batch of {train.batch_size}",
            file=str(tokens_dir),
        )
    steps_per_epoch = len(LengthBucketSampler(dataset.lengths, train.batch_size, seed=train.seed))
    total_steps = train.max_steps or train.epochs * steps_per_epoch
    if train.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise InputError(
            "tensorboard is not installed (pip install tensorboard)", column="train.tensorboard"
        )
    if init_encoder is not None:
        warm = EHREncoder.from_pretrained(init_encoder, use_safetensors=True)
        if warm.config.vocab_size != tokenizer.vocab_size:
            raise InputError(
                f"the encoder's vocabulary ({warm.config.vocab_size}) is not the tokens' "
                f"({tokenizer.vocab_size})",
                file=str(init_encoder),
            )
    run = {
        "config": to_dict(config),
        "init_encoder": None if init_encoder is None else str(Path(init_encoder).resolve()),
        "data": {
            "tokens_dir": str(tokens_dir.resolve()),
            "tokenizer_sha256": hashlib.sha256(
                (tokens_dir / TOKENIZER_FILE).read_bytes()
            ).hexdigest(),
            "pretraining_visits": len(dataset),
        },
    }
    if rank.is_main:
        _prepare_run_dir(out_dir, run, resume=resume)
    distributed.barrier()  # the others resume from what rank 0 has checked

    torch.manual_seed(train.seed)
    encoder = warm if init_encoder is not None else EHREncoder(encoder_config(tokenizer, config))
    model = PretrainingModel(
        encoder, config.objective, pad_to_multiple_of=train.pad_to_multiple_of
    ).to(device)
    optimizer = torch.optim.AdamW(
        param_groups(model, train.weight_decay),
        lr=train.learning_rate,
        betas=(0.9, 0.98),
        fused=device.type == "cuda",
    )
    generator = torch.Generator(device=device).manual_seed(train.seed)
    step, position = 0, {"epoch": 0, "batch": 0}
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        step, position = load_checkpoint(
            checkpoint, model=model, optimizer=optimizer, generator=generator
        )
        log.info("pretrain: resumed from %s (step %d)", checkpoint.name, step)
    elif resume:
        log.info("pretrain: no checkpoint in %s yet, starting from step 0", out_dir)
    metrics = (
        MetricsLog(out_dir, resume_step=step, tensorboard=train.tensorboard)
        if rank.is_main
        else None
    )
    if train.compile:
        encoder.compile()  # in place: state_dict keys (and checkpoints) stay the same
    trained: nn.Module = model
    if rank.distributed:
        # A term switched off leaves its head without gradients, which DDP must be told.
        one_term = min(config.objective.masked_weight, config.objective.contrastive_weight) == 0
        trained = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=one_term,
        )

    log.info(
        "pretrain: %d visits, %d steps (%d per epoch), %s, %s x %d, %.2fM parameters",
        len(dataset),
        total_steps,
        steps_per_epoch,
        config.preset,
        device,
        rank.world_size,
        sum(p.numel() for p in encoder.parameters()) / 1e6,
    )
    progress = tqdm(
        total=total_steps,
        initial=step,
        disable=not (sys.stderr.isatty() and rank.is_main),
        desc="pretrain",
    )
    started, window = time.perf_counter(), _Window()
    # A resumed run that had already finished keeps its final figures.
    last = metrics.last if metrics is not None else {}
    model.train()
    while step < total_steps:
        sampler = LengthBucketSampler(
            dataset.lengths,
            train.batch_size,
            seed=train.seed,
            epoch=position["epoch"],
            start_batch=position["batch"],
            rank=rank.rank,
            world_size=rank.world_size,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=train.num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),  # keeps the global RNG (dropout) untouched by loaders
        )
        tick = time.perf_counter()
        # The global batches, for their longest visit (this process's loader yields its share).
        global_batches = sampler.batches()[position["batch"] :]
        for indices, batch in zip(global_batches, loader, strict=True):
            data_time = time.perf_counter() - tick
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            rows = None
            if rank.distributed:
                # Random inputs are drawn on the global batch, as one process would draw them.
                batch = distributed.gather_rows(batch, int(dataset.lengths[indices].max()))
                rows = rank.rows(len(indices))
            lr = learning_rate(step, train, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                losses = trained(batch, generator, rows)
            encoder_tokens, encoder_slots = (
                losses.pop("encoder_tokens"),
                losses.pop("encoder_slots"),
            )
            loss = losses["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            # The gradient norm is the same on every process (gradients are averaged), so all of
            # them stop together; no update has been made.
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) or gradient at step {step}: training "
                    "stopped; lower train.learning_rate or check the tokens (last checkpoint kept)"
                )
            optimizer.step()
            step += 1
            position = {"epoch": position["epoch"], "batch": position["batch"] + 1}
            window.add(
                batch["attention_mask"][rows or slice(None)],
                encoder_tokens,
                encoder_slots,
                data_time,
                time.perf_counter() - tick,
            )
            progress.update(1)
            if step % train.log_every == 0 or step == total_steps:
                last = {
                    "step": step,
                    "epoch": position["epoch"],
                    "lr": lr,
                    **{k: float(v) for k, v in distributed.mean_over_ranks(losses).items()},
                    "grad_norm": float(grad_norm),
                    **window.flush(),
                    "elapsed_s": round(time.perf_counter() - started, 2),
                }
                if metrics is not None:
                    metrics.write(last)
                progress.set_postfix(
                    loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}"
                )
                if progress.disable:
                    log.info(
                        "step %d/%d loss %.4f lr %.2e %.0f tokens/s padding %.2f",
                        step,
                        total_steps,
                        last["loss"],
                        lr,
                        last["tokens_per_s"],
                        last["padding_fraction"],
                    )
            if rank.is_main and (step % train.checkpoint_every == 0 or step == total_steps):
                save_checkpoint(
                    out_dir,
                    step=step,
                    model=model,
                    optimizer=optimizer,
                    generator=generator,
                    data_position=position,
                    keep=train.keep_checkpoints,
                )
            if step >= total_steps:
                break
            tick = time.perf_counter()
        else:  # the epoch ran out
            position = {"epoch": position["epoch"] + 1, "batch": 0}
    progress.close()
    if metrics is not None:
        metrics.close()
        summary = _finish(out_dir, tokens_dir, model, config, last, step, len(dataset))
    distributed.barrier()  # what follows (fine-tuning) reads the encoder rank 0 wrote
    if not rank.is_main:
        summary = json.loads((out_dir / PRETRAIN_SUMMARY_FILE).read_text())
    return summary


def encoder_config(tokenizer: Tokenizer, config: PretrainConfig) -> EHRConfig:
    """The encoder's architecture: the `[model]` settings and the tokenizer's sizes."""
    return config_from_settings(
        config.model,
        vocab_size=tokenizer.vocab_size,
        n_value_bins=tokenizer.config.n_bins + 1,
        max_position_embeddings=tokenizer.config.max_length,
    )


class _Window:
    """Throughput figures over the steps since the last log line. Visit tokens are the real
    tokens of the batch (data throughput); encoder tokens and slots are what the encoder ran on
    (both views, padding included in slots)."""

    def __init__(self) -> None:
        self.tokens = self.encoder_tokens = self.encoder_slots = 0
        self.data_s = self.step_s = 0.0

    def add(
        self,
        attention_mask: torch.Tensor,
        encoder_tokens: torch.Tensor,
        encoder_slots: torch.Tensor,
        data_s: float,
        step_s: float,
    ) -> None:
        self.tokens += int(attention_mask.sum())
        self.encoder_tokens += int(encoder_tokens)
        self.encoder_slots += int(encoder_slots)
        self.data_s += data_s
        self.step_s += step_s

    def flush(self) -> dict:
        """The window's figures, token counts summed over processes; resets the window."""
        seconds = max(self.step_s, 1e-9)
        tokens, encoder_tokens, encoder_slots = distributed.sum_over_ranks(
            [self.tokens, self.encoder_tokens, self.encoder_slots]
        )
        figures = {
            "tokens_per_s": tokens / seconds,
            "encoder_tokens_per_s": encoder_tokens / seconds,
            "padding_fraction": 1 - encoder_tokens / max(encoder_slots, 1),
            "data_s": self.data_s,
            "compute_s": self.step_s - self.data_s,
        }
        self.__init__()
        return figures


def _prepare_run_dir(out_dir: Path, run: dict, *, resume: bool) -> None:
    """Create the run directory, or check that a resumed run has the same configuration and
    data (tokenizer and visit count: the learning-rate schedule depends on the latter)."""
    saved = out_dir / RUN_CONFIG_FILE
    if resume and saved.exists():
        try:
            previous = json.loads(saved.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e})", file=str(saved)) from None
        # The tokens are identified by the tokenizer's hash and the visit count, not by their
        # path: a run directory may move with its tokens.
        changed = sorted(c for c in _diff(previous, run) if c != "data.tokens_dir")
        if changed:
            raise InputError(
                f"differs from the run being resumed ({', '.join(changed)})", file=str(saved)
            )
        return
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise InputError(
            "output directory is not empty (use --resume to continue that run)", file=str(out_dir)
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, json.dumps(run, indent=2) + "\n")


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = set(a) | set(b)
    out = []
    for key in keys:
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            out += _diff(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            out.append(prefix + key)
    return out


def _finish(
    out_dir: Path,
    tokens_dir: Path,
    model: PretrainingModel,
    config: PretrainConfig,
    last: dict,
    step: int,
    n_visits: int,
) -> dict:
    """Write the encoder, the heads, the tokenizer and the summary (the completion marker)."""
    model = model.cpu()
    with atomic_directory(out_dir / ENCODER_DIR, overwrite=True) as tmp:
        model.encoder.save_pretrained(tmp)
    heads = {
        f"{name}.{k}": v.detach().contiguous()
        for name in ("masked_head", "projection")
        for k, v in getattr(model, name).state_dict().items()
    }
    with atomic_file(out_dir / HEADS_FILE) as tmp:
        save_file(heads, str(tmp))
    with atomic_file(out_dir / TOKENIZER_FILE) as tmp:
        shutil.copyfile(tokens_dir / TOKENIZER_FILE, tmp)
    summary = {
        "steps": step,
        "pretraining_visits": n_visits,
        "transductive": config.train.include_test_unlabeled,
        "objectives": {
            "masked_weight": config.objective.masked_weight,
            "contrastive_weight": config.objective.contrastive_weight,
        },
        "final_metrics": last,
        "tokens_dir": str(tokens_dir),
    }
    atomic_write_text(out_dir / PRETRAIN_SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary
