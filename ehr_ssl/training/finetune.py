"""Fine-tuning for hospital admission within 7 days: a classification head on the encoder.

Modes: `full` (the pretrained encoder trained further, at a lower learning rate than the head,
which starts as the linear probe: LP-FT),
`linear-probe` (a logistic regression on the frozen pretrained encoder's pooled vectors) and
`scratch` (the same architecture from random initialization: the supervised-only baseline).
Class imbalance is handled by loss weighting (the positive class weighted by n_negative /
n_positive of the training labels). The epoch, for the probe the regularization, and in full
mode probe-versus-fine-tuning (epoch 0 is the probe) are chosen on the budget's labels only,
under its selection protocol: by the mean AUROC of cv folds (every fold trained in step, then a
refit on all the budget's visits for the chosen number of epochs), or on the val split
(holdout). Fine-tuning never reads the test split.

Under torchrun, full and scratch fine-tuning run data-parallel (batch_size is the global batch,
fewer than N random visits of an epoch sit out so that the last batch shares equally); every
process scores validation and rank 0's AUROC decides, so all keep the same epoch; rank 0 alone
writes. The training loop itself is `ehr_ssl.training.classifier_loop`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ehr_ssl.artifacts import save_safetensors
from ehr_ssl.atomic import atomic_directory, atomic_write_text
from ehr_ssl.config import FinetuneConfig
from ehr_ssl.errors import InputError
from ehr_ssl.layout import CLASSIFIER_DIR, FINETUNE_SUMMARY_FILE, PROBE_FILE, TOKENIZER_FILE
from ehr_ssl.model.classifier import AdmissionClassifier
from ehr_ssl.model.encoder import FORECAST_READOUT_NEEDS, EHRConfig, EHREncoder, load_config
from ehr_ssl.outputs import check_output_dir, check_outside_inputs, output_lock, write_marker
from ehr_ssl.settings import to_dict
from ehr_ssl.tokens.batching import TokenDataset
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.training import distributed
from ehr_ssl.training.budgets import budget_ids
from ehr_ssl.training.classifier_loop import (
    EpochSelection,
    Fold,
    build_classifier,
    predict_scores,
    start_training,
    val_figures,
    val_score,
)
from ehr_ssl.training.device import resolve_device
from ehr_ssl.training.probe import (
    fit_probe_cv,
    init_head_from_probe,
    linear_probe,
    load_probe,
    pooled_vectors,
    probe_scores,
    probe_summary,
    set_head,
)
from ehr_ssl.training.selection import Folds, FoldScore, cv_folds

log = logging.getLogger("ehr_ssl")


def labeled_split(tokens_dir: Path, split: str, visit_ids: pl.Series | None = None) -> TokenDataset:
    """Labeled visits of one split, optionally only those in `visit_ids` (a label budget)."""
    selection = (pl.col("split") == split) & pl.col("labeled")
    if visit_ids is not None:
        selection = selection & pl.col("visit_id").is_in(visit_ids.implode())
    return TokenDataset(tokens_dir, selection, splits=[split])


def finetune(
    tokens_dir: Path,
    encoder_dir: Path | None,
    out_dir: Path,
    config: FinetuneConfig,
    *,
    train_ids: pl.Series | None = None,
    val_ids: pl.Series | None = None,
) -> dict:
    """Fine-tune on a label budget's visits and select under its protocol
    (`ehr_ssl.training.selection`): on val (holdout), or by cv folds within the train visits,
    then refit on all of them. A budget comes either as visit ids (`train_ids`, `val_ids`,
    e.g. shared with the baselines; empty `val_ids` means cv) or from `config` (its
    label_budget, seed and selection; see `ehr_ssl.training.budgets.budget_ids`).

    `encoder_dir` is a pretrained encoder (save_pretrained directory); scratch mode takes only
    its architecture. Writes the selected model (safetensors + config.json) and a summary to
    `out_dir` atomically and returns the summary. Never reads the test split. `out_dir` must be
    new, empty or an earlier fine-tuning directory, outside the inputs; rank 0 holds its lock.
    """
    tokens_dir, out_dir = Path(tokens_dir), Path(out_dir)
    if encoder_dir is None:
        raise InputError("a pretrained encoder directory is needed", setting="finetune.encoder")
    check_output_dir(out_dir, "finetune")
    check_outside_inputs(out_dir, {"--tokens": tokens_dir, "--encoder": encoder_dir})
    with output_lock(out_dir, enabled=distributed.current().is_main):
        return _finetune(tokens_dir, Path(encoder_dir), out_dir, config, train_ids, val_ids)


def _finetune(
    tokens_dir: Path,
    encoder_dir: Path,
    out_dir: Path,
    config: FinetuneConfig,
    train_ids: pl.Series | None,
    val_ids: pl.Series | None,
) -> dict:
    """`finetune` once its output is checked and locked."""
    encoder_config = load_config(encoder_dir)
    _check_encoder_fits_tokens(tokens_dir, Path(encoder_dir), encoder_config, config.mode)
    if config.readout == "forecast" and not encoder_config.forecast_state:
        raise InputError(f"finetune.readout: {FORECAST_READOUT_NEEDS}", file=str(encoder_dir))
    if train_ids is None and val_ids is None:
        train_ids, val_ids = budget_ids(tokens_dir, config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if val_ids is not None and len(val_ids) == 0:  # cv selection within the train ids
        train = _labeled_train(tokens_dir, train_ids)
        _check_processes(config, len(train), tokens_dir)
        model, summary = _cv_finetune(encoder_dir, encoder_config, train, config, device)
        n_val = 0
    else:
        train, val = _labeled_splits(tokens_dir, train_ids, val_ids)
        _check_processes(config, len(train), tokens_dir)
        model, summary = _holdout_finetune(encoder_dir, encoder_config, train, val, config, device)
        summary["selection"] = {"protocol": "holdout"}
        n_val = len(val)
    if config.mode == "full":  # epoch 0 is the probe the head started from (LP-FT)
        summary["selected"] = "probe" if summary["selected_epoch"] == 0 else "fine-tuned"
    summary.update(
        {"mode": config.mode, "readout": config.readout, "train_labeled": len(train),
         "val_labeled": n_val, "config": to_dict(config)}
    )  # fmt: skip
    probe = summary.pop("_probe", None)
    if distributed.current().is_main:
        _write(out_dir, summary, model, probe)
    distributed.barrier()  # the next stage reads what rank 0 wrote
    return summary


def _check_encoder_fits_tokens(
    tokens_dir: Path, encoder_dir: Path, encoder_config: EHRConfig, mode: str
) -> None:
    """The encoder reads these tokens as it was pretrained to: the same tokenizer (by its hash,
    where the pretraining directory kept a copy beside the encoder, as `--resume` checks) and
    in every mode the same vocabulary and bins (scratch mode takes only the architecture, and
    with code_hierarchy "ancestors" the per-code ancestor index, so the same tokenizer too)."""
    tokenizer = Tokenizer.load(tokens_dir)
    sizes = {
        "vocabulary": (encoder_config.vocab_size, tokenizer.vocab_size),
        "value bins": (encoder_config.n_value_bins, tokenizer.config.n_bins + 1),
    }
    mismatched = [f"{name} {ours} vs {theirs}" for name, (ours, theirs) in sizes.items()
                  if ours != theirs]  # fmt: skip
    pretrained_with = encoder_dir.parent / TOKENIZER_FILE
    reads_codes = mode != "scratch" or encoder_config.code_hierarchy == "ancestors"
    if reads_codes and not mismatched and pretrained_with.is_file():
        digests = [hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in (pretrained_with, tokens_dir / TOKENIZER_FILE)]  # fmt: skip
        if digests[0] != digests[1]:
            mismatched.append("the same sizes but another tokenizer.json")
    if mismatched:
        raise InputError(
            "the encoder was pretrained on tokens of another tokenizer "
            f"({'; '.join(mismatched)}, encoder vs tokens): fine-tune it on the tokens it was "
            "pretrained on",
            file=str(encoder_dir),
        )


def _holdout_finetune(
    encoder_dir: Path,
    encoder_config: EHRConfig,
    train: TokenDataset,
    val: TokenDataset,
    config: FinetuneConfig,
    device: torch.device,
) -> tuple[AdmissionClassifier | None, dict]:
    """Holdout selection: fit on train, choose on val. Returns the model (None for a probe,
    whose tensors are in the summary under "_probe") and the summary."""
    if config.mode == "linear-probe":
        return None, linear_probe(encoder_dir, train, val, device, readout=config.readout)
    return _train_classifier(encoder_dir, encoder_config, train, val, config, device)


def _labeled_train(tokens_dir: Path, train_ids: pl.Series) -> TokenDataset:
    """The budget's labeled train visits, for cv selection: both classes needed."""
    return _with_both_classes(labeled_split(tokens_dir, "train", train_ids), "train", tokens_dir)


