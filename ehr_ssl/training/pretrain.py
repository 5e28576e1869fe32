"""The pretraining loop, explicit and readable top to bottom (no Trainer framework).

AdamW (no decay on biases, norms and embeddings), linear warmup then cosine decay (a pure function
of the step), gradient clipping, train.precision (bf16 autocast on GPU, fp32 on CPU unless
asked), optional torch.compile, length-bucketed batches streamed from memory-mapped shards,
atomic checkpoints every N steps, and a resume that continues bit for bit. The loop owns device
and precision (`ehr_ssl.training.device`); the model and the losses know nothing about either.
With `objective.contrastive_views = "patient"` each batch also carries a partner visit of the same
(train-split) patient per visit, drawn from (seed, epoch, batch).

Under torchrun the same loop runs data-parallel (DistributedDataParallel): train.batch_size is
the global batch, each process reads and encodes its share of it, contrastive negatives come
from every process, and rank 0 alone writes checkpoints, metrics and the encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ehr_ssl.artifacts import save_safetensors, sha256_file
from ehr_ssl.atomic import atomic_directory, atomic_file, atomic_write_text
from ehr_ssl.config import OBJECTIVE_WEIGHTS, PretrainConfig, TrainConfig
from ehr_ssl.data.splits import SPLITS
from ehr_ssl.errors import InputError, TrainingError
from ehr_ssl.layout import (
    CHECKPOINTS_DIR,
    ENCODER_DIR,
    HEADS_FILE,
    METRICS_FILE,
    OUTPUT_MARKER_FILE,
    PRETRAIN_SUMMARY_FILE,
    RUN_CONFIG_FILE,
    TENSORBOARD_DIR,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)
from ehr_ssl.model.encoder import (
    MAX_ANCESTORS_PER_CODE,
    EHRConfig,
    EHREncoder,
    config_from_settings,
    resolve_model_settings,
)
from ehr_ssl.model.pretraining import PretrainingModel
from ehr_ssl.outputs import check_output_dir, check_outside_inputs, mark_output_dir, output_lock
from ehr_ssl.settings import to_dict
from ehr_ssl.tokens.batching import LengthBucketSampler, TokenDataset, collate
from ehr_ssl.tokens.hierarchy import ancestor_index, read_parent_codes
from ehr_ssl.tokens.pairs import (
    PARTNER,
    PairedDataset,
    PatientPairSampler,
    PatientVisits,
    collate_pairs,
)
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.training import distributed
from ehr_ssl.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ehr_ssl.training.device import DeviceSettings, device_settings, resolve_device
from ehr_ssl.training.optim import learning_rate, param_groups, set_learning_rate
from ehr_ssl.training.reporting import MetricsLog, StepReporter

log = logging.getLogger("ehr_ssl")


def pretraining_selection(include_test_unlabeled: bool) -> pl.Expr:
    """Every visit of patients outside the test split, labeled or not; optionally also the test
    patients' unlabeled visits (transductive). Test labels are never used."""
    outside_test = pl.col("split") != "test"
    if include_test_unlabeled:
        return outside_test | ~pl.col("labeled")
    return outside_test


@dataclass(frozen=True)
class _Plan:
    """What the input checks established, before anything is written."""

    tokenizer: Tokenizer
    dataset: TokenDataset
    hardware: DeviceSettings  # the device and what training does differently there
    rank: distributed.Rank
    steps_per_epoch: int
    total_steps: int
    warm_encoder: EHREncoder | None  # init_encoder's weights, or None for a random encoder
    hierarchy: CodeHierarchy | None = None  # under model.code_hierarchy "ancestors", else None
    patients: PatientVisits | None = None  # the partner lookup of "patient" views, else None


