"""Tests of the counts baselines: feature layout against hand-made visits and a loop reference,
row independence, validation-only model selection, cv selection against a loop over the folds,
the hybrid's scaler and grid, a beats-chance check and label budgets."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from itertools import product
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from ehr_ssl.data.splits import label_budget_subset
from ehr_ssl.evaluation.baselines import (
    HYBRID_GRID,
    LIGHTGBM_GRID,
    LOGISTIC_GRID,
    HybridScaler,
    SparseColumns,
    _make_pipeline,
    count_features,
    fit_counts_baseline,
    fit_counts_baseline_cv,
    n_count_features,
    predict_proba,
)
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import CLS_ID, HIST_ID, MASK_ID, NOT_EVENT_IDS, PAD_ID, UNK_ID, VISIT_ID
from ehr_ssl.training.selection import C_GRID, Folds, choose, cv_folds, log_evidence_bound

V, N_BINS = 10, 3  # hand-made vocabulary: ids 0-5 special, 6-9 codes
GRIDS = {"logistic": LOGISTIC_GRID, "lightgbm": LIGHTGBM_GRID}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # BLAS threads crawl on a busy 2-core machine and the data here is tiny (LightGBM sets its
    # own n_jobs, LIGHTGBM_SETTINGS).
    with threadpool_limits(limits=1):
        yield


def token_frame(visits: list[list[tuple[int, int, int]]]) -> pl.DataFrame:
    """Visits given as lists of (input_id, value_bin, segment_id) tokens, in shard dtypes."""
    return pl.DataFrame(
        {
            "visit_id": list(range(1, len(visits) + 1)),
            "input_ids": [[t[0] for t in v] for v in visits],
            "value_bins": [[t[1] for t in v] for v in visits],
            "segment_ids": [[t[2] for t in v] for v in visits],
        },
        schema={
            "visit_id": pl.Int64,
            "input_ids": pl.List(pl.Int32),
            "value_bins": pl.List(pl.Int8),
            "segment_ids": pl.List(pl.Int8),
        },
    )


# [CLS] static [HIST] history [VISIT] current, as the tokenizer lays them out.
VISIT_A = [
    (CLS_ID, 0, 0),
    (6, 1, 0),  # a static with a value bin
    (HIST_ID, 0, 1),
    (7, 0, 1),
    (7, 2, 1),
    (UNK_ID, 0, 1),
    (MASK_ID, 0, 1),
    (VISIT_ID, 0, 2),
    (6, 3, 2),
    (8, 0, 2),
]
VISIT_B = [(CLS_ID, 0, 0), (HIST_ID, 0, 1), (VISIT_ID, 0, 2), (PAD_ID, 0, 2)]
VISIT_C = [(CLS_ID, 0, 0), (9, 3, 0), (HIST_ID, 0, 1), (VISIT_ID, 0, 2), (9, 3, 2)]


def current(code: int) -> int:
    return V + V * N_BINS + code


def code_bin(code: int, value_bin: int) -> int:
    return V + code * N_BINS + value_bin - 1


def test_count_features_hand_made_entries():
    X = count_features(token_frame([VISIT_A, VISIT_B, VISIT_C]), vocab_size=V, n_bins=N_BINS)
    assert X.shape == (3, n_count_features(V, N_BINS)) == (3, 50)
    expected = np.zeros((3, 50))
    # A: codes 6 x2, 7 x2, [UNK] x1, 8 x1; (6, bin 1), (7, bin 2), (6, bin 3); current 6 and 8.
    for col, count in {6: 2, 7: 2, UNK_ID: 1, 8: 1}.items():
        expected[0, col] = count
    for col in (code_bin(6, 1), code_bin(7, 2), code_bin(6, 3), current(6), current(8)):
        expected[0, col] = 1
    # B: only special tokens ([PAD] in the current segment too): an all-zero row.
    # C: code 9 twice, both with bin 3 (one static, one current).
    expected[2, 9], expected[2, code_bin(9, 3)], expected[2, current(9)] = 2, 2, 1
    np.testing.assert_array_equal(X.toarray(), np.log1p(expected))
    assert X[0, 6] == np.log1p(2.0)
    assert X[:, list(NOT_EVENT_IDS)].nnz == 0
    assert X[:, [current(i) for i in NOT_EVENT_IDS]].nnz == 0


def test_count_features_rejects_out_of_range_tokens():
    with pytest.raises(ValueError, match="token ids"):
        count_features(token_frame([[(V, 0, 2)]]), vocab_size=V, n_bins=N_BINS)
    with pytest.raises(ValueError, match="value bins"):
        count_features(token_frame([[(6, N_BINS + 1, 2)]]), vocab_size=V, n_bins=N_BINS)
    bad = token_frame([VISIT_A]).with_columns(pl.col("value_bins").list.slice(0, 2))
    with pytest.raises(ValueError, match="differ in length"):
        count_features(bad, vocab_size=V, n_bins=N_BINS)


def reference_count_features(frame: pl.DataFrame, vocab_size: int, n_bins: int) -> np.ndarray:
    """The layout of count_features written with Python loops, from its docstring."""
    counts = np.zeros((frame.height, n_count_features(vocab_size, n_bins)))
    for row, (ids, bins, segments) in enumerate(
        zip(frame["input_ids"], frame["value_bins"], frame["segment_ids"], strict=True)
    ):
        for token, value_bin, segment in zip(ids, bins, segments, strict=True):
            if token in NOT_EVENT_IDS:
                continue
            counts[row, token] += 1
            if value_bin > 0:
                counts[row, vocab_size + token * n_bins + value_bin - 1] += 1
            if segment == 2:
                counts[row, vocab_size + vocab_size * n_bins + token] += 1
    return np.log1p(counts)


@pytest.fixture(scope="module")
def cohort(cohort_tokens: Path) -> dict:
    """The fixture cohort's labeled visits per split, with their count features."""
    tokenizer = Tokenizer.load(cohort_tokens)
    sizes = {"vocab_size": tokenizer.vocab_size, "n_bins": tokenizer.config.n_bins}
    out = {"sizes": sizes, "tokens": cohort_tokens}
    for split in ("train", "val", "test"):
        frame = label_budget_subset(read_split(cohort_tokens, split), None, seed=0)
        out[split] = (frame, count_features(frame, **sizes), frame["label"].to_numpy())
    return out


