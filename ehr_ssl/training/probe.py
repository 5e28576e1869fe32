"""The linear probe: a logistic regression on a frozen encoder's pooled visit vectors, its
regularization chosen on validation. It is a fine-tuning mode of its own and the head that
full fine-tuning starts from (LP-FT)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ehr_ssl.artifacts import check_tensor_shapes, load_safetensors
from ehr_ssl.model.classifier import AdmissionClassifier
from ehr_ssl.model.encoder import EHREncoder
from ehr_ssl.model.pretraining import ENCODER_INPUTS
from ehr_ssl.tokens.batching import TokenDataset, collate


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


def fit_probe(
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


def linear_probe(
    encoder_dir: Path, train: TokenDataset, val: TokenDataset, device: torch.device
) -> dict:
    """The linear-probe mode: the probe on `encoder_dir`'s frozen encoder. Returns the summary,
    with the probe's tensors under "_probe" (coef, intercept, mean, std; float32)."""
    encoder = EHREncoder.load_checked(encoder_dir).to(device)
    x_train, x_val = pooled_vectors(encoder, train, device), pooled_vectors(encoder, val, device)
    probe = fit_probe(x_train, train.labels, x_val, val.labels)
    return {
        "selected_C": probe["C"],
        "val_auroc": probe["val_auroc"],
        "history": probe["history"],
        "_probe": {
            k: torch.from_numpy(np.ascontiguousarray(probe[k], dtype=np.float32))
            for k in ("coef", "intercept", "mean", "std")
        },
    }


def init_head_from_probe(
    model: AdmissionClassifier, train: TokenDataset, val: TokenDataset, device: torch.device
) -> None:
    """LP-FT (Kumar et al., 2022): start the head at the linear probe of the frozen pretrained
    encoder, so that fine-tuning begins from a good classifier instead of letting a random head
    push large gradients into the pretrained features. The probe's standardization becomes the
    classifier's fixed `feature_mean` and `feature_std`, its coefficients the head's."""
    x_train, x_val = (pooled_vectors(model.encoder, d, device) for d in (train, val))
    probe = fit_probe(x_train, train.labels, x_val, val.labels)
    with torch.no_grad():
        for target, value in ((model.feature_mean, probe["mean"]),
                              (model.feature_std, probe["std"]),
                              (model.head.weight, probe["coef"][None]),
                              (model.head.bias, probe["intercept"])):  # fmt: skip
            target.copy_(torch.as_tensor(value, dtype=torch.float32))


def probe_scores(probe: dict[str, np.ndarray], vectors: np.ndarray) -> np.ndarray:
    """P(admission) from a saved probe (coef, intercept, mean, std) and pooled vectors.
    Shape: (N, D) -> (N,)."""
    x = (vectors - probe["mean"]) / probe["std"]
    return 1 / (1 + np.exp(-(x @ probe["coef"] + probe["intercept"])))


def load_probe(path: Path, hidden_size: int) -> dict[str, torch.Tensor]:
    """A saved probe (`linear_probe`'s tensors) for pooled vectors of `hidden_size`: coef (D,),
    intercept (1,), mean (D,), std (D,).

    Raises:
        InputError: naming the file when it is missing, damaged or of other shapes.
    """
    probe = load_safetensors(path, what="linear probe")
    shapes = {"coef": (hidden_size,), "intercept": (1,), "mean": (hidden_size,),
              "std": (hidden_size,)}  # fmt: skip
    check_tensor_shapes(probe, shapes, path=path, what="linear probe")
    return probe