@dataclass
class _Learner:
    """What a step updates."""

    model: PretrainingModel
    trained: nn.Module  # what the forward runs through: the model, compiled or DDP-wrapped
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the objectives' random inputs (masks, views)
    hardware: DeviceSettings  # where the model, its batches and the generator live; precision


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
    pretrain_summary.json, the completion marker). `out_dir` must be new, empty or a pretraining
    directory (to resume), outside the inputs; rank 0 holds its lock while it trains.
    """
    tokens_dir, out_dir = Path(tokens_dir), Path(out_dir)
    check_output_dir(out_dir, "pretrain")
    check_outside_inputs(out_dir, {"--tokens": tokens_dir, "init_encoder": init_encoder})
    with output_lock(out_dir, enabled=distributed.current().is_main, clean_inside=True):
        return _pretrain(tokens_dir, out_dir, config, resume=resume, init_encoder=init_encoder)


def _pretrain(
    tokens_dir: Path,
    out_dir: Path,
    config: PretrainConfig,
    *,
    resume: bool,
    init_encoder: Path | None,
) -> dict:
    """`pretrain` once its output is checked and locked."""
    # every architecture setting recorded; a bad [model] key stops before anything is written
    config = dataclasses.replace(config, model=resolve_model_settings(config.model))
    plan = _check_inputs(tokens_dir, config, init_encoder)
    record = _run_record(tokens_dir, config, init_encoder, len(plan.dataset))
    learner = _build(plan, config)  # a model too large to build fails before anything is written
    if plan.rank.is_main:
        _prepare_run_dir(out_dir, record, resume=resume)
    distributed.barrier()  # the others resume from what rank 0 has checked

    step, position = _restore(out_dir, learner, resume=resume)
    metrics = (
        MetricsLog(out_dir, resume_step=step, tensorboard=config.train.tensorboard)
        if plan.rank.is_main
        else None
    )
    learner.trained = _compile_and_distribute(learner.model, plan, config)
    _log_start(plan, config, learner.model.encoder)
    reporter = StepReporter(
        metrics,
        step=step,
        total_steps=plan.total_steps,
        show_bar=sys.stderr.isatty() and plan.rank.is_main,
        desc="pretrain",
    )
    step = _train(learner, plan, config.train, reporter, out_dir, step, position)
    reporter.close()

    summary = None
    if plan.rank.is_main:
        summary = _finish(
            out_dir, tokens_dir, learner.model, config, reporter.last, step, len(plan.dataset)
        )
    distributed.barrier()  # what follows (fine-tuning) reads the encoder rank 0 wrote
    if not plan.rank.is_main:
        summary = json.loads((out_dir / PRETRAIN_SUMMARY_FILE).read_text())
    return summary


def _check_inputs(tokens_dir: Path, config: PretrainConfig, init_encoder: Path | None) -> _Plan:
    """Every check comes before anything is written, so a refused start leaves no trace."""
    tokenizer = Tokenizer.load(tokens_dir)
    train = config.train
    rank = distributed.current()
    hardware = device_settings(
        resolve_device(train.device), train.precision, train.pad_to_multiple_of
    )
    if train.batch_size % rank.world_size:
        raise InputError(
            f"{train.batch_size} is not divisible by the {rank.world_size} processes (it is the "
            "global batch: each process takes an equal share)",
            setting="train.batch_size",
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
    if train.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise InputError(
            "tensorboard is not installed (pip install tensorboard)", setting="train.tensorboard"
        )
    return _Plan(
        tokenizer=tokenizer,
        dataset=dataset,
        hardware=hardware,
        rank=rank,
        steps_per_epoch=steps_per_epoch,
        total_steps=train.max_steps or train.epochs * steps_per_epoch,
        warm_encoder=_warm_encoder(init_encoder, tokenizer),
        # a warm encoder keeps its own (the one its weights were trained with)
        hierarchy=None if init_encoder else read_code_hierarchy(tokens_dir, tokenizer, config),
        patients=_patient_visits(dataset, config),
    )


def _patient_visits(dataset: TokenDataset, config: PretrainConfig) -> PatientVisits | None:
    """The partner lookup when the contrastive term uses "patient" views, else None."""
    objective = config.objective
    if objective.contrastive_weight == 0 or objective.contrastive_views != "patient":
        return None
    patients = PatientVisits.of_dataset(dataset)
    share = float((patients.partner_counts(np.arange(len(dataset))) > 0).mean())
    # A share, never an identifier: patient ids stay in memory.
    log.info("pretrain: %.1f%% of the visits have a partner visit (patient views)", 100 * share)
    return patients


def _warm_encoder(init_encoder: Path | None, tokenizer: Tokenizer) -> EHREncoder | None:
    """The encoder to warm-start from, checked against the tokens' vocabulary; None if none."""
    if init_encoder is None:
        return None
    warm = EHREncoder.load_checked(init_encoder)
    if warm.config.vocab_size != tokenizer.vocab_size:
        raise InputError(
            f"the encoder's vocabulary ({warm.config.vocab_size}) is not the tokens' "
            f"({tokenizer.vocab_size})",
            file=str(init_encoder),
        )
    return warm