def test_count_features_match_loop_reference(cohort: dict):
    frame = read_split(cohort["tokens"], "train")
    X = count_features(frame, **cohort["sizes"])
    np.testing.assert_allclose(
        X.toarray(), reference_count_features(frame, **cohort["sizes"]), rtol=0, atol=1e-12
    )
    # A sliced frame (list offsets not starting at 0) gives the same rows.
    np.testing.assert_array_equal(
        count_features(frame.slice(17, 40), **cohort["sizes"]).toarray(), X[17:57].toarray()
    )


def test_rows_depend_only_on_their_own_visit(cohort: dict):
    sizes = {"vocab_size": V, "n_bins": N_BINS}
    row_a = count_features(token_frame([VISIT_A, VISIT_B, VISIT_C]), **sizes)[0].toarray()
    # Other visits get more, fewer and different tokens (longer lists shift A's offsets).
    other_b = VISIT_B + [(7, 1, 2)] * 5
    other_c = [(CLS_ID, 0, 0), (8, 2, 1)]
    for frame, row in (
        (token_frame([VISIT_A, other_b, other_c]), 0),
        (token_frame([other_b, VISIT_A]), 1),
        (token_frame([VISIT_A]), 0),
    ):
        np.testing.assert_array_equal(count_features(frame, **sizes)[row].toarray(), row_a)
    # On the cohort: dropping each other visit's last tokens leaves visit 0's row bitwise equal.
    frame = read_split(cohort["tokens"], "train").head(50)
    cut = frame.with_columns(
        pl.when(pl.int_range(pl.len()) > 0)
        .then(pl.col(c).list.head(pl.col("length") - 2))
        .otherwise(pl.col(c))
        for c in ("input_ids", "value_bins", "segment_ids")
    )
    X, X_cut = (count_features(f, **cohort["sizes"]) for f in (frame, cut))
    assert (X[1:] != X_cut[1:]).nnz > 0  # the edit did change the other rows
    np.testing.assert_array_equal(X[0].toarray(), X_cut[0].toarray())


@pytest.fixture(scope="module")
def fitted(cohort: dict) -> dict:
    (_, X_train, y_train), (_, X_val, y_val) = cohort["train"], cohort["val"]
    return {
        kind: fit_counts_baseline(kind, X_train, y_train, X_val, y_val, seed=0)
        for kind in ("logistic", "lightgbm")
    }


