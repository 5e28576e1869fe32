"""The admission classifier's training loop, shared by holdout and cv selection: a classifier
in training (`Fold`: model, optimizer, visits, class weight), one epoch over its visits, the
validation AUROC and log-loss and the epoch selection by them (nanoGPT's loop, in pieces
small enough to train several folds in step). Under torchrun the model is wrapped in
DistributedDataParallel and each process takes an equal share of every batch; rank 0's figures
decide."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ehr_ssl.config import FinetuneConfig
from ehr_ssl.model.classifier import AdmissionClassifier
from ehr_ssl.model.encoder import EHRConfig, EHREncoder
from ehr_ssl.model.pretraining import ENCODER_INPUTS
from ehr_ssl.tokens.batching import LengthBucketSampler, TokenDataset, collate
from ehr_ssl.training import distributed
from ehr_ssl.training.device import DeviceSettings, device_settings
from ehr_ssl.training.optim import param_groups, warmup_factor
from ehr_ssl.training.selection import FoldScore, balanced_log_loss, choose


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


def build_classifier(
    encoder_dir: Path, encoder_config: EHRConfig, config: FinetuneConfig
) -> AdmissionClassifier:
    """full: the pretrained encoder under a new head; scratch: the same architecture, random
    (its code ancestors, data rather than weights, read from the encoder).
    The head reads `config.readout`, which the classifier's config records."""
    classifier_config = copy.deepcopy(encoder_config)
    classifier_config.readout = config.readout
    if config.mode == "scratch":  # no pretraining, no forecast state (fine-tuning reads none)
        classifier_config.forecast_state = False
    model = AdmissionClassifier(classifier_config, head_dropout=config.head_dropout)
    if config.mode == "full":
        model.encoder = EHREncoder.load_checked(encoder_dir)  # every weight from the file
        model.encoder.config = model.config  # one config, as a loaded classifier has
    elif encoder_config.code_hierarchy == "ancestors":  # the hierarchy is data, not weights
        model.encoder.set_code_ancestors(EHREncoder.load_checked(encoder_dir).code_ancestor_ids)
    return model


@dataclass
class EpochSelection:
    """Early stopping on a validation score: the best state so far, every epoch's figures, and
    the epochs since the last improvement. Each epoch's `FoldScore` is a mean over folds under
    cv selection (over one validation split under holdout); `metric` ("auroc" or "log_loss",
    `FoldScore.key`) is what is compared and `rule` picks the epoch (`selection.choose`:
    "one_se" keeps the earliest within one standard error of the best); patience always counts
    from the best mean."""

    patience: int
    rule: str = "best"
    metric: str = "auroc"
    best_state: dict | None = None
    best_score: float = -math.inf
    history: list[dict] = field(default_factory=list)
    scores: list[FoldScore] = field(default_factory=list)
    """Every epoch's score, in `history`'s order (what `summary` chooses from)."""
    stale: int = 0

    def start_from(self, model: nn.Module | None, score: FoldScore) -> None:
        """Epoch 0, before any update: the state every later epoch must beat (no state is
        kept for `model` None: cv selection keeps only the epoch)."""
        self.best_score = score.key(self.metric)[0]
        if model is not None:
            self.best_state = copy.deepcopy(model.state_dict())
        self.history.append({"epoch": 0, **score.record(), "last_loss": None})
        self.scores.append(score)

    def record(
        self, epoch: int, score: FoldScore, last_loss: float, model: nn.Module | None
    ) -> bool:
        """Score an epoch (keeping the state if it is the best and `model` is given); True
        once patience runs out."""
        self.history.append({"epoch": epoch, **score.record(), "last_loss": last_loss})
        self.scores.append(score)
        value = score.key(self.metric)[0]
        if value > self.best_score:
            if model is not None:
                self.best_state = copy.deepcopy(model.state_dict())
            self.best_score, self.stale = value, 0
            return False
        self.stale += 1
        return self.stale >= self.patience

    def summary(self) -> dict:
        """The selected epoch (under `rule`), its AUROC and the history."""
        keys = [score.key(self.metric) for score in self.scores]
        chosen = self.history[choose(*zip(*keys, strict=True), self.rule)]
        return {"selected_epoch": chosen["epoch"], "val_auroc": chosen["val_auroc"],
                "history": self.history}  # fmt: skip