def _run_record(
    tokens_dir: Path, config: PretrainConfig, init_encoder: Path | None, n_visits: int
) -> dict:
    """run_config.json: the configuration and the data a resume must find unchanged."""
    return {
        "config": to_dict(config),
        "init_encoder": None if init_encoder is None else str(Path(init_encoder).resolve()),
        "init_encoder_sha256": None
        if init_encoder is None
        else sha256_file(Path(init_encoder) / WEIGHTS_FILE),
        "data": {
            "tokens_dir": str(tokens_dir.resolve()),
            "tokenizer_sha256": hashlib.sha256(
                (tokens_dir / TOKENIZER_FILE).read_bytes()
            ).hexdigest(),
            "pretraining_visits": n_visits,
        },
    }


def _build(plan: _Plan, config: PretrainConfig) -> _Learner:
    """The seeded model (a random or the warm-started encoder, fresh heads), AdamW (no decay
    on biases, norms and embeddings) and the objectives' generator."""
    train, tokenizer = config.train, plan.tokenizer
    torch.manual_seed(train.seed)
    if plan.warm_encoder is not None:
        encoder = plan.warm_encoder
    else:
        encoder = build_encoder(tokenizer, config, plan.hierarchy)
    hardware = plan.hardware
    model = PretrainingModel(
        encoder, config.objective, pad_to_multiple_of=hardware.pad_to_multiple_of
    ).to(hardware.device)
    optimizer = torch.optim.AdamW(
        param_groups(model, train.weight_decay),
        lr=train.learning_rate,
        betas=(0.9, 0.98),
        fused=hardware.fused_optimizer,
    )
    return _Learner(
        model,
        trained=model,
        optimizer=optimizer,
        generator=hardware.generator(train.seed),
        hardware=hardware,
    )


def _restore(out_dir: Path, learner: _Learner, *, resume: bool) -> tuple[int, dict]:
    """The step and data position to start from: the latest checkpoint's on resume (model,
    optimizer and generator restored), else step 0 at the start of epoch 0."""
    step, position = 0, {"epoch": 0, "batch": 0}
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        step, position = load_checkpoint(
            checkpoint,
            model=learner.model,
            optimizer=learner.optimizer,
            generator=learner.generator,
        )
        log.info("pretrain: resumed from %s (step %d)", checkpoint.name, step)
    elif resume:
        log.info("pretrain: no checkpoint in %s yet, starting from step 0", out_dir)
    return step, position