@pytest.mark.parametrize("kind", ["logistic", "lightgbm"])
def test_fit_selects_from_grid_on_validation(cohort: dict, fitted: dict, kind: str):
    estimator, record = fitted[kind]
    _, X_test, _ = cohort["test"]
    scores = predict_proba(estimator, X_test)
    assert scores.shape == (X_test.shape[0],)
    assert np.all((scores >= 0) & (scores <= 1))
    assert len(set(np.round(scores, 6))) > 1
    grid = GRIDS[kind]
    assert set(record["chosen"]) == set(grid)
    assert all(record["chosen"][name] in values for name, values in grid.items())
    assert len(record["candidates"]) == np.prod([len(v) for v in grid.values()])
    aurocs = [c["val_auroc"] for c in record["candidates"]]
    assert record["val_auroc"] == max(aurocs)
    first_best = record["candidates"][aurocs.index(max(aurocs))]["params"]
    assert record["chosen"] == first_best
    model = estimator[-1]
    if kind == "lightgbm":  # fixed rounds, no internal early-stopping split of the training rows
        assert model.booster_.current_iteration() == model.n_estimators
    else:
        assert np.all(model.n_iter_ < model.max_iter)  # converged
    # The recorded val AUROC is that of the returned model.
    _, X_val, y_val = cohort["val"]
    assert roc_auc_score(y_val, predict_proba(estimator, X_val)) == record["val_auroc"]


@pytest.mark.parametrize("kind", ["logistic", "lightgbm"])
def test_test_labels_change_nothing_and_refit_is_deterministic(
    cohort: dict, fitted: dict, kind: str
):
    """Re-run from frames whose TEST labels are shuffled: same choice, bitwise same scores."""
    frame, _, y_test = cohort["test"]
    shuffled = frame.with_columns(
        label=pl.Series(np.random.default_rng(0).permutation(frame["label"].to_numpy()))
    )
    assert not np.array_equal(shuffled["label"].to_numpy(), y_test)
    (_, X_train, y_train), (_, X_val, y_val) = cohort["train"], cohort["val"]
    estimator, record = fit_counts_baseline(kind, X_train, y_train, X_val, y_val, seed=0)
    reference_estimator, reference_record = fitted[kind]
    assert record == reference_record
    np.testing.assert_array_equal(
        predict_proba(estimator, count_features(shuffled, **cohort["sizes"])),
        predict_proba(reference_estimator, cohort["test"][1]),
    )


@pytest.mark.parametrize("kind", ["logistic", "lightgbm"])
def test_selection_reads_validation_labels(cohort: dict, fitted: dict, kind: str):
    (_, X_train, y_train), (_, X_val, y_val) = cohort["train"], cohort["val"]
    y_shuffled = np.random.default_rng(1).permutation(y_val)
    _, record = fit_counts_baseline(kind, X_train, y_train, X_val, y_shuffled, seed=0)
    reference = [c["val_auroc"] for c in fitted[kind][1]["candidates"]]
    assert [c["val_auroc"] for c in record["candidates"]] != reference


def test_fit_rejects_bad_input(cohort: dict):
    (_, X_train, y_train), (_, X_val, y_val) = cohort["train"], cohort["val"]
    with pytest.raises(ValueError, match="kind"):
        fit_counts_baseline("forest", X_train, y_train, X_val, y_val, seed=0)
    with pytest.raises(ValueError, match="both classes"):
        fit_counts_baseline("logistic", X_train, y_train, X_val, np.zeros_like(y_val), seed=0)
    with pytest.raises(ValueError, match="rows"):
        fit_counts_baseline("logistic", X_train, y_train[:-1], X_val, y_val, seed=0)


def test_fit_cv_rejects_bad_input(cohort: dict, train_folds: Folds):
    _, X, y = cohort["train"]
    with pytest.raises(
        ValueError, match="kind must be one of logistic, hybrid, lightgbm, got 'forest'"
    ):
        fit_counts_baseline_cv("forest", X, y, train_folds, seed=0)
    with pytest.raises(ValueError, match="both classes"):
        fit_counts_baseline_cv("logistic", X, np.zeros_like(y), train_folds, seed=0)
    with pytest.raises(ValueError, match="rows"):
        fit_counts_baseline_cv("logistic", X, y[:-1], train_folds, seed=0)


