"""Counts baselines: a bag of codes and value bins built from the token shards, fed to logistic
regression or gradient-boosted trees (LightGBM on the sparse frequent columns), with model
selection that never reads the test split.

Features come from exactly the tokens the transformer sees, so every baseline reads the same
visits, the same lookback window and the same cutoff (no event after the prediction time).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp
from lightgbm import LGBMClassifier
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MaxAbsScaler

from ehr_ssl.tokens.vocab import (
    NOT_EVENT_IDS,
    SEGMENT_CURRENT,
)
from ehr_ssl.training.selection import (
    C_GRID,
    LOGISTIC_MAX_ITER,
    Folds,
    chosen_cv_auroc,
    cross_validate,
    evidence_by_scaling,
)

# The selection AUROC (cv or holdout, `ehr_ssl.training.selection`) picks one candidate per
# grid. The logistic grid is wide (1e-4 .. 1e2): at 100 labels strong regularization wins.
LOGISTIC_GRID: dict[str, list] = {"C": list(C_GRID)}
# The hybrid (counts and the SSL readout in one logistic regression): C, and the scale of the
# standardized readout block against the max-abs scaled counts (a per-block L2 strength).
HYBRID_GRID: dict[str, list] = {"C": list(C_GRID), "vector_weight": [0.1, 0.3, 1.0]}
# LightGBM (the tabular baseline): fixed rounds and shrinkage, the grid over tree shape; row and
# column subsampling as MEDS-TAB and EHRSHOT tune it. At 20k visits a fit takes seconds. Every
# grid runs from the most regularized point (sklearn's ParameterGrid varies the last key in
# sorted order fastest): cv's one-standard-error rule keeps the earliest point near the best.
LIGHTGBM_GRID: dict[str, list] = {"num_leaves": [7, 31], "min_child_samples": [20, 5]}
LIGHTGBM_SETTINGS = {"n_estimators": 200, "learning_rate": 0.05, "subsample": 0.8,
                     "subsample_freq": 1, "colsample_bytree": 0.5, "reg_lambda": 1.0, "n_jobs": 2,
                     "verbose": -1, "deterministic": True, "force_row_wise": True}  # fmt: skip
GBM_MIN_NONZERO = 5  # a column reaches the trees only if >= this many train visits have it

BaselineKind = Literal["logistic", "hybrid", "lightgbm"]
GRIDS: dict[str, dict[str, list]] = {"logistic": LOGISTIC_GRID, "hybrid": HYBRID_GRID,
                                     "lightgbm": LIGHTGBM_GRID}  # fmt: skip


def n_count_features(vocab_size: int, n_bins: int) -> int:
    """Width of the `count_features` matrix: V codes + V * n_bins (code, bin) + V current."""
    return vocab_size * (n_bins + 2)


def count_features(frame: pl.DataFrame, *, vocab_size: int, n_bins: int) -> sp.csr_matrix:
    """Bag-of-codes features of each visit, log1p(count), from its token sequence.

    Column layout (V = vocab_size, column index = the token's vocabulary id within a block):

        [0, V)                      codes: count of id among all the visit's tokens
                                    (static, history and current visit)
        [V, V + V * n_bins)         (code, value bin): column V + id * n_bins + (bin - 1),
                                    tokens with value_bins > 0 only
        [V + V * n_bins, V*(n_bins+2))  current-visit codes: V + V * n_bins + id, tokens with
                                    segment_ids == 2 (SEGMENT_CURRENT), so a model can tell
                                    "in this visit" from "in the history" (history = all - current)

    Special tokens [PAD], [MASK], [CLS], [HIST] and [VISIT] are not counted (their columns stay
    zero); [UNK] is counted like any code. Values are log1p(count), not raw counts: counts of
    repeated history codes are heavy-tailed, and log1p keeps a patient with 30 identical labs from
    dominating a linear model while keeping zeros zero (sparsity) and the order of counts (trees
    are unaffected by a monotone transform).

    Each row depends only on that visit's tokens (no cross-visit statistics).

    Shape: frame (B rows) -> (B, V * (n_bins + 2)) float64 CSR, rows in frame order.

    Raises:
        ValueError: If a token id is outside [0, vocab_size), a value bin outside [0, n_bins],
            or the list columns of a visit have different lengths.
    """
    if vocab_size < 1 or n_bins < 1:
        raise ValueError(f"vocab_size and n_bins must be >= 1, got {vocab_size}, {n_bins}")
    ids, lengths = _flat(frame, "input_ids")
    bins, bin_lengths = _flat(frame, "value_bins")
    segments, segment_lengths = _flat(frame, "segment_ids")
    if not (np.array_equal(lengths, bin_lengths) and np.array_equal(lengths, segment_lengths)):
        raise ValueError("input_ids, value_bins and segment_ids differ in length for some visit")
    ids, bins = ids.astype(np.int64), bins.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"token ids must be in [0, {vocab_size}), got range [{ids.min()}, {ids.max()}]"
        )
    if bins.size and (bins.min() < 0 or bins.max() > n_bins):
        raise ValueError(f"value bins must be in [0, {n_bins}], got [{bins.min()}, {bins.max()}]")

    # Shape: (N_tokens,) the row (visit) of every flat token.
    rows = np.repeat(np.arange(frame.height, dtype=np.int64), lengths)
    # Structural tokens carry no clinical content; [UNK] does (a rare code was there), counted.
    is_excluded = np.zeros(vocab_size, dtype=bool)
    is_excluded[[i for i in NOT_EVENT_IDS if i < vocab_size]] = True
    counted = ~is_excluded[ids]
    valued = counted & (bins > 0)
    current = counted & (segments == SEGMENT_CURRENT)
    all_rows = np.concatenate([rows[counted], rows[valued], rows[current]])
    all_cols = np.concatenate(
        [
            ids[counted],
            vocab_size + ids[valued] * n_bins + (bins[valued] - 1),
            vocab_size + vocab_size * n_bins + ids[current],
        ]
    )
    counts = sp.coo_matrix(
        (np.ones(all_rows.size, dtype=np.float64), (all_rows, all_cols)),
        shape=(frame.height, n_count_features(vocab_size, n_bins)),
    )
    counts.sum_duplicates()
    matrix = counts.tocsr()
    np.log1p(matrix.data, out=matrix.data)
    return matrix


def _flat(frame: pl.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of a list column: visit i's items follow visit i-1's in `values`.

    Shape: values (N_tokens,), lengths (B,). A null list counts as empty.
    """
    if column not in frame.columns:
        raise ValueError(f"frame has no column {column!r} (columns: {frame.columns})")
    array = frame.get_column(column).to_arrow()
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    # flatten() honours slices and offsets (and skips null lists), unlike .values.
    values = array.flatten().to_numpy(zero_copy_only=False)
    lengths = array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    return values, lengths.astype(np.int64)


class SparseColumns(TransformerMixin, BaseEstimator):
    """Keep the columns that at least `min_nonzero` training rows have, as float32 CSR (LightGBM
    reads it as it is).

    The full count matrix (V * (n_bins + 2) columns) is mostly columns that almost nobody has,
    and a split on a handful of rows is noise. Fitting learns the kept columns from the training
    rows only, so transform is the same for any later rows and a column the training rows never
    hold is dropped at predict.

    Shape: (B, F) sparse -> (B, F_kept) float32 CSR.
    """

    def __init__(self, min_nonzero: int = GBM_MIN_NONZERO):
        self.min_nonzero = min_nonzero

    def fit(self, X, y=None) -> SparseColumns:
        X = sp.csc_matrix(X)
        self.n_features_in_ = X.shape[1]
        self.columns_ = np.flatnonzero(np.diff(X.indptr) >= self.min_nonzero)
        if self.columns_.size == 0:
            raise ValueError(
                f"no feature column is nonzero in >= {self.min_nonzero} training rows "
                f"({X.shape[0]} rows)"
            )
        return self

    def transform(self, X) -> sp.csr_matrix:
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} columns, got {X.shape[1]}")
        return sp.csr_matrix(X)[:, self.columns_].astype(np.float32)


