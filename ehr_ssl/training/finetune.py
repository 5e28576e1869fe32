"""Fine-tuning for hospital admission within 7 days: a classification head on the encoder.

Modes: `full` (the pretrained encoder trained further, at a lower learning rate than the head,
which starts as the linear probe: LP-FT),
`linear-probe` (a logistic regression on the frozen pretrained encoder's pooled vectors) and
`scratch` (the same architecture from random initialization: the supervised-only baseline).
Class imbalance is handled by loss weighting (the positive class weighted by n_negative /
n_positive of the training labels). The epoch, and for the probe the regularization, are
chosen on the validation split only: fine-tuning never reads the test split.

Under torchrun, full and scratch fine-tuning run data-parallel (batch_size is the global batch,
fewer than N random visits of an epoch sit out so that the last batch shares equally); every
process scores validation and rank 0's
AUROC decides, so all keep the same epoch; rank 0 alone writes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ehr_ssl.artifacts import save_safetensors
from ehr_ssl.atomic import atomic_directory, atomic_write_text
from ehr_ssl.config import FinetuneConfig
from ehr_ssl.data.splits import label_budget_subset
from ehr_ssl.errors import InputError
from ehr_ssl.layout import CLASSIFIER_DIR, FINETUNE_SUMMARY_FILE, PROBE_FILE, TOKENIZER_FILE
from ehr_ssl.model.classifier import AdmissionClassifier
from ehr_ssl.model.encoder import EHRConfig, EHREncoder, load_config
from ehr_ssl.model.pretraining import ENCODER_INPUTS
from ehr_ssl.outputs import check_output_dir, check_outside_inputs, output_lock, write_marker
from ehr_ssl.settings import to_dict
from ehr_ssl.tokens.batching import LengthBucketSampler, TokenDataset, collate
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.training import distributed
from ehr_ssl.training.device import resolve_device
from ehr_ssl.training.optim import param_groups
from ehr_ssl.training.probe import (
    init_head_from_probe,
    linear_probe,
    load_probe,
    pooled_vectors,
    probe_scores,
)

log = logging.getLogger("ehr_ssl")


def budget_ids(
    tokens_dir: Path,
    budget: int | float | None,
    *,
    seed: int,
    min_val: int = 20,
    setting: str = "label_budget",
) -> tuple[pl.Series, pl.Series]:
    """Visit ids of a label budget, read from the token shards (see `budget_split`)."""
    train = read_split(tokens_dir, "train").filter(pl.col("labeled"))
    val = read_split(tokens_dir, "val").filter(pl.col("labeled"))
    return budget_split(train, val, budget, seed=seed, min_val=min_val, setting=setting)


def budget_split(
    train: pl.DataFrame,
    val: pl.DataFrame,
    budget: int | float | None,
    *,
    seed: int,
    min_val: int = 20,
    setting: str = "label_budget",
) -> tuple[pl.Series, pl.Series]:
    """Visit ids of a label budget: `budget` labeled train visits (a count, a fraction of them,
    or None for all), and the share of val labels a split of that size would have (val/train
    available ratio, at least `min_val` or all there are). Nested in the budget for a seed.
    `train` and `val` are the labeled visits of each split (`visit_id`, `labeled` and, to check
    that each subset holds both classes, `label` columns).

    Raises:
        InputError: naming `setting` (where the budget was set) and the counts, for a budget
            the labels cannot meet: fine-tuning would fail on it.
    """
    try:
        train_ids = label_budget_subset(train, budget, seed=seed)["visit_id"]
    except ValueError as e:  # a budget the train split cannot meet is a bad setting
        raise InputError(f"{e} in the train split", column=setting) from None
    if val.height == 0:
        raise InputError("no labeled visits in the val split to select on", column=setting)
    share = round(len(train_ids) * val.height / max(train.height, 1))
    val_ids = label_budget_subset(val, min(max(share, min_val), val.height), seed=seed)
    ids = {"train": train_ids, "val": val_ids["visit_id"]}
    for split, frame in (("train", train), ("val", val)):
        _check_both_classes(frame, ids[split], budget, split=split, setting=setting)
    return ids["train"], ids["val"]


def _check_both_classes(
    labeled: pl.DataFrame, ids: pl.Series, budget: int | float | None, *, split: str, setting: str
) -> None:
    """The visits `ids` of `labeled` hold both classes (fine-tuning and its selection need
    them); a frame without a `label` column is not checked."""
    if "label" not in labeled.columns:
        return
    labels = labeled.filter(pl.col("visit_id").is_in(ids.implode()))["label"]
    positives = int(labels.sum())
    if positives in (0, labels.len()):
        shown = "all" if budget is None else budget
        raise InputError(
            f"budget {shown!r} leaves {labels.len()} labeled {split} visits, {positives} of them "
            "positive: fine-tuning needs both classes",
            column=setting,
        )


def labeled_split(tokens_dir: Path, split: str, visit_ids: pl.Series | None = None) -> TokenDataset:
    """Labeled visits of one split, optionally only those in `visit_ids` (a label budget)."""
    selection = (pl.col("split") == split) & pl.col("labeled")
    if visit_ids is not None:
        selection = selection & pl.col("visit_id").is_in(visit_ids.implode())
    return TokenDataset(tokens_dir, selection, splits=[split])


@torch.no_grad()
def predict_scores(
    model: AdmissionClassifier, dataset: TokenDataset, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """P(admission) for every visit of `dataset`, in dataset order. Shape: (N,)."""
    model.eval()
    scores = np.empty(len(dataset), dtype=np.float64)
    for start in range(0, len(dataset), batch_size):
        index = range(start, min(start + batch_size, len(dataset)))
        batch = collate([dataset[i] for i in index])
        inputs = {k: batch[k].to(device) for k in ENCODER_INPUTS}
        scores[start : start + len(index)] = torch.sigmoid(model(**inputs).logits).cpu().numpy()
    return scores


def finetune(
    tokens_dir: Path,
    encoder_dir: Path | None,
    out_dir: Path,
    config: FinetuneConfig,
    *,
    train_ids: pl.Series | None = None,
    val_ids: pl.Series | None = None,
) -> dict:
    """Fine-tune on the labeled train visits, select on val. A label budget comes either as
    visit ids (`train_ids`, `val_ids`, e.g. shared with the baselines) or as
    `config.label_budget` (see `budget_ids`).

    `encoder_dir` is a pretrained encoder (save_pretrained directory); scratch mode takes only
    its architecture. Writes the selected model (safetensors + config.json) and a summary to
    `out_dir` atomically and returns the summary. Never reads the test split. `out_dir` must be
    new, empty or an earlier fine-tuning directory, outside the inputs; rank 0 holds its lock.
    """
    tokens_dir, out_dir = Path(tokens_dir), Path(out_dir)
    if encoder_dir is None:
        raise InputError("a pretrained encoder directory is needed", column="finetune.encoder")
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
    if config.label_budget is not None and train_ids is None and val_ids is None:
        train_ids, val_ids = budget_ids(
            tokens_dir, config.label_budget, seed=config.seed, setting="finetune.label_budget"
        )
    train, val = _labeled_splits(tokens_dir, train_ids, val_ids)
    device = resolve_device(config.device)
    _check_processes(config, len(train), tokens_dir)
    torch.manual_seed(config.seed)
    if config.mode == "linear-probe":
        summary = linear_probe(encoder_dir, train, val, device)
        model = None
    else:
        model, summary = _train_classifier(encoder_dir, encoder_config, train, val, config, device)
    summary.update(
        {
            "mode": config.mode,
            "train_labeled": len(train),
            "val_labeled": len(val),
            "config": to_dict(config),
        }
    )
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
    in every mode the same vocabulary and bins (scratch mode takes only the architecture)."""
    tokenizer = Tokenizer.load(tokens_dir)
    sizes = {
        "vocabulary": (encoder_config.vocab_size, tokenizer.vocab_size),
        "value bins": (encoder_config.n_value_bins, tokenizer.config.n_bins + 1),
    }
    mismatched = [f"{name} {ours} vs {theirs}" for name, (ours, theirs) in sizes.items()
                  if ours != theirs]  # fmt: skip
    pretrained_with = encoder_dir.parent / TOKENIZER_FILE
    if mode != "scratch" and not mismatched and pretrained_with.is_file():
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


