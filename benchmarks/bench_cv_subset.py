"""Does cv selection on one label subset judge the probe's C as the rest of the data would?

For one pipeline label subset (`finetune.label_budget` and `finetune.seed`, drawn as the
pipeline draws it), the probe of a pretrained encoder's readout is scored at every C of the
grid three ways: the mean fold AUROC of the pipeline's cv folds (`--repeats`, each a count of
repeats of the K folds: more repeats remove the fold-draw noise, not the subset's own), the
AUROC of the out-of-fold scores pooled per repeat, and the AUROC of the probe refit on the whole
subset on the labeled test visits and on the train split's other labeled visits (those of
patients outside the subset, so no patient of the subset is scored). Where the cv columns and
the two held-out columns disagree at every repeat count, no fold scheme that reads only the
subset's labels can choose well: the subset itself misleads.

A diagnostic of selection, not a model: it reads the test split (the pipeline never does
before its report).

usage: python benchmarks/bench_cv_subset.py --run RUN --tokens RUN/tokens \
           [--budget 100] [--seed 2] [--repeats 1,3,10] [--readout segments]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score

from ehr_ssl.config import READOUTS, FinetuneConfig
from ehr_ssl.errors import InputError
from ehr_ssl.layout import ENCODER_DIR
from ehr_ssl.model.encoder import EHREncoder
from ehr_ssl.training.budgets import budget_ids
from ehr_ssl.training.finetune import labeled_split
from ehr_ssl.training.probe import pooled_vectors, probe_scores, standardized_logistic
from ehr_ssl.training.selection import C_GRID, cv_folds


def cv_columns(x: np.ndarray, y: np.ndarray, meta, seed: int, repeats: int) -> tuple:
    """Per C of C_GRID: the mean fold AUROC over every fold of every repeat, and the AUROC of
    each repeat's out-of-fold scores pooled (mean over repeats; the visits of a fold that
    `cv_folds` left out, lacking a class, are not scored), under the pipeline's folds of this
    subset (repeat r is `cv_folds` with seed + r, as the pipeline's repeats are drawn).
    Shape: x (N, D) -> (C,), (C,)."""
    groups, ids = meta["patient_id"].to_numpy(), meta["visit_id"].to_numpy()
    per_repeat = [cv_folds(y, groups, ids, folds=FinetuneConfig.cv_folds, repeats=1,
                           seed=seed + r, setting="bench_cv_subset").splits
                  for r in range(repeats)]  # fmt: skip
    means, pooled = [], []
    for c in C_GRID:
        fold_aurocs, repeat_aurocs = [], []
        for splits in per_repeat:
            out_of_fold, scored = np.zeros(len(y)), np.zeros(len(y), dtype=bool)
            for train, val in splits:
                scores = probe_scores(standardized_logistic(x[train], y[train], c), x[val])
                fold_aurocs.append(roc_auc_score(y[val], scores))
                out_of_fold[val], scored[val] = scores, True
            repeat_aurocs.append(roc_auc_score(y[scored], out_of_fold[scored]))
        means.append(np.mean(fold_aurocs))
        pooled.append(np.mean(repeat_aurocs))
    return np.array(means), np.array(pooled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a pipeline run directory")
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--repeats", default="1,3,10")
    parser.add_argument("--readout", default="segments", choices=READOUTS)
    args = parser.parse_args()
    if not 1 <= args.budget <= FinetuneConfig.cv_max_labels:
        parser.error(f"--budget: the pipeline selects by cv up to {FinetuneConfig.cv_max_labels} "
                     "labels (finetune.cv_max_labels)")  # fmt: skip
    if not all(r.isdigit() and int(r) >= 1 for r in args.repeats.split(",")):
        parser.error(f"--repeats: counts of at least 1, comma-separated, got {args.repeats!r}")
    for path in (args.run / "pretrain" / ENCODER_DIR, args.tokens):
        if not path.is_dir():
            parser.error(f"{path}: not a directory (a pipeline run's encoder, its tokens)")
    try:
        diagnose(args)
    except InputError as e:  # a damaged encoder or tokens, a budget the labels cannot meet
        parser.error(str(e))


def diagnose(args: argparse.Namespace) -> None:
    """The table of `main`'s arguments, printed."""
    torch.set_num_threads(2)
    cpu = torch.device("cpu")
    encoder = EHREncoder.load_checked(args.run / "pretrain" / ENCODER_DIR)
    train_all = labeled_split(args.tokens, "train")
    x_all = pooled_vectors(encoder, train_all, cpu, readout=args.readout)
    y_all = np.asarray(train_all.labels).astype(np.int64)
    test = labeled_split(args.tokens, "test")
    x_test = pooled_vectors(encoder, test, cpu, readout=args.readout)
    y_test = np.asarray(test.labels).astype(np.int64)
    config = FinetuneConfig(label_budget=args.budget, seed=args.seed)
    ids, _ = budget_ids(args.tokens, config)
    chosen = np.isin(train_all.meta["visit_id"].to_numpy(), ids.to_numpy())
    patients = train_all.meta["patient_id"].to_numpy()
    rest = ~np.isin(patients, patients[chosen])
    x, y = x_all[chosen], y_all[chosen]
    meta = train_all.meta.filter(pl.Series(chosen))
    print(f"subset: {len(y)} labels, {int(y.sum())} positive; {int(rest.sum())} other labeled "
          f"train visits; {len(y_test)} test visits")  # fmt: skip
    columns = {}
    for repeats in (int(r) for r in args.repeats.split(",")):
        columns[f"cv mean x{repeats}"], columns[f"pooled x{repeats}"] = cv_columns(
            x, y, meta, args.seed, repeats
        )
    refits = [standardized_logistic(x, y, c) for c in C_GRID]
    columns["other train visits"] = np.array(
        [roc_auc_score(y_all[rest], probe_scores(p, x_all[rest])) for p in refits]
    )
    columns["test"] = np.array([roc_auc_score(y_test, probe_scores(p, x_test)) for p in refits])
    print("| C | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for i, c in enumerate(C_GRID):
        print(f"| {c:.2g} | " + " | ".join(f"{v[i]:.3f}" for v in columns.values()) + " |")
    picks = {name: C_GRID[int(np.argmax(v))] for name, v in columns.items()}
    print("C chosen by each column's best: " + ", ".join(f"{k} {v:.2g}" for k, v in picks.items()))


if __name__ == "__main__":
    main()