def test_the_logistic_grid_is_the_shared_c_grid():
    assert {"C": list(C_GRID)} == LOGISTIC_GRID
    assert min(LOGISTIC_GRID["C"]) == pytest.approx(1e-4)
    assert max(LOGISTIC_GRID["C"]) == pytest.approx(1e2)


@pytest.fixture(scope="module")
def train_folds(cohort: dict) -> Folds:
    """3 folds, 1 repeat over the fixture cohort's labeled train visits (grouped by patient)."""
    frame, _, y = cohort["train"]
    return cv_folds(
        y, frame["patient_id"].to_numpy(), frame["visit_id"].to_numpy(),
        folds=3, repeats=1, seed=0, setting="evaluate.label_budget",
    )  # fmt: skip


CV_GRIDS = {
    "logistic": {"C": [1e-3, 0.1, 10.0]},
    "lightgbm": {"num_leaves": [3, 15], "min_child_samples": [5], "n_estimators": [20]},
}


@pytest.mark.parametrize("kind", ["logistic", "lightgbm"])
def test_fit_cv_chooses_by_mean_fold_auroc_and_refits_on_every_row(
    cohort: dict, train_folds: Folds, kind: str
):
    _, X, y = cohort["train"]
    grid = CV_GRIDS[kind]
    estimator, record = fit_counts_baseline_cv(kind, X, y, train_folds, seed=0, grid=grid)
    # Reference: each fold as a holdout fit of the whole grid, averaged over the folds.
    per_fold = [
        fit_counts_baseline(kind, X[train], y[train], X[val], y[val], seed=0, grid=grid)[1]
        for train, val in train_folds.splits
    ]
    points = [c["params"] for c in per_fold[0]["candidates"]]
    folds = [[f["candidates"][i]["val_auroc"] for f in per_fold] for i in range(len(points))]
    means = [np.mean(aurocs) for aurocs in folds]
    ses = [np.std(aurocs, ddof=1) / np.sqrt(len(aurocs)) for aurocs in folds]
    assert [c["params"] for c in record["candidates"]] == points  # grid order
    np.testing.assert_allclose([c["val_auroc"] for c in record["candidates"]], means, atol=1e-12)
    np.testing.assert_allclose([c["val_se"] for c in record["candidates"]], ses, atol=1e-12)
    index = choose(means, ses, train_folds.rule)  # the folds' rule
    assert record["chosen"] == points[index]
    assert record["val_auroc"] == pytest.approx(means[index], abs=1e-12)
    assert {k: record[k] for k in ("kind", "seed", "protocol", "folds", "repeats", "rule")} == {
        "kind": kind, "seed": 0, "protocol": "cv", "folds": 3, "repeats": 1, "rule": "best",
    }  # fmt: skip
    # The returned model is the chosen point fit on every row, not a fold's model.
    chosen_grid = {name: [value] for name, value in record["chosen"].items()}
    refit, _ = fit_counts_baseline(kind, X, y, X, y, seed=0, grid=chosen_grid)
    _, X_test, _ = cohort["test"]
    scores = predict_proba(estimator, X_test)
    np.testing.assert_allclose(scores, predict_proba(refit, X_test), rtol=0, atol=1e-12)
    train, _ = train_folds.splits[0]
    fold_model, _ = fit_counts_baseline(kind, X[train], y[train], X, y, seed=0, grid=chosen_grid)
    assert not np.allclose(scores, predict_proba(fold_model, X_test))
    if kind == "logistic":
        np.testing.assert_allclose(estimator[-1].coef_, refit[-1].coef_, rtol=0, atol=1e-12)
        assert record["chosen"]["C"] == estimator[-1].C
    else:
        assert record["n_features_kept"] == estimator.named_steps["columns"].columns_.size > 0


def test_fit_cv_reads_only_the_rows_of_the_folds(cohort: dict, train_folds: Folds):
    """Labels outside every fold's rows change no candidate's AUROC (they change the refit)."""
    _, X, y = cohort["train"]
    grid = CV_GRIDS["logistic"]
    used = np.unique(np.concatenate([np.concatenate(s) for s in train_folds.splits]))
    extra = sp.vstack([X, X[:5]], format="csr")  # 5 more rows no fold refers to
    y_extra = np.concatenate([y, 1 - y[:5]])
    _, record = fit_counts_baseline_cv("logistic", X, y, train_folds, seed=0, grid=grid)
    _, record_extra = fit_counts_baseline_cv(
        "logistic", extra, y_extra, train_folds, seed=0, grid=grid
    )
    assert used.size == X.shape[0]
    assert record_extra["candidates"] == record["candidates"]