def _labeled_splits(
    tokens_dir: Path, train_ids: pl.Series | None, val_ids: pl.Series | None
) -> tuple[TokenDataset, TokenDataset]:
    """The labeled train and val visits (of a label budget, if ids are given); each must hold
    both classes."""
    return (
        _with_both_classes(labeled_split(tokens_dir, "train", train_ids), "train", tokens_dir),
        _with_both_classes(labeled_split(tokens_dir, "val", val_ids), "val", tokens_dir),
    )


def _with_both_classes(dataset: TokenDataset, split: str, tokens_dir: Path) -> TokenDataset:
    if len(np.unique(dataset.labels)) < 2:
        raise InputError(
            f"the {split} split needs labeled visits of both classes, has {len(dataset)} "
            "labeled visits",
            file=str(tokens_dir),
        )
    return dataset


def _check_processes(config: FinetuneConfig, n_train: int, tokens_dir: Path) -> None:
    """Under torchrun, the global batch and the train visits must share out over processes."""
    rank = distributed.current()
    if config.mode != "linear-probe" and config.batch_size % rank.world_size:
        raise InputError(
            f"{config.batch_size} is not divisible by the {rank.world_size} processes (it is the "
            "global batch: each process takes an equal share)",
            setting="finetune.batch_size",
        )
    if rank.distributed and n_train < rank.world_size:
        raise InputError(
            f"{n_train} labeled train visits for {rank.world_size} processes",
            file=str(tokens_dir),
        )