def _labeled_splits(
    tokens_dir: Path, train_ids: pl.Series | None, val_ids: pl.Series | None
) -> tuple[TokenDataset, TokenDataset]:
    """The labeled train and val visits (of a label budget, if ids are given); each must hold
    both classes."""
    train, val = (
        labeled_split(tokens_dir, "train", train_ids),
        labeled_split(tokens_dir, "val", val_ids),
    )
    for name, dataset in (("train", train), ("val", val)):
        if len(np.unique(dataset.labels)) < 2:
            raise InputError(
                f"the {name} split needs labeled visits of both classes, has {len(dataset)} "
                "labeled visits",
                file=str(tokens_dir),
            )
    return train, val


def _check_processes(config: FinetuneConfig, n_train: int, tokens_dir: Path) -> None:
    """Under torchrun, the global batch and the train visits must share out over processes."""
    rank = distributed.current()
    if config.mode != "linear-probe" and config.batch_size % rank.world_size:
        raise InputError(
            f"{config.batch_size} is not divisible by the {rank.world_size} processes (it is the "
            "global batch: each process takes an equal share)",
            column="finetune.batch_size",
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


def build_classifier(
    encoder_dir: Path, encoder_config: EHRConfig, config: FinetuneConfig
) -> AdmissionClassifier:
    """full: the pretrained encoder under a new head; scratch: the same architecture, random."""
    model = AdmissionClassifier(encoder_config, head_dropout=config.head_dropout)
    if config.mode == "full":
        model.encoder = EHREncoder.load_checked(encoder_dir)  # every weight from the file
    return model


@dataclass
class _EpochSelection:
    """Early stopping on validation AUROC: the best state so far, every epoch's figures, and
    the epochs since the last improvement."""

    patience: int
    best_state: dict | None = None
    best_auroc: float = -1.0
    history: list[dict] = field(default_factory=list)
    stale: int = 0

    def start_from(self, model: nn.Module, val_auroc: float) -> None:
        """Epoch 0, before any update: the state every later epoch must beat."""
        self.best_auroc = val_auroc
        self.best_state = copy.deepcopy(model.state_dict())
        self.history.append({"epoch": 0, "val_auroc": val_auroc, "last_loss": None})

    def record(self, epoch: int, val_auroc: float, last_loss: float, model: nn.Module) -> bool:
        """Score an epoch (keeping the state if it is the best); True once patience runs out."""
        self.history.append({"epoch": epoch, "val_auroc": val_auroc, "last_loss": last_loss})
        if val_auroc > self.best_auroc:
            self.best_state = copy.deepcopy(model.state_dict())
            self.best_auroc, self.stale = val_auroc, 0
            return False
        self.stale += 1
        return self.stale >= self.patience

    def summary(self) -> dict:
        """The selected epoch (the best on validation), its AUROC and the history."""
        chosen = max(self.history, key=lambda h: h["val_auroc"])["epoch"]
        return {"selected_epoch": chosen, "val_auroc": self.best_auroc, "history": self.history}


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
    model = build_classifier(encoder_dir, encoder_config, config)
    groups = _optimizer_groups(model, config)
    model.to(device)
    optimizer = torch.optim.AdamW(groups)
    positives = float(np.nansum(train.labels))
    pos_weight = torch.tensor((len(train) - positives) / positives, device=device)
    selection = _EpochSelection(patience=config.patience)
    if config.mode == "full":
        # Epoch 0 is the probe-initialized model before any update: fine-tuning is kept only
        # where it beats the probe on validation.
        init_head_from_probe(model, train, val, device)
        selection.start_from(model, _val_auroc(model, val, device))
    trained = _data_parallel(model, device)
    for epoch in range(1, config.max_epochs + 1):  # epoch k: after k passes over train
        loader = _epoch_loader(train, config, epoch)
        loss = _train_epoch(trained, model, optimizer, loader, pos_weight, device)
        val_auroc = _val_auroc(model, val, device)
        if selection.record(epoch, val_auroc, float(loss.detach()), model):
            break
    model.load_state_dict(selection.best_state)
    return model, selection.summary()


def _optimizer_groups(model: AdmissionClassifier, config: FinetuneConfig) -> list[dict]:
    """AdamW's parameter groups: in full mode the pretrained encoder at learning_rate x
    encoder_lr_ratio and the head at learning_rate; in scratch mode all at learning_rate."""
    if config.mode != "full":
        return [dict(g, lr=config.learning_rate) for g in param_groups(model, config.weight_decay)]
    # The pretrained encoder moves slower than the freshly initialized head.
    groups = param_groups(model.encoder, config.weight_decay)
    for group in groups:
        group["lr"] = config.learning_rate * config.encoder_lr_ratio
    head = param_groups(model.head, config.weight_decay)
    return groups + [dict(g, lr=config.learning_rate) for g in head]


def _data_parallel(model: AdmissionClassifier, device: torch.device) -> nn.Module:
    """The model, under torchrun wrapped in DistributedDataParallel."""
    if not distributed.current().distributed:
        return model
    # Data-parallel: DDP starts every process from rank 0's weights (the probe's head included)
    # and averages gradients; each process's rows are an equal share of the global batch.
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def _epoch_loader(train: TokenDataset, config: FinetuneConfig, epoch: int) -> DataLoader:
    """This process's share of the train visits, length-bucketed, in the epoch's order."""
    rank = distributed.current()
    sampler = LengthBucketSampler(
        train.lengths,
        config.batch_size,
        seed=config.seed,
        epoch=epoch,
        drop_last=False,
        rank=rank.rank,
        world_size=rank.world_size,
    )
    return DataLoader(train, batch_sampler=sampler, collate_fn=collate)


def _train_epoch(
    trained: nn.Module,
    model: AdmissionClassifier,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    pos_weight: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """One pass over `loader` with the weighted loss and gradients clipped at norm 1; returns
    the last batch's loss. `trained` is `model` or its DDP wrapper."""
    model.train()
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = trained(
            **{k: batch[k] for k in ENCODER_INPUTS},
            labels=batch["labels"],
            pos_weight=pos_weight,
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return loss


def _val_auroc(model: AdmissionClassifier, val: TokenDataset, device: torch.device) -> float:
    """Validation AUROC; under torchrun rank 0's, so that every process selects alike."""
    auroc = float(roc_auc_score(val.labels, predict_scores(model, val, device)))
    return distributed.broadcast_float(auroc)


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
    probe = load_probe(finetune_dir / PROBE_FILE, encoder.config.hidden_size)
    probe = {k: v.numpy() for k, v in probe.items()}
    return probe_scores(probe, pooled_vectors(encoder, dataset, device))