def dense_block(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Readout-like columns: far from zero mean and unit scale, each column its own."""
    return rng.normal(5.0, 1.0, (n, d)) * rng.uniform(0.5, 4.0, d) + rng.normal(0, 10, d)


def test_hybrid_scaler_fits_on_the_fitting_rows_only():
    rng = np.random.default_rng(0)
    n_counts = 6
    counts = sp.random(40, n_counts, density=0.4, random_state=1).toarray() * 7
    counts[:, 2] = 0  # a column that no row has: dropped
    counts[30:, 4] = 3.0  # one that only rows outside the fit have: dropped too
    counts[:30, 4] = 0
    X = sp.hstack([sp.csr_matrix(counts), dense_block(rng, 40, 3)], format="csr")
    fit_rows, other_rows = X[:30], X[30:]
    scaler = HybridScaler(n_counts, vector_weight=0.3).fit(fit_rows)
    out = scaler.transform(other_rows)
    kept = [c for c in range(n_counts) if c not in (2, 4)]
    assert sp.issparse(out) and out.shape == (other_rows.shape[0], len(kept) + 3)
    # Reference from the docstring, statistics of the fitting rows.
    fit_dense, other_dense = fit_rows.toarray(), other_rows.toarray()
    max_abs = np.abs(fit_dense[:, kept]).max(0)
    vectors = fit_dense[:, n_counts:]
    expected = np.hstack(
        [
            other_dense[:, kept] / max_abs,
            0.3 * (other_dense[:, n_counts:] - vectors.mean(0)) / (vectors.std(0) + 1e-6),
        ]
    )
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-12, atol=1e-12)
    # Each row's output depends on the fitting rows, not on the rows transformed with it.
    np.testing.assert_array_equal(scaler.transform(other_rows[:3]).toarray(), out[:3].toarray())
    # On the fitting rows the readout block is standardized (to the weight's scale).
    fitted = scaler.transform(fit_rows).toarray()[:, n_counts:]
    np.testing.assert_allclose(fitted.mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(fitted.std(0), 0.3, rtol=1e-5)
    assert np.abs(scaler.transform(fit_rows).toarray()[:, :n_counts]).max() == pytest.approx(1.0)


def test_hybrid_scaler_weight_scales_only_the_vector_block():
    rng = np.random.default_rng(2)
    n_counts = 5
    X = sp.hstack(
        [sp.random(25, n_counts, density=0.5, random_state=3), dense_block(rng, 25, 4)],
        format="csr",
    )
    unit = HybridScaler(n_counts, vector_weight=1.0).fit(X[:20]).transform(X[20:]).toarray()
    for weight in (0.1, 3.0):
        out = HybridScaler(n_counts, vector_weight=weight).fit(X[:20]).transform(X[20:]).toarray()
        np.testing.assert_array_equal(out[:, :n_counts], unit[:, :n_counts])
        np.testing.assert_allclose(out[:, n_counts:], weight * unit[:, n_counts:], rtol=1e-12)


@pytest.fixture(scope="module")
def hybrid_data(cohort: dict) -> dict:
    """The cohort's counts and a 4-column readout: column 0 carries the label, the rest noise."""
    rng = np.random.default_rng(4)
    out = {}
    for split in ("train", "val", "test"):
        _, X, y = cohort[split]
        vectors = dense_block(rng, X.shape[0], 4)
        vectors[:, 0] += 3.0 * y
        out[split] = (sp.hstack([X, vectors], format="csr"), y)
    out["n_counts"] = cohort["train"][1].shape[1]
    return out


def test_hybrid_runs_over_c_and_vector_weight(hybrid_data: dict):
    (X_train, y_train), (X_val, y_val) = hybrid_data["train"], hybrid_data["val"]
    n_counts = hybrid_data["n_counts"]
    estimator, record = fit_counts_baseline(
        "hybrid", X_train, y_train, X_val, y_val, seed=0, n_counts=n_counts
    )
    spanned = [(c["params"]["C"], c["params"]["vector_weight"]) for c in record["candidates"]]
    assert sorted(spanned) == sorted(product(C_GRID, HYBRID_GRID["vector_weight"]))
    assert record["protocol"] == "holdout" and record["kind"] == "hybrid"
    scaler, model = estimator.named_steps["scale"], estimator.named_steps["model"]
    assert isinstance(scaler, HybridScaler) and scaler.n_counts == n_counts
    assert (model.C, scaler.vector_weight) == (
        record["chosen"]["C"], record["chosen"]["vector_weight"]
    )  # fmt: skip
    assert "vector_weight" not in model.get_params()
    X_test, y_test = hybrid_data["test"]
    scores = predict_proba(estimator, X_test)
    assert scores.shape == y_test.shape and np.all((scores >= 0) & (scores <= 1))
    assert roc_auc_score(y_test, scores) > 0.75
    # The readout's label column outweighs its noise columns: the vector block is used.
    readout = model.coef_[0, scaler.kept_counts_.columns_.size :]  # after the kept counts
    assert readout[0] > 0 and np.argmax(np.abs(readout)) == 0


def test_hybrid_under_cv(hybrid_data: dict, train_folds: Folds):
    X, y = hybrid_data["train"]
    grid = {"C": [1e-3, 1.0], "vector_weight": [0.1, 1.0]}
    estimator, record = fit_counts_baseline_cv(
        "hybrid", X, y, train_folds, seed=0, grid=grid, n_counts=hybrid_data["n_counts"]
    )
    assert [c["params"] for c in record["candidates"]] == [
        {"C": c, "vector_weight": w} for c in grid["C"] for w in grid["vector_weight"]
    ]
    assert record["protocol"] == "cv" and "n_features_kept" not in record
    assert estimator.named_steps["scale"].n_counts == hybrid_data["n_counts"]
    assert estimator.named_steps["scale"].vector_weight == record["chosen"]["vector_weight"]


@pytest.mark.parametrize("kind", ["logistic", "hybrid", "lightgbm"])
def test_evidence_selection_chooses_a_logistic_c_and_leaves_the_trees_to_the_folds(
    hybrid_data: dict, train_folds: Folds, kind: str
):
    X, y = hybrid_data["train"]
    n_counts = hybrid_data["n_counts"]
    if kind == "logistic":
        X = X[:, :n_counts]
    grid = CV_GRIDS.get(kind, {"C": [1e-3, 1.0], "vector_weight": [0.1, 1.0]})
    evidence_folds = replace(train_folds, penalty="evidence")
    fit = partial(fit_counts_baseline_cv, kind, X, y, seed=0, grid=grid, n_counts=n_counts)
    (_, by_folds), (estimator, by_evidence) = fit(train_folds), fit(evidence_folds)
    assert by_evidence["penalty"] == "evidence"
    drop = "log_evidence"
    assert [{k: v for k, v in c.items() if k != drop} for c in by_evidence["candidates"]] == (
        by_folds["candidates"]
    )  # the same fold figures
    if kind == "lightgbm":  # no evidence: the folds choose
        assert by_evidence["chosen"] == by_folds["chosen"]
        assert all(drop not in c for c in by_evidence["candidates"])
        return
    for candidate in by_evidence["candidates"]:  # each on every row, as its steps scale them
        steps = _make_pipeline(kind, {**candidate["params"], "C": 1.0}, seed=0,
                               n_counts=n_counts)[:-1]  # fmt: skip
        z = sp.csr_matrix(steps.fit_transform(X, y))
        expected, _ = log_evidence_bound(z, y, candidate["params"]["C"])
        assert candidate[drop] == pytest.approx(expected, abs=1e-3)  # warm-started along C
    best = max(by_evidence["candidates"], key=lambda c: c[drop])
    assert by_evidence["chosen"] == best["params"]
    assert best["params"]["C"] == estimator.named_steps["model"].C


@pytest.fixture(scope="module")
def larger_cohort(tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    """3,000 visits, half labeled: the fixture cohort's test split has too few labels (26) for a
    stable AUROC. Returns the tokens directory and the oracle probabilities."""
    from ehr_ssl.config import TokenizeConfig, TokenizerConfig
    from ehr_ssl.data.synthetic import generate_cohort, write_cohort
    from ehr_ssl.tokens.tokenize import tokenize_dataset

    root = tmp_path_factory.mktemp("larger_cohort")
    synthetic = generate_cohort(3000, labeled_frac=0.5, seed=2)
    write_cohort(synthetic, root / "data")
    config = TokenizeConfig(tokenizer=TokenizerConfig(max_length=64))
    tokenize_dataset(root / "data", root / "tokens", config)
    return root / "tokens", synthetic.oracle


@pytest.mark.parametrize(
    ("kind", "grid"),
    [
        ("logistic", None),
        # One grid point, fewer rounds: keeps the test fast; the selection is tested above.
        ("lightgbm", {"num_leaves": [7], "min_child_samples": [20], "n_estimators": [100]}),
    ],
)
def test_baseline_beats_chance_but_not_the_oracle(larger_cohort, kind: str, grid):
    tokens, oracle = larger_cohort
    tokenizer = Tokenizer.load(tokens)
    sizes = {"vocab_size": tokenizer.vocab_size, "n_bins": tokenizer.config.n_bins}
    data = {}
    for split in ("train", "val", "test"):
        frame = label_budget_subset(read_split(tokens, split), None, seed=0)
        data[split] = (frame, count_features(frame, **sizes), frame["label"].to_numpy())
    (_, X_train, y_train), (_, X_val, y_val) = data["train"], data["val"]
    estimator, _ = fit_counts_baseline(kind, X_train, y_train, X_val, y_val, seed=0, grid=grid)
    test_frame, X_test, y_test = data["test"]
    assert y_test.size >= 150
    auroc = roc_auc_score(y_test, predict_proba(estimator, X_test))
    truth = test_frame.join(oracle, on="visit_id", how="left", maintain_order="left")
    oracle_auroc = roc_auc_score(y_test, truth["admission_probability"].to_numpy())
    # Above chance; and not above what the true risk allows (a leak of the outcome would be).
    assert 0.6 < auroc < oracle_auroc + 0.05, (auroc, oracle_auroc)


def test_dropping_columns_no_training_row_has_leaves_the_logistic_model_unchanged():
    """`NonzeroColumns` is a shortcut, not a change of model: the same predictions as the L2
    logistic regression on every column, on rows that do have the dropped columns."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MaxAbsScaler

    rng = np.random.default_rng(3)
    X = sp.random(200, 400, density=0.02, random_state=2, format="csr") * 5
    X = sp.csr_matrix(X)
    fit = np.arange(120)
    y = (X[fit].sum(1).A1 + rng.normal(0, 0.5, 120)) > np.median(X[fit].sum(1).A1)
    held = np.diff(sp.csc_matrix(X[fit]).indptr) > 0
    assert (~held).sum() > 20 and sp.csc_matrix(X[120:])[:, ~held].nnz > 0
    pruned = _make_pipeline("logistic", {"C": 1.0}, seed=0).set_params(model__tol=1e-10)
    pruned.fit(X[fit], y)
    full = Pipeline(
        [("scale", MaxAbsScaler()), ("model", LogisticRegression(C=1.0, l1_ratio=0.0,
         class_weight="balanced", max_iter=5000, tol=1e-10))]
    ).fit(X[fit], y)  # fmt: skip
    assert pruned.named_steps["columns"].columns_.size == held.sum()
    np.testing.assert_allclose(
        pruned.predict_proba(X[120:])[:, 1], full.predict_proba(X[120:])[:, 1], atol=1e-6
    )


def test_sparse_columns_keep_what_enough_training_rows_hold():
    """The trees' column filter: kept iff >= min_nonzero training rows are nonzero there, learnt
    from the training rows only; nothing kept is an error naming the threshold."""
    train = sp.csr_matrix(np.array([[1, 0, 2, 0], [1, 0, 0, 0], [3, 5, 1, 0], [0, 0, 4, 0.0]]))
    columns = SparseColumns(min_nonzero=3).fit(train)
    np.testing.assert_array_equal(columns.columns_, [0, 2])  # 3 rows each; column 1 has 1 row
    later = sp.csr_matrix(np.array([[7, 7, 7, 7.0]]))  # a later row holding every column
    out = columns.transform(later)
    assert sp.issparse(out) and out.dtype == np.float32
    np.testing.assert_array_equal(out.toarray(), [[7, 7]])
    with pytest.raises(ValueError, match="expected 4 columns"):
        columns.transform(later[:, :3])
    with pytest.raises(ValueError, match=">= 5 training rows"):
        SparseColumns(min_nonzero=5).fit(train)