class NonzeroColumns(TransformerMixin, BaseEstimator):
    """Drop the columns no training row has: for an L2 logistic regression an exact shortcut (the
    weight of a column that is zero on every training row stays 0 at the optimum), and the
    solver's cost per iteration follows the width, which a few hundred labeled visits leave
    mostly empty when the vocabulary is large.

    Shape: (B, F) sparse -> (B, F_kept) CSR, dtype kept.
    """

    def fit(self, X, y=None) -> NonzeroColumns:
        X = sp.csc_matrix(X)
        self.n_features_in_ = X.shape[1]
        self.columns_ = np.flatnonzero(np.diff(X.indptr) > 0)
        return self

    def transform(self, X) -> sp.csr_matrix:
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} columns, got {X.shape[1]}")
        return sp.csr_matrix(X)[:, self.columns_]


class HybridScaler(TransformerMixin, BaseEstimator):
    """The hybrid's features: the first `n_counts` columns (counts; those no training row has
    dropped, see `NonzeroColumns`) max-abs scaled, the rest
    (the SSL readout) standardized and multiplied by `vector_weight`, both fitted on training
    rows only. Shape: (B, F) sparse -> (B, F) sparse."""

    def __init__(self, n_counts: int, vector_weight: float = 1.0):
        self.n_counts = n_counts
        self.vector_weight = vector_weight

    def fit(self, X, y=None) -> HybridScaler:
        X = sp.csr_matrix(X)
        self.kept_counts_ = NonzeroColumns().fit(X[:, : self.n_counts])  # as the counts model
        self.counts_ = MaxAbsScaler().fit(self.kept_counts_.transform(X[:, : self.n_counts]))
        vectors = X[:, self.n_counts :].toarray()
        self.mean_, self.std_ = vectors.mean(0), vectors.std(0) + 1e-6
        return self

    def transform(self, X):
        X = sp.csr_matrix(X)
        counts = self.counts_.transform(self.kept_counts_.transform(X[:, : self.n_counts]))
        vectors = (X[:, self.n_counts :].toarray() - self.mean_) / self.std_
        return sp.hstack([counts, sp.csr_matrix(vectors * self.vector_weight)], format="csr")


