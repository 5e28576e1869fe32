"""Model selection with few labels: the cv folds (grouped by patient, stratified, independent of
row order), the choice by mean fold AUROC or balanced log-loss (the best, or the
one-standard-error rule) and the cv-or-holdout rule."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit, log_expit
from sklearn.metrics import log_loss, roc_auc_score

from ehr_ssl.errors import InputError
from ehr_ssl.training.classifier_loop import EpochSelection
from ehr_ssl.training.selection import (
    C_GRID,
    Folds,
    FoldScore,
    _accelerated_em,
    balanced_log_loss,
    choose,
    cross_validate,
    cv_folds,
    evidence_by_scaling,
    fold_mean_and_se,
    log_evidence_bound,
    resolve_selection,
)

SETTING = "finetune.label_budget"


def layout(n_patients: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """Visits of patients with 1-4 visits each (some patients have both labels), with unique,
    unsorted, non-consecutive visit ids. Shape: every array (N,)."""
    rng = np.random.default_rng(seed)
    visits = rng.integers(1, 5, n_patients)
    groups = np.repeat(7 * np.arange(n_patients) + 3, visits)
    risk = np.repeat(rng.uniform(0.05, 0.95, n_patients), visits)
    labels = (rng.random(groups.size) < risk).astype(np.int64)
    labels[:2] = (0, 1)  # both classes whatever the draw
    ids = rng.permutation(100 * groups.size)[: groups.size] + 1000
    return {"labels": labels, "groups": groups, "ids": ids}


def folds_of(data: dict[str, np.ndarray], **kwargs) -> Folds:
    settings = {"folds": 5, "repeats": 2, "seed": 0, "setting": SETTING} | kwargs
    return cv_folds(data["labels"], data["groups"], data["ids"], **settings)


def id_splits(folds: Folds, ids: np.ndarray) -> set[tuple[frozenset, frozenset]]:
    """The folds as sets of visit ids (row positions forgotten)."""
    return {(frozenset(ids[train]), frozenset(ids[val])) for train, val in folds.splits}


def test_folds_are_grouped_stratified_and_cover_every_row_once_per_repeat():
    data = layout()
    n = data["labels"].size
    folds = folds_of(data, folds=4, repeats=3)
    assert (folds.n_folds, folds.n_repeats) == (4, 3)
    assert folds.describe() == {
        "protocol": "cv", "folds": 4, "repeats": 3, "rule": "best", "metric": "auroc",
        "penalty": "cv",
    }  # fmt: skip
    assert len(folds.splits) == 4 * 3
    for train, val in folds.splits:
        assert np.intersect1d(train, val).size == 0
        assert np.union1d(train, val).size == n  # every row on one side
        assert not set(data["groups"][train]) & set(data["groups"][val])  # patients apart
        assert set(data["labels"][val]) == {0, 1} == set(data["labels"][train])
    repeats = [folds.splits[r * 4 : (r + 1) * 4] for r in range(3)]
    for repeat in repeats:
        val_rows = np.concatenate([val for _, val in repeat])
        np.testing.assert_array_equal(np.sort(val_rows), np.arange(n))  # once each
    as_sets = [{frozenset(val) for _, val in repeat} for repeat in repeats]
    assert as_sets[0] != as_sets[1] and as_sets[1] != as_sets[2]  # each repeat shuffled anew


def test_folds_of_visits_do_not_depend_on_row_order():
    data = layout(seed=1)
    order = np.random.default_rng(5).permutation(data["ids"].size)
    permuted = {k: v[order] for k, v in data.items()}
    assert not np.array_equal(permuted["ids"], data["ids"])
    original, shuffled = folds_of(data), folds_of(permuted)
    assert id_splits(shuffled, permuted["ids"]) == id_splits(original, data["ids"])
    # Same folds in the same order; positions refer to the rows as given.
    for (_, val), (_, val_shuffled) in zip(original.splits, shuffled.splits, strict=True):
        np.testing.assert_array_equal(
            np.sort(data["ids"][val]), np.sort(permuted["ids"][val_shuffled])
        )


def test_folds_are_deterministic_for_a_seed():
    data = layout(seed=2)
    assert id_splits(folds_of(data, seed=3), data["ids"]) == id_splits(
        folds_of(data, seed=3), data["ids"]
    )
    assert id_splits(folds_of(data, seed=3), data["ids"]) != id_splits(
        folds_of(data, seed=4), data["ids"]
    )


def test_k_is_lowered_to_the_smaller_class_patient_count():
    data = layout(n_patients=30, seed=3)
    # Positives in exactly 3 patients (two visits each), every other visit negative.
    positive_patients = np.unique(data["groups"])[[2, 9, 20]]
    labels = np.zeros_like(data["labels"])
    for patient in positive_patients:
        labels[np.flatnonzero(data["groups"] == patient)[:2]] = 1
    data["labels"] = labels
    folds = folds_of(data, folds=5, repeats=2)
    assert folds.n_folds == 3
    assert 0 < len(folds.splits) <= 3 * 2
    for train, val in folds.splits:
        assert set(labels[val]) == {0, 1} == set(labels[train])
        assert not set(data["groups"][train]) & set(data["groups"][val])
    # Below the class counts, the folds asked for are kept.
    assert folds_of(data, folds=2).n_folds == 2


@pytest.mark.parametrize("rare_class", [0, 1])
def test_a_class_in_one_patient_is_refused_naming_the_setting(rare_class: int):
    data = layout(seed=4)
    patient = data["groups"][0]
    # Every visit of that patient (and only those) has the rare class; it has >= 1 visit.
    data["labels"] = np.where(data["groups"] == patient, rare_class, 1 - rare_class)
    with pytest.raises(InputError, match="cross-validation needs both classes") as error:
        folds_of(data, setting="evaluate.label_budgets")
    assert error.value.setting == "evaluate.label_budgets"
    assert "evaluate.label_budgets" in str(error.value)


def scores_with_noise(labels: np.ndarray):
    """A fit_score whose scores are the labels plus noise of sd params["noise"] (None: pure
    noise), the same noise for the same (params, fold) whatever the call order."""
    calls = []

    def fit_score(params: dict, train: np.ndarray, val: np.ndarray) -> np.ndarray:
        calls.append((dict(params), train, val))
        rng = np.random.default_rng([int(val[0]), int(val.size)])
        noise = rng.normal(0.0, 1.0, val.size)
        if params["noise"] is None:
            return noise
        return labels[val] + params["noise"] * noise

    return fit_score, calls


def test_cross_validate_picks_the_best_mean_fold_auroc():
    data = layout(seed=5)
    y = data["labels"]
    folds = folds_of(data, folds=3, repeats=2, rule="best")
    fit_score, calls = scores_with_noise(y)
    grid = [{"noise": None}, {"noise": 3.0}, {"noise": 0.3}, {"noise": 1.0}]
    chosen, table = cross_validate(fit_score, y, folds, grid)
    assert chosen == {"noise": 0.3}
    # The table: every grid point, in grid order, its mean AUROC over every fold.
    assert [row["params"] for row in table] == grid
    for row in table:
        aurocs = [
            roc_auc_score(y[val], fit_score(row["params"], train, val))
            for train, val in folds.splits
        ]
        assert row["cv_auroc"] == pytest.approx(np.mean(aurocs), abs=1e-12)
    assert table[2]["cv_auroc"] > table[3]["cv_auroc"] > table[1]["cv_auroc"]
    assert abs(table[0]["cv_auroc"] - 0.5) < 0.15  # pure noise
    # Each point was fitted on each fold's train rows and scored on its val rows.
    fits = calls[: len(grid) * len(folds.splits)]
    assert [(c[0], c[1].tolist(), c[2].tolist()) for c in fits] == [
        (p, train.tolist(), val.tolist()) for p in grid for train, val in folds.splits
    ]


def test_cross_validate_ties_go_to_the_earlier_grid_point():
    data = layout(seed=6)
    y = data["labels"]
    folds = folds_of(data, folds=3, repeats=1, rule="best")
    fit_score, _ = scores_with_noise(y)
    # "name" does not change the scores: the two points tie exactly.
    grid = [{"noise": 2.0, "name": "a"}, {"noise": 0.5, "name": "b"}, {"noise": 0.5, "name": "c"}]
    chosen, table = cross_validate(fit_score, y, folds, grid)
    assert table[1]["cv_auroc"] == table[2]["cv_auroc"] > table[0]["cv_auroc"]
    assert chosen["name"] == "b"
    chosen, _ = cross_validate(fit_score, y, folds, [grid[0], grid[2], grid[1]])
    assert chosen["name"] == "c"
    # Perfect scores everywhere: the first point.
    chosen, table = cross_validate(fit_score, y, folds, [{"noise": 0.0, "k": i} for i in range(3)])
    assert chosen == {"noise": 0.0, "k": 0} and {row["cv_auroc"] for row in table} == {1.0}


def test_one_se_keeps_the_earliest_point_within_one_standard_error_of_the_best():
    means, ses = [0.70, 0.80, 0.82, 0.81], [0.05, 0.04, 0.03, 0.01]
    assert choose(means, ses, "best") == 2
    assert choose(means, ses, "one_se") == 1  # 0.80 >= 0.82 - 0.03
    assert choose(means, [0.05, 0.04, 0.01, 0.01], "one_se") == 2  # a tight best stays
    assert choose([0.79, 0.82], [0.0, 0.03], "one_se") == 0  # exactly at the floor: kept
    assert choose([0.8, 0.8], [0.0, 0.0], "one_se") == choose([0.8, 0.8], [0.0, 0.0], "best") == 0
    with pytest.raises(ValueError, match="rule"):
        choose(means, ses, "lambda.1se")


def test_fold_standard_error_is_the_sample_std_over_root_n():
    mean, se = fold_mean_and_se([0.6, 0.8, 0.7, 0.9])
    assert mean == pytest.approx(0.75)
    assert se == pytest.approx(np.std([0.6, 0.8, 0.7, 0.9], ddof=1) / 2)
    assert fold_mean_and_se([0.7]) == (0.7, 0.0)


@pytest.mark.parametrize("rule", ["one_se", "best"])
def test_cross_validate_applies_the_folds_rule_to_its_own_table(rule: str):
    data = layout(seed=5)
    y = data["labels"]
    folds = folds_of(data, folds=3, repeats=2, rule=rule)
    assert folds.describe()["rule"] == rule
    fit_score, _ = scores_with_noise(y)
    # Most regularized first: noisier scores early, cleaner later.
    grid = [{"noise": n} for n in (3.0, 1.5, 1.0, 0.7, 0.5, 0.3)]
    chosen, table = cross_validate(fit_score, y, folds, grid)
    for row in table:
        aurocs = [roc_auc_score(y[val], fit_score(row["params"], train, val))
                  for train, val in folds.splits]  # fmt: skip
        assert row["cv_se"] == pytest.approx(np.std(aurocs, ddof=1) / np.sqrt(len(aurocs)))
    means, ses = [r["cv_auroc"] for r in table], [r["cv_se"] for r in table]
    assert chosen == grid[choose(means, ses, rule)]
    best = int(np.argmax(means))
    if rule == "one_se":  # never after the best, never below its floor
        i = grid.index(chosen)
        assert i <= best and means[i] >= means[best] - ses[best]
        assert all(m < means[best] - ses[best] for m in means[:i])
    else:
        assert chosen == grid[best]


def test_cv_folds_refuse_an_unknown_rule():
    with pytest.raises(ValueError, match="rule"):
        folds_of(layout(seed=1), rule="median")


def epoch_score(auroc: float, log_loss: float = 0.5) -> FoldScore:
    return FoldScore(auroc, 0.02, log_loss, 0.01)


@pytest.mark.parametrize(("rule", "epoch"), [("one_se", 1), ("best", 2)])
def test_epoch_selection_keeps_the_earliest_epoch_near_the_best_mean(rule: str, epoch: int):
    selection = EpochSelection(patience=2, rule=rule)
    selection.start_from(None, epoch_score(0.78))
    stops = [selection.record(e, epoch_score(auroc), 0.5, None)
             for e, auroc in ((1, 0.83), (2, 0.845), (3, 0.84), (4, 0.835))]  # fmt: skip
    assert stops == [False, False, False, True]  # patience counts from the best mean
    summary = selection.summary()
    assert summary["selected_epoch"] == epoch
    assert summary["val_auroc"] == {1: 0.83, 2: 0.845}[epoch]


def test_epoch_selection_by_log_loss_keeps_the_lowest_loss_and_counts_patience_on_it():
    selection = EpochSelection(patience=2, metric="log_loss")
    selection.start_from(None, epoch_score(0.78, 0.60))
    figures = ((1, 0.83, 0.55), (2, 0.85, 0.58), (3, 0.86, 0.57), (4, 0.87, 0.56))
    stops = [selection.record(e, epoch_score(a, loss), 0.5, None) for e, a, loss in figures]
    assert stops == [False, False, True, True]  # epochs 2 and 3 beat no loss of 0.55
    summary = selection.summary()
    assert summary["selected_epoch"] == 1 and summary["val_auroc"] == 0.83
    assert [h["val_log_loss"] for h in summary["history"]] == [0.60, 0.55, 0.58, 0.57, 0.56]


def test_balanced_log_loss_is_sklearns_with_balanced_weights():
    rng = np.random.default_rng(0)
    y = (rng.random(60) < 0.2).astype(int)
    p = rng.uniform(0.01, 0.99, 60)
    weights = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    assert balanced_log_loss(y, p) == pytest.approx(log_loss(y, p, sample_weight=weights))
    # Each class counts half whatever its share: duplicating the negatives changes nothing.
    twice = np.concatenate([np.flatnonzero(y == 0)] * 2 + [np.flatnonzero(y == 1)])
    assert balanced_log_loss(y[twice], p[twice]) == pytest.approx(balanced_log_loss(y, p))
    # A certain error costs a bounded amount (clipped), not infinity.
    assert np.isfinite(balanced_log_loss(np.array([0, 1]), np.array([1.0, 0.0])))


def overconfident_or_calibrated(labels: np.ndarray):
    """A fit_score whose "sharp" candidate ranks the visits a little better than "soft" but
    says 0 or 1 to each (its few errors certain); "soft" gives moderate probabilities."""

    def fit_score(params: dict, train: np.ndarray, val: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([int(val[0]), int(val.size)])
        noise = rng.normal(0.0, 1.0, val.size)
        if params["kind"] == "sharp":
            return (labels[val] - 0.5 + 0.45 * noise > 0).astype(float)
        return expit(labels[val] - 0.5 + 0.8 * noise)

    return fit_score


def test_log_loss_selection_turns_down_the_overconfident_candidate_auroc_prefers():
    data = layout(n_patients=80, seed=7)
    y = data["labels"]
    fit_score = overconfident_or_calibrated(y)
    grid = [{"kind": "soft"}, {"kind": "sharp"}]
    by_auroc, table = cross_validate(fit_score, y, folds_of(data, folds=4, repeats=2), grid)
    soft, sharp = table
    assert sharp["cv_auroc"] > soft["cv_auroc"] and sharp["cv_log_loss"] > soft["cv_log_loss"]
    assert by_auroc == {"kind": "sharp"}
    folds = folds_of(data, folds=4, repeats=2, metric="log_loss")
    assert folds.describe()["metric"] == "log_loss"
    by_loss, table_by_loss = cross_validate(fit_score, y, folds, grid)
    assert by_loss == {"kind": "soft"} and table_by_loss == table  # the same figures
    for row in table:
        losses = [balanced_log_loss(y[val], fit_score(row["params"], train, val))
                  for train, val in folds.splits]  # fmt: skip
        assert row["cv_log_loss"] == pytest.approx(np.mean(losses), abs=1e-12)
        assert row["cv_log_loss_se"] == pytest.approx(fold_mean_and_se(losses)[1], abs=1e-12)


def test_an_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="metric"):
        folds_of(layout(seed=1), metric="brier")
    with pytest.raises(ValueError, match="metric"):
        epoch_score(0.8).key("brier")


def test_c_grid_runs_from_strong_to_weak_regularization():
    assert C_GRID[0] == pytest.approx(1e-4) and C_GRID[-1] == pytest.approx(1e2)
    assert list(C_GRID) == sorted(C_GRID)  # most regularized first: ties go to it
    np.testing.assert_allclose(np.diff(np.log10(C_GRID)), 0.5)


@pytest.mark.parametrize(
    ("selection", "budget", "n_labels", "expected"),
    [
        ("cv", None, 5000, "cv"),
        ("cv", 5000, 5000, "cv"),
        ("holdout", 100, 100, "holdout"),
        ("holdout", None, 10, "holdout"),
        ("auto", 100, 100, "cv"),
        ("auto", 1000, 1000, "cv"),  # at the threshold: cv
        ("auto", 1001, 1001, "holdout"),
        ("auto", 0.25, 400, "cv"),  # a fraction: by its count of labels
        ("auto", 0.75, 1200, "holdout"),
        ("auto", None, 10, "holdout"),  # "all" is holdout, however few the labels
    ],
)
def test_resolve_selection(selection: str, budget, n_labels: int, expected: str):
    assert resolve_selection(selection, budget, n_labels, 1000) == expected


def numerical_log_evidence(x: np.ndarray, y: np.ndarray, c: float) -> float:
    """log p(y | x, C) of the balanced logistic model with one feature, integrated over the
    weight (prior N(0, C)) and the intercept (N(0, INTERCEPT_PRIOR_VARIANCE)) on a grid."""
    from ehr_ssl.training.selection import INTERCEPT_PRIOR_VARIANCE as var_b

    n = len(y)
    weight = np.where(y == 1, n / (2 * y.sum()), n / (2 * (n - y.sum())))
    sign = np.where(y == 1, 1.0, -1.0)
    w = np.linspace(-8, 8, 801) * np.sqrt(c) if c < 1 else np.linspace(-30, 30, 1201)
    b = np.linspace(-12, 12, 481)
    ww, bb = np.meshgrid(w, b, indexing="ij")
    log_joint = -(ww**2) / (2 * c) - np.log(2 * np.pi * c) / 2
    log_joint += -(bb**2) / (2 * var_b) - np.log(2 * np.pi * var_b) / 2
    for i in range(n):
        log_joint += weight[i] * log_expit(sign[i] * (ww * x[i] + bb))
    top = log_joint.max()
    return float(top + np.log(np.exp(log_joint - top).sum() * (w[1] - w[0]) * (b[1] - b[0])))


def test_log_evidence_bound_is_a_tight_lower_bound_on_the_integrated_evidence():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = (x + 0.7 * rng.normal(size=30) > 0.3).astype(np.int64)
    grid = [0.01, 0.1, 1.0, 10.0, 100.0]
    exact = [numerical_log_evidence(x, y, c) for c in grid]
    bound = [log_evidence_bound(x[:, None], y, c)[0] for c in grid]
    for e, lower in zip(exact, bound, strict=True):
        assert lower <= e + 1e-6 and e - lower < 0.7  # a bound, and a tight one
    assert int(np.argmax(bound)) == int(np.argmax(exact)) == 3  # the same C wins


def test_evidence_supports_a_weak_penalty_only_where_the_labels_follow_the_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 20))
    noise = (rng.random(100) < 0.4).astype(np.int64)
    signal = (x[:, :3].sum(1) + rng.normal(size=100) > 0).astype(np.int64)
    on_noise, on_signal = (
        np.array([log_evidence_bound(x, labels, c)[0] for c in C_GRID])
        for labels in (noise, signal)
    )
    assert on_noise.max() - on_noise[0] < 1.0  # nothing beyond the strongest penalty
    assert on_signal.max() - on_signal[0] > 5.0 and C_GRID[int(np.argmax(on_signal))] >= 0.1


def test_the_bound_is_the_same_over_the_weights_and_over_the_logits_and_warm_starts():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 8))
    y = (x[:, 0] + rng.normal(size=60) > 0).astype(np.int64)
    wide = np.hstack([x, np.zeros((60, 60))])  # the same model, wider than its rows
    for c in (1e-3, 0.1, 10.0):
        narrow_value, narrow_xi = log_evidence_bound(x, y, c)  # over the 9 weights
        wide_value, wide_xi = log_evidence_bound(sp.csr_matrix(wide), y, c)  # over 60 logits
        assert narrow_value == pytest.approx(wide_value, abs=1e-9)  # the same iterations
        np.testing.assert_allclose(narrow_xi, wide_xi, atol=1e-6)
        warm, _ = log_evidence_bound(x, y, c, start=log_evidence_bound(x, y, c * 3)[1])
        assert warm == pytest.approx(narrow_value, abs=1e-3)  # both within the tolerance


def test_the_extrapolated_em_reaches_a_slow_fixed_point_and_never_lowers_the_bound():
    fixed = np.array([2.0, 0.5, 1.0])
    rates = np.array([0.995, 0.9, 0.3])  # plain steps would need about 2,000 here
    values = []

    def em_step(xi: np.ndarray):  # a contraction that raises its value at every step
        values.append(-float(np.sum((xi - fixed) ** 2)))
        return values[-1], fixed + rates * (xi - fixed)

    value, xi = _accelerated_em(em_step, np.array([5.0, 5.0, 5.0]))
    np.testing.assert_allclose(xi, fixed, atol=1e-2)
    assert value == pytest.approx(0.0, abs=1e-3) and len(values) < 100
    # what it keeps never falls: each cycle's kept value is the larger of its two tries
    kept = [values[0], *(max(values[i], values[i + 1]) for i in range(1, len(values) - 1, 2))]
    assert all(b >= a - 1e-12 for a, b in zip(kept, kept[1:], strict=False))


def test_evidence_by_scaling_scales_once_and_reads_each_scalings_rows_at_every_c():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5))
    y = (x[:, 0] + rng.normal(size=40) > 0).astype(np.int64)
    calls = []

    def scale(scaling: dict):
        calls.append(scaling)
        rows = np.hstack([x * scaling["w"], np.zeros((40, 50))])  # wide: the gram is cached
        return sp.csr_matrix(rows)

    evidence = evidence_by_scaling(scale, y)
    for w in (1.0, 2.0):
        for c in (1e-2, 1.0, 1e-1):
            # each C warm-starts from the last: equal to a cold bound within the tolerance
            cold = log_evidence_bound(x * w, y, c)[0]
            assert evidence({"w": w, "C": c}) == pytest.approx(cold, abs=1e-3)
    assert calls == [{"w": 1.0}, {"w": 2.0}]
    assert evidence({"w": 1.0, "C": 2.0}) != evidence({"w": 2.0, "C": 2.0})


def test_evidence_selection_keeps_the_highest_evidence_and_every_fold_figure():
    data = layout(seed=5)
    y = data["labels"]
    fit_score, _ = scores_with_noise(y)
    grid = [{"noise": n} for n in (3.0, 1.0, 0.3)]
    by_folds, table = cross_validate(fit_score, y, folds_of(data), grid)
    evidence = {3.0: -5.0, 1.0: -2.0, 0.3: -4.0}  # the middle point, where the folds say 0.3
    folds = folds_of(data, penalty="evidence")
    assert folds.describe()["penalty"] == "evidence"
    chosen, table_by_evidence = cross_validate(
        fit_score, y, folds, grid, lambda params: evidence[params["noise"]]
    )
    assert by_folds == {"noise": 0.3} and chosen == {"noise": 1.0}
    assert [row["log_evidence"] for row in table_by_evidence] == [-5.0, -2.0, -4.0]
    for row, reference in zip(table_by_evidence, table, strict=True):
        assert {k: v for k, v in row.items() if k != "log_evidence"} == reference
    # a model with no evidence (the epochs, the GBM's trees): the folds choose
    assert cross_validate(fit_score, y, folds, grid)[0] == by_folds
    # under cv the evidence is never computed
    assert cross_validate(fit_score, y, folds_of(data), grid, lambda p: 1 / 0)[0] == by_folds


def test_cv_folds_refuse_an_unknown_penalty_selection():
    with pytest.raises(ValueError, match="penalty"):
        folds_of(layout(seed=1), penalty="aic")