def _compile_and_distribute(
    model: PretrainingModel, plan: _Plan, config: PretrainConfig
) -> nn.Module:
    """What the forward runs through: the model, its encoder compiled if asked, wrapped in
    DistributedDataParallel under torchrun."""
    if config.train.compile:
        model.encoder.compile()  # in place: state_dict keys (and checkpoints) stay the same
    if not plan.rank.distributed:
        return model
    # A term switched off leaves its head without gradients, which DDP must be told.
    one_term = min(config.objective.masked_weight, config.objective.contrastive_weight) == 0
    return DistributedDataParallel(
        model,
        device_ids=plan.hardware.ddp_device_ids,
        find_unused_parameters=one_term,
    )


def _log_start(plan: _Plan, config: PretrainConfig, encoder: EHREncoder) -> None:
    """One line on what is about to run: data, steps, preset, devices, precision, model size."""
    log.info(
        "pretrain: %d visits, %d steps (%d per epoch), %s, %s x %d, %s, %.2fM parameters",
        len(plan.dataset),
        plan.total_steps,
        plan.steps_per_epoch,
        config.preset,
        plan.hardware.device,
        plan.rank.world_size,
        plan.hardware.precision,
        sum(p.numel() for p in encoder.parameters()) / 1e6,
    )


def _train(
    learner: _Learner,
    plan: _Plan,
    train: TrainConfig,
    reporter: StepReporter,
    out_dir: Path,
    step: int,
    position: dict,
) -> int:
    """The loop: steps up to plan.total_steps, epoch after epoch from `position`, logging and
    checkpointing on schedule. Returns the last step."""
    learner.model.train()
    while step < plan.total_steps:
        global_batches, loader = _epoch_batches(plan, train, position)
        tick = time.perf_counter()
        for indices, batch in zip(global_batches, loader, strict=True):
            data_time = time.perf_counter() - tick
            batch, rows = _to_device(batch, indices, plan)
            lr = learning_rate(step, train, plan.total_steps)
            losses, grad_norm, encoder_counts = _train_step(learner, batch, rows, lr, step, train)
            step += 1
            position = {"epoch": position["epoch"], "batch": position["batch"] + 1}
            real_tokens = batch["attention_mask"][rows or slice(None)]
            reporter.add(real_tokens, encoder_counts, data_time, time.perf_counter() - tick)
            last_step = step == plan.total_steps
            if step % train.log_every == 0 or last_step:
                reporter.log(step, position["epoch"], lr, losses, grad_norm)
            if plan.rank.is_main and (step % train.checkpoint_every == 0 or last_step):
                save_checkpoint(
                    out_dir,
                    step=step,
                    model=learner.model,
                    optimizer=learner.optimizer,
                    generator=learner.generator,
                    data_position=position,
                    keep=train.keep_checkpoints,
                )
            if step >= plan.total_steps:
                break
            tick = time.perf_counter()
        else:  # the epoch ran out
            position = {"epoch": position["epoch"] + 1, "batch": 0}
    return step


def _epoch_batches(
    plan: _Plan, train: TrainConfig, position: dict
) -> tuple[list[tuple[np.ndarray, ...]], DataLoader]:
    """The rest of an epoch from `position`: its global batches (visit indices, and with
    "patient" views their partners' too, for their longest visit) and a loader of this
    process's share of each, length-bucketed."""
    sampler = LengthBucketSampler(
        plan.dataset.lengths,
        train.batch_size,
        seed=train.seed,
        epoch=position["epoch"],
        start_batch=position["batch"],
        rank=plan.rank.rank,
        world_size=plan.rank.world_size,
    )
    if plan.patients is None:
        dataset, collate_fn, batch_sampler = plan.dataset, collate, sampler
        batches = [(b,) for b in sampler.batches()[position["batch"] :]]
    else:  # each visit with a partner visit of its patient, drawn per (seed, epoch, batch)
        batch_sampler = PatientPairSampler(sampler, plan.patients)
        dataset, collate_fn = PairedDataset(plan.dataset), collate_pairs
        batches = batch_sampler.batches()
    loader = DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_fn,
        num_workers=train.num_workers,
        pin_memory=plan.hardware.pin_memory,
        generator=torch.Generator(),  # keeps the global RNG (dropout) untouched by loaders
    )
    return batches, loader