def _make_pipeline(kind: BaselineKind, params: dict, *, seed: int, n_counts: int = 0) -> Pipeline:
    """One candidate: `params` of the grid on top of the kind's fixed settings. The hybrid's
    `n_counts` is the width of its counts block."""
    if kind in ("logistic", "hybrid"):
        # L2 (l1_ratio=0); lbfgs works on CSR directly, is deterministic and, unlike liblinear,
        # leaves the intercept unpenalized. MaxAbs scaling keeps the matrix sparse.
        params = dict(params)
        if kind == "hybrid":  # HybridScaler drops the counts block's empty columns itself
            scale = HybridScaler(n_counts, params.pop("vector_weight", 1.0))
            steps = [("scale", scale)]
        else:
            steps = [("columns", NonzeroColumns()), ("scale", MaxAbsScaler())]
        settings = {
            "l1_ratio": 0.0,
            "solver": "lbfgs",
            "class_weight": "balanced",
            "max_iter": LOGISTIC_MAX_ITER,
            "random_state": seed,
        }
        model = LogisticRegression(**(settings | params))
        return Pipeline([*steps, ("model", model)])
    if kind == "lightgbm":
        return _lightgbm_pipeline(params, seed=seed)
    raise ValueError(f"kind must be one of {', '.join(GRIDS)}, got {kind!r}")


