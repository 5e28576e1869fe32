"""The linear probe: a logistic regression on a frozen encoder's visit vectors (its readout,
`finetune.readout`), its regularization chosen on validation. It is a fine-tuning mode of its
own and the head that full fine-tuning starts from (LP-FT)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ehr_ssl.artifacts import check_tensor_shapes, load_safetensors, read_json
from ehr_ssl.config import READOUTS
from ehr_ssl.errors import InputError
from ehr_ssl.layout import FINETUNE_SUMMARY_FILE, PROBE_FILE
from ehr_ssl.model.classifier import AdmissionClassifier
from ehr_ssl.model.encoder import EHRConfig, EHREncoder, readout_dim
from ehr_ssl.model.pretraining import ENCODER_INPUTS
from ehr_ssl.tokens.batching import TokenDataset, collate
from ehr_ssl.training.selection import (
    C_GRID,
    LOGISTIC_MAX_ITER,
    Folds,
    chosen_cv_auroc,
    cross_validate,
    evidence_by_scaling,
)


@torch.no_grad()
def pooled_vectors(
    encoder: EHREncoder,
    dataset: TokenDataset,
    device: torch.device,
    batch_size: int = 256,
    *,
    readout: str = "pooled",
) -> np.ndarray:
    """The encoder's visit vectors under `readout` ("pooled": its pooled vector, under its own
    pooling), each independent of its batch mates (`EHREncoder.forward` in eval mode).
    Shape: (N, R)."""
    encoder.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        inputs = {k: batch[k].to(device) for k in ENCODER_INPUTS}
        out.append(encoder(**inputs, readout=readout).readout.cpu())
    if not out:
        return np.zeros((0, readout_dim(encoder.config, readout)), dtype=np.float32)
    return torch.cat(out).numpy()


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
    validation AUROC over C_GRID, as every logistic model's holdout selection. Shape: x_train
    (N, D), x_val (M, D). Returns coef (D,), intercept (1,), mean (D,), std (D,), C, val_auroc
    and every candidate's validation AUROC."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    candidates = []
    for c in C_GRID:
        probe = LogisticRegression(C=c, class_weight="balanced", max_iter=LOGISTIC_MAX_ITER)
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
    encoder_dir: Path,
    train: TokenDataset,
    val: TokenDataset,
    device: torch.device,
    readout: str = "pooled",
) -> dict:
    """The linear-probe mode: the probe on `encoder_dir`'s frozen encoder, reading `readout`.
    Returns the summary, with the probe's tensors under "_probe" (coef, intercept, mean, std;
    float32, R wide)."""
    encoder = EHREncoder.load_checked(encoder_dir).to(device)
    x_train, x_val = (pooled_vectors(encoder, d, device, readout=readout) for d in (train, val))
    return probe_summary(fit_probe(x_train, train.labels, x_val, val.labels))


def probe_summary(probe: dict) -> dict:
    """A fine-tuning summary of a fitted probe, its tensors under "_probe" (coef, intercept,
    mean, std; float32, R wide)."""
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
    push large gradients into the pretrained features. The probe reads the head's readout
    (`model.config.readout`); its standardization becomes the classifier's fixed
    `feature_mean` and `feature_std`, its coefficients the head's."""
    readout = model.config.readout
    x_train, x_val = (
        pooled_vectors(model.encoder, d, device, readout=readout) for d in (train, val)
    )
    set_head(model, fit_probe(x_train, train.labels, x_val, val.labels))


def probe_scores(probe: dict[str, np.ndarray], vectors: np.ndarray) -> np.ndarray:
    """P(admission) from a saved probe (coef, intercept, mean, std) and the visit vectors of
    its readout. Shape: (N, R) -> (N,)."""
    x = (vectors - probe["mean"]) / probe["std"]
    return expit(x @ probe["coef"] + probe["intercept"])  # no overflow at large |logit|


def load_probe(finetune_dir: Path, config: EHRConfig) -> tuple[dict[str, torch.Tensor], str]:
    """A linear-probe fine-tuning directory's probe (`linear_probe`'s tensors) over an encoder
    of `config`, and the readout it reads (its summary's; "pooled" for a summary written
    before the setting): coef (R,), intercept (1,), mean (R,), std (R,).

    Raises:
        InputError: naming the file when it is missing, damaged, of another readout's shapes,
            or the summary names no known readout.
    """
    summary_path = Path(finetune_dir) / FINETUNE_SUMMARY_FILE
    readout = read_json(summary_path, what="fine-tuning summary").get("readout", "pooled")
    if readout not in READOUTS:
        raise InputError(
            f"readout {readout!r} is not one of {', '.join(READOUTS)}", file=str(summary_path)
        )
    path = Path(finetune_dir) / PROBE_FILE
    probe = load_safetensors(path, what="linear probe")
    width = readout_dim(config, readout)
    shapes = {"coef": (width,), "intercept": (1,), "mean": (width,), "std": (width,)}
    check_tensor_shapes(probe, shapes, path=path, what=f"linear probe of readout {readout!r}")
    return probe, readout


def fit_probe_cv(x: np.ndarray, y: np.ndarray, folds: Folds) -> dict:
    """`fit_probe` under cv selection: C chosen from C_GRID by `folds.rule` over the mean fold
    scores of `folds.metric` (each fold standardized on its own train part; `cross_validate`),
    or by the evidence of every row standardized (`folds.penalty`), then the probe refit on
    every row. Shape: x (N, D), y (N,). Returns `fit_probe`'s keys; val_auroc is the mean fold
    AUROC of the chosen C."""

    def fit_score(params: dict, train: np.ndarray, val: np.ndarray) -> np.ndarray:
        probe = standardized_logistic(x[train], y[train], params["C"])
        return probe_scores(probe, x[val])

    # the rows standardized as standardized_logistic reads them
    evidence = evidence_by_scaling(lambda _: (x - x.mean(0)) / (x.std(0) + 1e-6), y)
    params, table = cross_validate(fit_score, y, folds, [{"C": c} for c in C_GRID], evidence)
    probe = standardized_logistic(x, y, params["C"])
    history = [{"C": row["params"]["C"], "val_auroc": row["cv_auroc"], "val_se": row["cv_se"],
                "val_log_loss": row["cv_log_loss"]}
               | ({"log_evidence": row["log_evidence"]} if "log_evidence" in row else {})
               for row in table]  # fmt: skip
    return probe | {
        "C": params["C"],
        "val_auroc": chosen_cv_auroc(table, params),
        "history": history,
    }


def standardized_logistic(x: np.ndarray, y: np.ndarray, c: float) -> dict[str, np.ndarray]:
    """A balanced L2 logistic regression on `x` standardized by its own mean and std: coef
    (D,), intercept (1,), mean (D,), std (D,) (`probe_scores` reads them)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=LOGISTIC_MAX_ITER)
    model.fit((x - mean) / std, y)
    return {"coef": model.coef_[0], "intercept": model.intercept_, "mean": mean, "std": std}


def set_head(model: AdmissionClassifier, probe: dict[str, np.ndarray]) -> None:
    """LP-FT's start: the classifier's standardization and head set to a fitted probe's."""
    with torch.no_grad():
        for target, value in ((model.feature_mean, probe["mean"]),
                              (model.feature_std, probe["std"]),
                              (model.head.weight, probe["coef"][None]),
                              (model.head.bias, probe["intercept"])):  # fmt: skip
            target.copy_(torch.as_tensor(value, dtype=torch.float32))
