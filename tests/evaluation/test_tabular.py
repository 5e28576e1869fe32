"""Tests of the tabular features: windowed counts, value-bin stats and roll-ups against a
hand-made visit, the roll-up rule and parent tables, columns from the train vocabulary only, and
LightGBM's columns fitted on train rows only."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from ehr_ssl.evaluation.baselines import fit_counts_baseline_cv, predict_proba
from ehr_ssl.evaluation.tabular import (
    history_windows,
    n_tabular_features,
    rollup_matrix,
    tabular_column_names,
    tabular_features,
)
from ehr_ssl.tokens.vocab import CLS_ID, HIST_ID, SPECIAL_TOKENS, UNK_ID, VISIT_ID
from ehr_ssl.training.selection import cv_folds

VOCAB = [*SPECIAL_TOKENS, "DX//I50.1", "DX//I50.9", "LAB//HGB", "STATIC//age"]  # ids 6-9
V, N_BINS, WINDOWS = len(VOCAB), 3, (7.0, 30.0)
DAY = 24.0

# (input_id, value_bin, time_delta hours, segment_id), as the tokenizer lays a visit out.
VISIT_A = [
    (CLS_ID, 0, 0.0, 0),
    (9, 2, 0.0, 0),  # a static with a value bin
    (HIST_ID, 0, -365 * DAY, 1),
    (6, 0, -100 * DAY, 1),  # history only
    (8, 3, -20 * DAY, 1),  # within 30 days
    (UNK_ID, 0, -40 * DAY, 1),
    (7, 0, -3 * DAY, 1),  # within 7 days
    (8, 1, -2 * DAY, 1),
    (VISIT_ID, 0, -2.0, 2),
    (7, 0, -1.0, 2),
    (8, 2, -0.5, 2),
    (8, 1, -0.5, 2),  # same time as the previous: the later token is the last
]
VISIT_B = [(CLS_ID, 0, 0.0, 0), (HIST_ID, 0, -365 * DAY, 1), (VISIT_ID, 0, -1.0, 2)]


def token_frame(visits: list[list[tuple]]) -> pl.DataFrame:
    columns = {"input_ids": pl.Int32, "value_bins": pl.Int8, "time_deltas": pl.Float32,
               "segment_ids": pl.Int8}  # fmt: skip
    data = {name: [[t[i] for t in v] for v in visits] for i, name in enumerate(columns)}
    return pl.DataFrame(data, schema={name: pl.List(dtype) for name, dtype in columns.items()})


def named(row: np.ndarray, names: list[str]) -> dict[str, float]:
    return {names[j]: float(row[j]) for j in np.flatnonzero(row)}


def test_features_equal_hand_counts_windows_value_stats_and_rollups():
    rollup, ancestors = rollup_matrix(VOCAB)
    assert ancestors == ["DX//I50"]  # LAB//HGB and STATIC//age roll up to nothing
    X = tabular_features(token_frame([VISIT_A, VISIT_B]), vocab_size=V, n_bins=N_BINS,
                         rollup=rollup, windows=WINDOWS)  # fmt: skip
    names = tabular_column_names(VOCAB, ancestors, WINDOWS)
    assert X.shape == (2, n_tabular_features(V, 1, WINDOWS)) == (2, len(names))
    one, two = np.log1p(1), np.log1p(2)
    expected = {
        "static:STATIC//age": one,
        "current:DX//I50.9": one, "current:LAB//HGB": two, "current:^DX//I50": one,
        "history_7d:DX//I50.9": one, "history_7d:LAB//HGB": one, "history_7d:^DX//I50": one,
        "history_30d:DX//I50.9": one, "history_30d:LAB//HGB": two, "history_30d:^DX//I50": one,
        "history_30d:[UNK]": 0.0,
        "history:DX//I50.1": one, "history:DX//I50.9": one, "history:LAB//HGB": two,
        "history:[UNK]": one, "history:^DX//I50": two,
        "last:LAB//HGB": 1, "min:LAB//HGB": 1, "max:LAB//HGB": 3, "mean:LAB//HGB": 7 / 4,
        "last:STATIC//age": 2, "min:STATIC//age": 2, "max:STATIC//age": 2, "mean:STATIC//age": 2,
    }  # fmt: skip
    assert named(X[0].toarray()[0], names) == pytest.approx(
        {k: v for k, v in expected.items() if v}
    )
    assert X[1].nnz == 0  # separators only


def test_each_row_reads_only_its_visit_and_no_rollup_is_allowed():
    frame = token_frame([VISIT_A, VISIT_B, VISIT_A])
    X = tabular_features(frame, vocab_size=V, n_bins=N_BINS, windows=WINDOWS)
    np.testing.assert_array_equal(X[0].toarray(), X[2].toarray())
    alone = tabular_features(frame.slice(2, 1), vocab_size=V, n_bins=N_BINS, windows=WINDOWS)
    np.testing.assert_array_equal(alone.toarray(), X[2].toarray())
    assert X.shape[1] == n_tabular_features(V, 0, WINDOWS)


@pytest.mark.parametrize(
    "bad, match",
    [([(V, 0, 0.0, 2)], "token ids"), ([(6, N_BINS + 1, 0.0, 2)], "value bins")],
)
def test_out_of_range_tokens_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        tabular_features(token_frame([bad]), vocab_size=V, n_bins=N_BINS)


def test_rollups_come_from_the_vocabulary_only():
    """An ancestor needs two vocabulary codes: codes outside the (train-fitted) vocabulary,
    which the tokens hold as [UNK], add no column."""
    vocab = [*SPECIAL_TOKENS, "DX//I50.1", "DX//J18.0"]  # DX//J18.9 did not make min_count
    rollup, ancestors = rollup_matrix(vocab)
    assert ancestors == [] and rollup.shape == (len(vocab), 0)
    rollup, ancestors = rollup_matrix([*vocab, "DX//J18.9"])
    assert ancestors == ["DX//J18"]
    np.testing.assert_array_equal(rollup.toarray()[:, 0], [0] * 7 + [1, 1])


def test_windows_as_long_as_the_lookback_are_dropped():
    assert history_windows(365.0) == (7.0, 30.0)
    assert history_windows(1000.0) == (7.0, 30.0, 365.0)


def test_lightgbm_drops_columns_no_training_row_has_and_selects_in_cv_folds():
    rng = np.random.default_rng(0)
    n = 120
    y = rng.integers(0, 2, n)
    signal = sp.csr_matrix((y + rng.normal(0, 0.5, n))[:, None])
    noise = sp.random(n, 39, density=0.3, random_state=1)
    X = sp.hstack([signal, noise, sp.csr_matrix((n, 3))], format="csr")  # 3 never in train
    folds = cv_folds(y, np.arange(n), np.arange(n), folds=3, repeats=1, seed=0, setting="t")
    grid = {"num_leaves": [3, 7], "min_child_samples": [5]}
    fitted, record = fit_counts_baseline_cv("lightgbm", X, y, folds, seed=0, grid=grid)
    assert record["protocol"] == "cv" and record["chosen"] in [
        {"num_leaves": 3, "min_child_samples": 5}, {"num_leaves": 7, "min_child_samples": 5}
    ]  # fmt: skip
    assert record["n_features_kept"] <= 40
    unseen = sp.hstack([X[:, :40], sp.csr_matrix(np.full((n, 3), 9.0))], format="csr")
    np.testing.assert_array_equal(predict_proba(fitted, unseen), predict_proba(fitted, X))
    assert record["val_auroc"] > 0.7