def _lightgbm_pipeline(params: dict, *, seed: int) -> Pipeline:
    """LightGBM on the sparse columns >= GBM_MIN_NONZERO training rows hold; fixed rounds (no
    internal early-stopping split: selection is the protocol's), balanced class weights."""
    settings = LIGHTGBM_SETTINGS | {"class_weight": "balanced", "random_state": seed}
    model = LGBMClassifier(**(settings | params))
    return Pipeline([("columns", SparseColumns(GBM_MIN_NONZERO)), ("model", model)])


def fit_counts_baseline(
    kind: BaselineKind,
    X_train,
    y_train,
    X_val,
    y_val,
    *,
    seed: int,
    grid: dict[str, list] | None = None,
    n_counts: int = 0,
) -> tuple[Pipeline, dict]:
    """Fit one candidate per grid point on train and keep the one with the best validation AUROC
    (holdout selection).

    `logistic`: MaxAbsScaler + L2 LogisticRegression (lbfgs, class_weight="balanced"), grid
    `LOGISTIC_GRID` over C. `lightgbm`: `SparseColumns` (columns nonzero in >= GBM_MIN_NONZERO
    train rows) + LGBMClassifier (`LIGHTGBM_SETTINGS`: fixed rounds, no early stopping,
    class_weight="balanced"), grid `LIGHTGBM_GRID` over the tree shape. `hybrid`:
    `HybridScaler` (the first `n_counts` columns are counts) + the logistic model, grid
    `HYBRID_GRID`. The chosen model is not refit (it has seen train only); ties go to the
    earlier grid point. Balanced class weights raise P(admission) when positives are the
    minority: scores rank as they should but are not calibrated to the prevalence. The test
    split plays no part here. Deterministic for a seed.

    Shape: X_train (N, F), y_train (N,), X_val (M, F), y_val (M,); labels 0/1 or bool.

    Args:
        kind: "logistic", "lightgbm" or "hybrid".
        grid: Override of the default grid (estimator argument -> list of values; may also
            set fixed arguments such as max_iter).
        seed: Random state of the estimators.
        n_counts: The hybrid's counts columns (the rest are the SSL readout).

    Returns:
        The chosen fitted Pipeline (use `predict_proba`) and a JSON-ready record: kind, seed,
        protocol ("holdout"), chosen (the chosen hyper-parameters), val_auroc (the chosen
        one's), candidates (a list of {params, val_auroc} in grid order) and, for lightgbm,
        n_features_kept.

    Raises:
        ValueError: For an unknown kind, mismatched shapes, or a train or validation label
            vector without both classes (AUROC undefined).
    """
    _check_kind(kind)
    y_train, y_val = _binary_labels(y_train, "y_train"), _binary_labels(y_val, "y_val")
    for name, X, y in (("train", X_train, y_train), ("val", X_val, y_val)):
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"X_{name} has {X.shape[0]} rows but y_{name} has {y.shape[0]}")
    if X_train.shape[1] != X_val.shape[1]:
        raise ValueError(f"X_train has {X_train.shape[1]} columns, X_val {X_val.shape[1]}")

    best, best_auroc, best_params, candidates = None, -math.inf, None, []
    for params in ParameterGrid(dict(GRIDS[kind]) if grid is None else grid):
        pipeline = _make_pipeline(kind, params, seed=seed, n_counts=n_counts)
        pipeline.fit(X_train, y_train)
        auroc = float(roc_auc_score(y_val, predict_proba(pipeline, X_val)))
        candidates.append({"params": params, "val_auroc": auroc})
        if auroc > best_auroc:
            best, best_auroc, best_params = pipeline, auroc, params
    record = {"kind": kind, "seed": seed, "protocol": "holdout", "chosen": best_params,
              "val_auroc": best_auroc, "candidates": candidates}  # fmt: skip
    return best, _with_kept_features(record, best)