def _optimizer_groups(model: AdmissionClassifier, config: FinetuneConfig) -> list[dict]:
    """AdamW's parameter groups, each with its "peak_lr" (what warmup rises to): in full mode
    the pretrained encoder at learning_rate x encoder_lr_ratio and the head at learning_rate;
    in scratch mode all at learning_rate."""
    rate = config.learning_rate
    if config.mode != "full":
        return [dict(g, lr=rate, peak_lr=rate) for g in param_groups(model, config.weight_decay)]
    # The pretrained encoder moves slower than the freshly initialized head.
    encoder_rate = rate * config.encoder_lr_ratio
    encoder = param_groups(model.encoder, config.weight_decay)
    head = param_groups(model.head, config.weight_decay)
    return [dict(g, lr=encoder_rate, peak_lr=encoder_rate) for g in encoder] + [
        dict(g, lr=rate, peak_lr=rate) for g in head
    ]


def _warm_up(optimizer: torch.optim.Optimizer, step: int, warmup_steps: int) -> None:
    """Every group at its peak rate times the warmup's share at `step` (0-based)."""
    factor = warmup_factor(step, warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * factor


def _data_parallel(model: AdmissionClassifier, hardware: DeviceSettings) -> nn.Module:
    """The model, under torchrun wrapped in DistributedDataParallel."""
    if not distributed.current().distributed:
        return model
    # Data-parallel: DDP starts every process from rank 0's weights (the probe's head included)
    # and averages gradients; each process's rows are an equal share of the global batch.
    return DistributedDataParallel(model, device_ids=hardware.ddp_device_ids)


def epoch_loader(train: TokenDataset, config: FinetuneConfig, epoch: int) -> DataLoader:
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


def train_step(fold: Fold, batch: dict[str, torch.Tensor], warmup_steps: int) -> torch.Tensor:
    """One optimizer step on `batch` with the weighted loss and gradients clipped at norm 1,
    in the run's precision, the rates warmed up (`_warm_up`, counting the fold's steps);
    returns the batch's loss. The caller sets train or eval mode."""
    batch = {k: v.to(fold.hardware.device) for k, v in batch.items()}
    with fold.hardware.autocast():
        loss = fold.trained(
            **{k: batch[k] for k in ENCODER_INPUTS},
            labels=batch["labels"],
            pos_weight=fold.pos_weight,
        ).loss
    fold.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(fold.model.parameters(), 1.0)
    _warm_up(fold.optimizer, fold.steps, warmup_steps)
    fold.optimizer.step()
    fold.steps += 1
    return loss


def val_figures(
    model: AdmissionClassifier, val: TokenDataset, device: torch.device
) -> tuple[float, float]:
    """Validation AUROC and balanced log-loss; under torchrun rank 0's, so that every process
    selects alike."""
    scores = predict_scores(model, val, device)
    auroc = float(roc_auc_score(val.labels, scores))
    loss = balanced_log_loss(val.labels, scores)
    return distributed.broadcast_float(auroc), distributed.broadcast_float(loss)


def val_score(model: AdmissionClassifier, val: TokenDataset, device: torch.device) -> FoldScore:
    """`val_figures` of one validation split, as a score with no standard error."""
    auroc, loss = val_figures(model, val, device)
    return FoldScore(auroc, 0.0, loss, 0.0)


@dataclass
class Fold:
    """A classifier in training: the model (and its DDP wrapper), optimizer, visits, the
    class weight of its train visits, the device settings, for a fold of cv selection its
    val visits, and the steps taken."""

    model: AdmissionClassifier
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    train: TokenDataset
    pos_weight: torch.Tensor
    hardware: DeviceSettings
    val: TokenDataset | None = None
    steps: int = 0
    """Optimizer steps taken (what the warmup counts)."""

    def train_epoch(self, config: FinetuneConfig, epoch: int) -> float:
        """One pass over the train visits in train mode; the last batch's loss. The warmup
        lasts warmup_epochs x an epoch's steps (global batches, alike on every rank)."""
        loader = epoch_loader(self.train, config, epoch)
        warmup_steps = math.ceil(config.warmup_epochs * len(loader))
        self.model.train()
        for batch in loader:
            loss = train_step(self, batch, warmup_steps)
        return float(loss.detach())


def start_training(
    model: AdmissionClassifier,
    train: TokenDataset,
    config: FinetuneConfig,
    device: torch.device,
    val: TokenDataset | None = None,
) -> Fold:
    """A classifier ready to train (its head already set where it starts from a probe)."""
    hardware = device_settings(device, config.precision)
    groups = _optimizer_groups(model, config)
    model.to(device)
    positives = float(np.nansum(train.labels))
    pos_weight = torch.tensor((len(train) - positives) / positives, device=device)
    optimizer = torch.optim.AdamW(groups, fused=hardware.fused_optimizer)
    trained = _data_parallel(model, hardware)
    return Fold(model, trained, optimizer, train, pos_weight, hardware, val)