def _to_device(
    batch: dict[str, torch.Tensor], indices: tuple[np.ndarray, ...], plan: _Plan
) -> tuple[dict[str, torch.Tensor], slice | None]:
    """The batch on the device and, under torchrun, this process's rows of the global batch
    (`indices`: the global batch's visits, then their partners where the batch has them)."""
    batch = {k: v.to(plan.hardware.device, non_blocking=True) for k, v in batch.items()}
    if not plan.rank.distributed:
        return batch, None
    # Random inputs are drawn on the global batch, as one process would draw them; each view
    # is padded to its own longest visit, as the single-process collate pads it.
    longest = [int(plan.dataset.lengths[i].max()) for i in indices]
    own = {k: v for k, v in batch.items() if not k.startswith(PARTNER)}
    gathered = distributed.gather_rows(own, longest[0])
    if len(indices) > 1:
        partner = {k: v for k, v in batch.items() if k.startswith(PARTNER)}
        gathered.update(distributed.gather_rows(partner, longest[1]))
    return gathered, plan.rank.rows(len(indices[0]))


def _train_step(
    learner: _Learner,
    batch: dict[str, torch.Tensor],
    rows: slice | None,
    lr: float,
    step: int,
    train: TrainConfig,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One update at learning rate `lr`: forward (in the run's precision), backward, clipping,
    and a stop before the update on a non-finite loss or gradient. Returns the loss terms, the
    gradient norm and the encoder's real tokens and slots."""
    set_learning_rate(learner.optimizer, lr)
    with learner.hardware.autocast():
        losses = learner.trained(batch, learner.generator, rows)
    encoder_counts = losses.pop("encoder_tokens"), losses.pop("encoder_slots")
    loss = losses["loss"]
    learner.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(learner.model.parameters(), train.grad_clip)
    # The gradient norm is the same on every process (gradients are averaged), so all of them
    # stop together; no update has been made.
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        raise TrainingError(
            f"non-finite loss ({loss.item()}) or gradient at step {step}: training "
            "stopped; lower train.learning_rate or check the tokens (last checkpoint kept)"
        )
    learner.optimizer.step()
    return losses, grad_norm, encoder_counts


def encoder_config(
    tokenizer: Tokenizer, config: PretrainConfig, hierarchy: CodeHierarchy | None = None
) -> EHRConfig:
    """The encoder's architecture: the `[model]` settings and the tokenizer's sizes (and the
    code hierarchy's, when there is one)."""
    derived = {}
    if hierarchy is not None:
        derived = {"n_code_ancestors": hierarchy.n_ancestors,
                   "ancestors_per_code": hierarchy.ids.shape[1]}  # fmt: skip
    return config_from_settings(
        config.model,
        vocab_size=tokenizer.vocab_size,
        n_value_bins=tokenizer.config.n_bins + 1,
        max_position_embeddings=tokenizer.config.max_length,
        **derived,
    )


@dataclass(frozen=True)
class CodeHierarchy:
    """The ancestors an encoder embeds: how many, and each code's. Shape: ids (V, K)."""

    n_ancestors: int
    ids: np.ndarray


def read_code_hierarchy(
    tokens_dir: Path, tokenizer: Tokenizer, config: PretrainConfig
) -> CodeHierarchy | None:
    """The vocabulary's ancestors (the tokens' MEDS parent table, else the ICD/ATC spelling
    rule) under `model.code_hierarchy = "ancestors"`; None otherwise."""
    if resolve_model_settings(config.model)["code_hierarchy"] != "ancestors":
        return None
    parents = read_parent_codes(tokens_dir)
    names, ids = ancestor_index(tokenizer.vocab, parents, MAX_ANCESTORS_PER_CODE)
    log.info(
        "code hierarchy (%s): %d ancestors above %d of %d codes",
        "parent table" if parents is not None else "ICD/ATC spelling",
        len(names),
        int((ids > 0).any(1).sum()),
        tokenizer.vocab_size,
    )
    return CodeHierarchy(len(names), ids)


def build_encoder(
    tokenizer: Tokenizer, config: PretrainConfig, hierarchy: CodeHierarchy | None = None
) -> EHREncoder:
    """A randomly initialized encoder for these tokens, its code ancestors loaded."""
    encoder = EHREncoder(encoder_config(tokenizer, config, hierarchy))
    if hierarchy is not None:
        encoder.set_code_ancestors(hierarchy.ids)
    return encoder


def _prepare_run_dir(out_dir: Path, run: dict, *, resume: bool) -> None:
    """Create the run directory, or check that a resumed run has the same configuration and
    data (tokenizer and visit count: the learning-rate schedule depends on the latter)."""
    saved = out_dir / RUN_CONFIG_FILE
    if resume and saved.exists():
        try:
            previous = json.loads(saved.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e})", file=str(saved)) from None
        # The tokens are identified by the tokenizer's hash and the visit count, the warm start
        # by its weights' hash, not by their paths: a run directory may move with its inputs.
        moved = ("data.tokens_dir", "init_encoder")
        changed = sorted(c for c in _diff(previous, run) if c not in moved)
        if changed:
            raise InputError(
                f"differs from the run being resumed ({', '.join(changed)})", file=str(saved)
            )
        mark_output_dir(out_dir, "pretrain")  # one an earlier version wrote gains its marker
        return
    if not resume:
        _clear_untrained_attempt(out_dir)
        if out_dir.exists() and any(p.name != OUTPUT_MARKER_FILE for p in out_dir.iterdir()):
            raise InputError(
                "output directory is not empty (use --resume to continue that run)",
                file=str(out_dir),
            )
    mark_output_dir(out_dir, "pretrain")
    atomic_write_text(saved, json.dumps(run, indent=2) + "\n")


# What a pretraining that failed or was killed before its first checkpoint leaves: nothing that
# --resume could continue from.
_UNTRAINED_LEFTOVERS = {RUN_CONFIG_FILE, METRICS_FILE, TENSORBOARD_DIR, CHECKPOINTS_DIR}


def _clear_untrained_attempt(out_dir: Path) -> None:
    """Remove what a pretraining that stopped before its first checkpoint left (its record,
    metrics of no step kept), so that a plain rerun is not refused for it. A directory holding
    anything more (a checkpoint, an encoder, files not ours) is left as it is."""
    if not out_dir.is_dir():
        return
    entries = [p for p in out_dir.iterdir() if p.name != OUTPUT_MARKER_FILE]
    names = {p.name for p in entries}
    if RUN_CONFIG_FILE not in names or not names <= _UNTRAINED_LEFTOVERS:
        return
    if latest_checkpoint(out_dir) is not None:
        return
    log.info("pretrain: %s holds a pretraining stopped before any checkpoint: starting afresh",
             out_dir)  # fmt: skip
    for path in entries:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


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
        model.encoder.save_checked(tmp)
    heads = {  # every head the run trained: all but the encoder (a term's head only when on)
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("encoder.")
    }
    with atomic_file(out_dir / HEADS_FILE) as tmp:
        save_safetensors(heads, tmp)
    with atomic_file(out_dir / TOKENIZER_FILE) as tmp:
        shutil.copyfile(tokens_dir / TOKENIZER_FILE, tmp)
    summary = {
        "steps": step,
        "pretraining_visits": n_visits,
        "transductive": config.train.include_test_unlabeled,
        "objectives": {  # the weights of every term, off ones included
            name: getattr(config.objective, name) for name in OBJECTIVE_WEIGHTS
        },
        "final_metrics": last,
        "tokens_dir": str(tokens_dir),
    }
    atomic_write_text(out_dir / PRETRAIN_SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary
