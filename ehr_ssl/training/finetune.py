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
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from transformers.modeling_outputs import SequenceClassifierOutput

from ehr_ssl.atomic import atomic_directory, atomic_write_text
from ehr_ssl.config import FinetuneConfig, to_dict
from ehr_ssl.data.splits import label_budget_subset
from ehr_ssl.errors import InputError
from ehr_ssl.layout import CLASSIFIER_DIR, FINETUNE_SUMMARY_FILE, PROBE_FILE
from ehr_ssl.model.encoder import EHRConfig, EHREncoder, EHRPreTrainedModel
from ehr_ssl.model.pretraining import ENCODER_INPUTS
from ehr_ssl.tokens.batching import LengthBucketSampler, TokenDataset, collate
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.training import distributed
from ehr_ssl.training.pretrain import param_groups, resolve_device

log = logging.getLogger("ehr_ssl")


class AdmissionClassifier(EHRPreTrainedModel):
    """Encoder + standardization + dropout + linear head on the pooled visit vector: one logit
    per visit.

    The standardization (`feature_mean`, `feature_std`: fixed buffers, identity unless the head
    starts as the linear probe) keeps the head on the probe's scale. Folded into the head
    instead (w = coef / std), a barely spread feature gets a huge weight, so dropout zeroing its
    uncentred value moves the logit by w * value: a first fine-tuning loss of ~150 was seen.
    """

    def __init__(self, config: EHRConfig, head_dropout: float = 0.1):
        super().__init__(config)
        self.encoder = EHREncoder(config)
        self.register_buffer("feature_mean", torch.zeros(config.hidden_size))
        self.register_buffer("feature_std", torch.ones(config.hidden_size))
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def folded_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The standardization and head as one linear map of the pooled vector, (D,) and ()."""
        return fold_standardization(
            self.head.weight[0], self.head.bias[0], self.feature_mean, self.feature_std
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        value_bins: torch.Tensor,
        time_deltas: torch.Tensor,
        segment_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        pos_weight: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Shape: inputs (B, T), labels (B,) float 0/1 -> logits (B,), loss () if labels."""
        pooled = self.encoder(
            input_ids, value_bins, time_deltas, segment_ids, attention_mask
        ).pooler_output
        features = (pooled - self.feature_mean) / self.feature_std  # (B, D)
        logits = self.head(self.dropout(features)).squeeze(-1)  # (B, 1) -> (B,)
        loss = None
        if labels is not None:
            loss = F.binary_cross_entropy_with_logits(
                logits.float(), labels.float(), pos_weight=pos_weight
            )
        return SequenceClassifierOutput(loss=loss, logits=logits)


def fold_standardization(
    coef: torch.Tensor, intercept: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear map of standardized vectors, coef . (x - mean) / std + intercept, as one of the
    raw vectors: w = coef / std, b = intercept - w . mean. Shape: (D,), (), (D,), (D,) ->
    (D,), ()."""
    weight = coef / std
    return weight, intercept - weight @ mean


def budget_ids(
    tokens_dir: Path, budget: int | float | None, *, seed: int, min_val: int = 20
) -> tuple[pl.Series, pl.Series]:
    """Visit ids of a label budget, read from the token shards (see `budget_split`)."""
    train = read_split(tokens_dir, "train").filter(pl.col("labeled"))
    val = read_split(tokens_dir, "val").filter(pl.col("labeled"))
    return budget_split(train, val, budget, seed=seed, min_val=min_val)


def budget_split(
    train: pl.DataFrame,
    val: pl.DataFrame,
    budget: int | float | None,
    *,
    seed: int,
    min_val: int = 20,
) -> tuple[pl.Series, pl.Series]:
    """Visit ids of a label budget: `budget` labeled train visits (a count, a fraction of them,
    or None for all), and the share of val labels a split of that size would have (val/train
    available ratio, at least `min_val` or all there are). Nested in the budget for a seed.
    `train` and `val` are the labeled visits of each split (`visit_id`, `labeled` columns)."""
    try:
        train_ids = label_budget_subset(train, budget, seed=seed)["visit_id"]
    except ValueError as e:  # a budget the train split cannot meet is a bad setting
        raise InputError(f"{e} in the train split", column="label_budget") from None
    share = round(len(train_ids) * val.height / max(train.height, 1))
    val_ids = label_budget_subset(val, min(max(share, min_val), val.height), seed=seed)
    return train_ids, val_ids["visit_id"]


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


def pooled_vectors(
    encoder: EHREncoder, dataset: TokenDataset, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """The encoder's pooled visit vectors, under its own pooling. Shape: (N, D)."""
    pooling = encoder.config.pooling
    return pooled_vectors_by_pooling(encoder, dataset, device, (pooling,), batch_size)[pooling]


@torch.no_grad()
def pooled_vectors_by_pooling(
    encoder: EHREncoder,
    dataset: TokenDataset,
    device: torch.device,
    poolings: Sequence[str],
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """The visit vectors under each of `poolings` from one forward pass per batch (the token
    states do not depend on the pooling). Shape: (N, D) each."""
    encoder.eval()
    out: dict[str, list[torch.Tensor]] = {pooling: [] for pooling in poolings}
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        inputs = {k: batch[k].to(device) for k in ENCODER_INPUTS}
        hidden = encoder(**inputs).last_hidden_state  # (B, T, D)
        mask = inputs["attention_mask"].bool()  # (B, T)
        for pooling in poolings:
            out[pooling].append(encoder.pool(hidden, mask, pooling).cpu())
    return {pooling: torch.cat(vectors).numpy() for pooling, vectors in out.items()}


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
    `out_dir` atomically and returns the summary. Never reads the test split.
    """
    tokens_dir, out_dir = Path(tokens_dir), Path(out_dir)
    if encoder_dir is None:
        raise InputError("a pretrained encoder directory is needed", column="finetune.encoder")
    encoder_config = EHRConfig.from_pretrained(encoder_dir)
    if config.label_budget is not None and train_ids is None and val_ids is None:
        train_ids, val_ids = budget_ids(tokens_dir, config.label_budget, seed=config.seed)
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
    device = resolve_device(config.device)
    rank = distributed.current()
    if config.mode != "linear-probe" and config.batch_size % rank.world_size:
        raise InputError(
            f"{config.batch_size} is not divisible by the {rank.world_size} processes (it is the "
            "global batch: each process takes an equal share)",
            column="finetune.batch_size",
        )
    if rank.distributed and len(train) < rank.world_size:
        raise InputError(
            f"{len(train)} labeled train visits for {rank.world_size} processes",
            file=str(tokens_dir),
        )
    torch.manual_seed(config.seed)
    if config.mode == "linear-probe":
        summary = _linear_probe(encoder_dir, train, val, config, device)
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
    if rank.is_main:
        with atomic_directory(out_dir, overwrite=True) as tmp:
            if model is not None:
                model.cpu().save_pretrained(tmp / CLASSIFIER_DIR)
            else:
                save_file(probe, str(tmp / PROBE_FILE))
            atomic_write_text(tmp / FINETUNE_SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    distributed.barrier()  # the next stage reads what rank 0 wrote
    return summary


def build_classifier(
    encoder_dir: Path, encoder_config: EHRConfig, config: FinetuneConfig
) -> AdmissionClassifier:
    """full: the pretrained encoder under a new head; scratch: the same architecture, random."""
    model = AdmissionClassifier(encoder_config, head_dropout=config.head_dropout)
    if config.mode == "full":
        model.encoder = EHREncoder.from_pretrained(encoder_dir)
    return model


def _train_classifier(
    encoder_dir: Path,
    encoder_config: EHRConfig,
    train: TokenDataset,
    val: TokenDataset,
    config: FinetuneConfig,
    device: torch.device,
) -> tuple[AdmissionClassifier, dict]:
    model = build_classifier(encoder_dir, encoder_config, config)
    if config.mode == "full":
        # The pretrained encoder moves slower than the freshly initialized head.
        groups = param_groups(model.encoder, config.weight_decay)
        for group in groups:
            group["lr"] = config.learning_rate * config.encoder_lr_ratio
        head = param_groups(model.head, config.weight_decay)
        groups += [dict(g, lr=config.learning_rate) for g in head]
    else:
        groups = [
            dict(g, lr=config.learning_rate) for g in param_groups(model, config.weight_decay)
        ]
    model.to(device)
    optimizer = torch.optim.AdamW(groups)
    positives = float(np.nansum(train.labels))
    pos_weight = torch.tensor((len(train) - positives) / positives, device=device)
    best, best_auroc, history, stale = None, -1.0, [], 0
    if config.mode == "full":
        # Epoch 0 is the probe-initialized model before any update: fine-tuning is kept only
        # where it beats the probe on validation.
        _init_head_from_probe(model, train, val, device)
        best_auroc = _val_auroc(model, val, device)
        best = copy.deepcopy(model.state_dict())
        history.append({"epoch": 0, "val_auroc": best_auroc, "last_loss": None})
    rank = distributed.current()
    # Data-parallel: DDP starts every process from rank 0's weights (the probe's head included)
    # and averages gradients; each process's rows are an equal share of the global batch.
    trained = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if rank.distributed
        else model
    )
    for epoch in range(1, config.max_epochs + 1):  # epoch k: after k passes over train
        model.train()
        sampler = LengthBucketSampler(
            train.lengths,
            config.batch_size,
            seed=config.seed,
            epoch=epoch,
            drop_last=False,
            rank=rank.rank,
            world_size=rank.world_size,
        )
        for batch in DataLoader(train, batch_sampler=sampler, collate_fn=collate):
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
        val_auroc = _val_auroc(model, val, device)
        history.append({"epoch": epoch, "val_auroc": val_auroc, "last_loss": float(loss.detach())})
        if val_auroc > best_auroc:
            best, best_auroc, stale = copy.deepcopy(model.state_dict()), val_auroc, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best)
    chosen = max(history, key=lambda h: h["val_auroc"])["epoch"]
    return model, {"selected_epoch": chosen, "val_auroc": best_auroc, "history": history}


def _val_auroc(model: AdmissionClassifier, val: TokenDataset, device: torch.device) -> float:
    """Validation AUROC; under torchrun rank 0's, so that every process selects alike."""
    auroc = float(roc_auc_score(val.labels, predict_scores(model, val, device)))
    return distributed.broadcast_float(auroc)


def _fit_probe(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
) -> dict:
    """A logistic regression on pooled vectors (standardized on train only), its C chosen by
    validation AUROC. Shape: x_train (N, D), x_val (M, D). Returns coef (D,), intercept (1,),
    mean (D,), std (D,), C, val_auroc and every candidate's validation AUROC."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    candidates = []
    for c in (0.001, 0.01, 0.1, 1.0, 10.0):
        probe = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
        probe.fit((x_train - mean) / std, y_train)
        auroc = roc_auc_score(y_val, probe.predict_proba((x_val - mean) / std)[:, 1])
        candidates.append((float(auroc), c, probe))
    val_auroc, c, probe = max(candidates, key=lambda t: t[0])
    return {
        "coef": probe.coef_[0],
        "intercept": probe.intercept_,
        "mean": mean,
        "std": std,
        "C": c,
        "val_auroc": val_auroc,
        "history": [{"C": cc, "val_auroc": a} for a, cc, _ in candidates],
    }


def _linear_probe(
    encoder_dir: Path,
    train: TokenDataset,
    val: TokenDataset,
    config: FinetuneConfig,
    device: torch.device,
) -> dict:
    encoder = EHREncoder.from_pretrained(encoder_dir).to(device)
    x_train, x_val = pooled_vectors(encoder, train, device), pooled_vectors(encoder, val, device)
    probe = _fit_probe(x_train, train.labels, x_val, val.labels)
    return {
        "selected_C": probe["C"],
        "val_auroc": probe["val_auroc"],
        "history": probe["history"],
        "_probe": {
            k: torch.from_numpy(np.ascontiguousarray(probe[k], dtype=np.float32))
            for k in ("coef", "intercept", "mean", "std")
        },
    }


def _init_head_from_probe(
    model: AdmissionClassifier, train: TokenDataset, val: TokenDataset, device: torch.device
) -> None:
    """LP-FT (Kumar et al., 2022): start the head at the linear probe of the frozen pretrained
    encoder, so that fine-tuning begins from a good classifier instead of letting a random head
    push large gradients into the pretrained features. The probe's standardization becomes the
    classifier's fixed `feature_mean` and `feature_std`, its coefficients the head's."""
    x_train, x_val = (pooled_vectors(model.encoder, d, device) for d in (train, val))
    probe = _fit_probe(x_train, train.labels, x_val, val.labels)
    with torch.no_grad():
        for target, value in ((model.feature_mean, probe["mean"]),
                              (model.feature_std, probe["std"]),
                              (model.head.weight, probe["coef"][None]),
                              (model.head.bias, probe["intercept"])):  # fmt: skip
            target.copy_(torch.as_tensor(value, dtype=torch.float32))


def predict_finetuned(
    finetune_dir: Path, encoder_dir: Path, dataset: TokenDataset, device: torch.device
) -> np.ndarray:
    """P(admission) for every visit of `dataset` from a fine-tuning output directory: the
    classifier (full, scratch) or the probe over `encoder_dir`'s frozen encoder. Shape: (N,)."""
    finetune_dir = Path(finetune_dir)
    if (finetune_dir / CLASSIFIER_DIR).is_dir():
        model = AdmissionClassifier.from_pretrained(finetune_dir / CLASSIFIER_DIR).to(device)
        return predict_scores(model, dataset, device)
    probe = {k: v.numpy() for k, v in load_file(finetune_dir / PROBE_FILE).items()}
    encoder = EHREncoder.from_pretrained(encoder_dir).to(device)
    x = (pooled_vectors(encoder, dataset, device) - probe["mean"]) / probe["std"]
    return 1 / (1 + np.exp(-(x @ probe["coef"] + probe["intercept"])))