def fit_counts_baseline_cv(
    kind: BaselineKind,
    X,
    y,
    folds: Folds,
    *,
    seed: int,
    grid: dict[str, list] | None = None,
    n_counts: int = 0,
) -> tuple[Pipeline, dict]:
    """`fit_counts_baseline` under cv selection: the grid point `folds.rule` chooses from the
    mean fold scores of `folds.metric` over `folds` (positions into the rows of X;
    `cross_validate`), then refit on every row. The record's val_auroc is the chosen point's
    mean AUROC, its candidates' their means and standard errors (and mean log-losses);
    protocol "cv" with the folds, repeats, rule and metric.

    Shape: X (N, F), y (N,)."""
    _check_kind(kind)
    y = _binary_labels(y, "y")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
    X = sp.csr_matrix(X)

    def fit_score(params: dict, train: np.ndarray, val: np.ndarray) -> np.ndarray:
        pipeline = _make_pipeline(kind, params, seed=seed, n_counts=n_counts)
        return predict_proba(pipeline.fit(X[train], y[train]), X[val])

    candidates = list(ParameterGrid(dict(GRIDS[kind]) if grid is None else grid))
    evidence = None if kind == "lightgbm" else _evidence_of(kind, X, y, n_counts=n_counts)
    params, table = cross_validate(fit_score, y, folds, candidates, evidence)
    best = _make_pipeline(kind, params, seed=seed, n_counts=n_counts).fit(X, y)
    record = {
        "kind": kind,
        "seed": seed,
        **folds.describe(),
        "chosen": params,
        "val_auroc": chosen_cv_auroc(table, params),
        "candidates": [
            {
                "params": r["params"],
                "val_auroc": r["cv_auroc"],
                "val_se": r["cv_se"],
                "val_log_loss": r["cv_log_loss"],
            }
            | ({"log_evidence": r["log_evidence"]} if "log_evidence" in r else {})
            for r in table
        ],  # fmt: skip
    }
    return best, _with_kept_features(record, best)


def _evidence_of(kind: BaselineKind, X: sp.csr_matrix, y: np.ndarray, *, n_counts: int):
    """params -> the log evidence of a logistic kind on every row, the rows as the candidate's
    own scaling steps read them (`evidence_by_scaling`; the hybrid scales per vector_weight)."""

    def scale(scaling: dict) -> sp.csr_matrix:
        steps = _make_pipeline(kind, scaling, seed=0, n_counts=n_counts)[:-1]
        return sp.csr_matrix(steps.fit_transform(X, y))

    return evidence_by_scaling(scale, y)


def _check_kind(kind: str) -> None:
    if kind not in GRIDS:
        raise ValueError(f"kind must be one of {', '.join(GRIDS)}, got {kind!r}")


def _with_kept_features(record: dict, fitted: Pipeline) -> dict:
    """A lightgbm's record also says how many columns reached the trees."""
    if record["kind"] == "lightgbm":
        record["n_features_kept"] = int(fitted.named_steps["columns"].columns_.size)
    return record


def _binary_labels(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    values = np.unique(y)
    if not np.isin(values, [0, 1]).all():
        raise ValueError(f"{name} must hold 0/1 or bool labels, got values {values[:5]}")
    if values.size < 2:
        raise ValueError(f"{name} needs both classes for AUROC, got only {values}")
    return y.astype(np.int8)


def predict_proba(estimator, X) -> np.ndarray:
    """P(admission) of each row from a fitted classifier (or Pipeline) trained on 0/1 labels.

    Shape: X (B, F) -> (B,) float64 in [0, 1].
    """
    classes = list(estimator.classes_)
    if 1 not in classes:
        raise ValueError(f"estimator was not trained with a positive class 1, classes {classes}")
    return np.asarray(estimator.predict_proba(X)[:, classes.index(1)], dtype=np.float64)