def _write(
    out_dir: Path,
    summary: dict,
    model: AdmissionClassifier | None,
    probe: dict[str, torch.Tensor] | None,
) -> None:
    """The selected classifier, or the probe's tensors, and the summary, all at once."""
    with atomic_directory(out_dir, overwrite=True) as tmp:
        write_marker(tmp, "finetune")
        if model is not None:
            model.cpu().save_checked(tmp / CLASSIFIER_DIR)
        else:
            save_safetensors(probe, tmp / PROBE_FILE)
        atomic_write_text(tmp / FINETUNE_SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def _train_classifier(
    encoder_dir: Path,
    encoder_config: EHRConfig,
    train: TokenDataset,
    val: TokenDataset,
    config: FinetuneConfig,
    device: torch.device,
) -> tuple[AdmissionClassifier, dict]:
    """Full or scratch fine-tuning: epochs over train until validation AUROC stops improving;
    returns the model at its best epoch and the summary."""
    model = build_classifier(encoder_dir, encoder_config, config).to(device)
    selection = EpochSelection(patience=config.patience)
    if config.mode == "full":
        # Epoch 0 is the probe-initialized model before any update: fine-tuning is kept only
        # where it beats the probe on validation.
        init_head_from_probe(model, train, val, device)
        selection.start_from(model, val_score(model, val, device))
    run = start_training(model, train, config, device)
    for epoch in range(1, config.max_epochs + 1):  # epoch k: after k passes over train
        loss = run.train_epoch(config, epoch)
        if selection.record(epoch, val_score(model, val, device), loss, model):
            break
    model.load_state_dict(selection.best_state)
    return model, selection.summary()


def predict_finetuned(
    finetune_dir: Path, encoder_dir: Path, dataset: TokenDataset, device: torch.device
) -> np.ndarray:
    """P(admission) for every visit of `dataset` from a fine-tuning output directory: the
    classifier (full, scratch) or the probe over `encoder_dir`'s frozen encoder. Shape: (N,)."""
    finetune_dir = Path(finetune_dir)
    if (finetune_dir / CLASSIFIER_DIR).is_dir():
        model = AdmissionClassifier.load_checked(finetune_dir / CLASSIFIER_DIR).to(device)
        return predict_scores(model, dataset, device)
    encoder = EHREncoder.load_checked(encoder_dir).to(device)
    probe, readout = load_probe(finetune_dir, encoder.config)
    probe = {k: v.numpy() for k, v in probe.items()}
    return probe_scores(probe, pooled_vectors(encoder, dataset, device, readout=readout))


def _cv_finetune(
    encoder_dir: Path,
    encoder_config: EHRConfig,
    train: TokenDataset,
    config: FinetuneConfig,
    device: torch.device,
) -> tuple[AdmissionClassifier | None, dict]:
    """Cv selection over the budget's train visits (`ehr_ssl.training.selection`): the probe's
    C, or the epoch of full and scratch fine-tuning (epoch 0 of full mode is the probe, so
    probe-versus-fine-tuning is chosen too) by the mean fold score (`cv_metric`), then a
    refit on every visit. Returns the model (None for a probe: its tensors are the summary's
    "_probe")."""
    folds = _folds(train.labels, train.meta, config, repeats=config.cv_repeats)
    vectors = None
    if config.mode != "scratch":  # the frozen pretrained encoder's vectors, for the probe
        encoder = EHREncoder.load_checked(encoder_dir).to(device)
        vectors = pooled_vectors(encoder, train, device, readout=config.readout)
    if config.mode == "linear-probe":
        return None, probe_summary(fit_probe_cv(vectors, train.labels, folds)) | {
            "selection": folds.describe()
        }
    runs = [_fold_run(encoder_dir, encoder_config, train, positions, vectors, config, device)
            for positions in folds.splits]  # fmt: skip
    summary = _select_epoch(runs, config, device, start_at_probe=config.mode == "full")
    del runs
    model = build_classifier(encoder_dir, encoder_config, config)
    if vectors is not None:
        probe = fit_probe_cv(vectors, train.labels, folds)
        set_head(model, probe)
        summary["selected_C"] = probe["C"]
    refit = start_training(model, train, config, device)
    for epoch in range(1, summary["selected_epoch"] + 1):
        refit.train_epoch(config, epoch)
    return model, summary | {"selection": folds.describe()}


def _fold_run(
    encoder_dir: Path,
    encoder_config: EHRConfig,
    train: TokenDataset,
    positions: tuple[np.ndarray, np.ndarray],
    vectors: np.ndarray | None,
    config: FinetuneConfig,
    device: torch.device,
) -> Fold:
    """One fold's classifier, on its train part, scored on its val part. In full mode its
    head starts at the probe of its train part, C chosen within that part (as
    `penalty_selection` says)."""
    fit, held_out = positions
    model = build_classifier(encoder_dir, encoder_config, config)
    if vectors is not None:
        inner = _folds(train.labels[fit], train.meta[fit], config, repeats=1)
        set_head(model, fit_probe_cv(vectors[fit], train.labels[fit], inner))
    ids = train.meta["visit_id"]
    parts = [labeled_split(train.tokens_dir, "train", ids.gather(p)) for p in positions]
    return start_training(model, parts[0], config, device, val=parts[1])


def _folds(
    labels: np.ndarray, meta: pl.DataFrame, config: FinetuneConfig, *, repeats: int
) -> Folds:
    """The cv folds of labeled visits (`meta`: their visit_id and patient_id)."""
    return cv_folds(
        labels, meta["patient_id"].to_numpy(), meta["visit_id"].to_numpy(),
        folds=config.cv_folds, repeats=repeats, seed=config.seed,
        setting="finetune.label_budget", rule=config.cv_rule, metric=config.cv_metric,
        penalty=config.penalty_selection,
    )  # fmt: skip


def _select_epoch(
    runs: list[Fold], config: FinetuneConfig, device: torch.device, *, start_at_probe: bool
) -> dict:
    """Every fold trained in step, epoch by epoch, until the mean fold score (`cv_metric`)
    stops improving (`patience`); the summary of the epoch chosen by `cv_rule` (epoch 0: the
    probe)."""
    selection = EpochSelection(
        patience=config.patience, rule=config.cv_rule, metric=config.cv_metric
    )
    if start_at_probe:
        selection.start_from(None, _fold_score(runs, device))
    for epoch in range(1, config.max_epochs + 1):
        losses = [run.train_epoch(config, epoch) for run in runs]
        if selection.record(epoch, _fold_score(runs, device), float(np.mean(losses)), None):
            break
    return selection.summary()


def _fold_score(runs: list[Fold], device: torch.device) -> FoldScore:
    """The mean validation AUROC and log-loss over the folds, with their standard errors."""
    figures = [val_figures(run.model, run.val, device) for run in runs]
    return FoldScore.of_figures(*zip(*figures, strict=True))
