"""The evaluation metrics against scikit-learn, their weighted forms against repeated rows, and the
patient-level bootstrap against a slow reference that concatenates each drawn patient's rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from ehr_ssl.evaluation import metrics as evaluation
from ehr_ssl.evaluation.metrics import (
    auprc,
    auroc,
    bootstrap_ci,
    brier,
    calibration,
    evaluate_predictions,
    multi_bootstrap_difference,
    paired_bootstrap_difference,
)


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def random_case(seed: int, n: int = 300, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores with many ties (scores rounded), positives scoring a little higher."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    p = np.clip(rng.random(n) * 0.8 + 0.2 * y, 0.0, 1.0).round(decimals)
    return y, p


def grouped_case(
    seed: int, n_patients: int = 30, max_rows: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small cohort: 1..max_rows visits per patient, a patient-level risk, tied scores."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, max_rows + 1, size=n_patients)
    groups = np.repeat(rng.permutation(1000)[:n_patients], rows)  # ids unsorted, not 0..G-1
    risk = np.repeat(rng.random(n_patients), rows)
    y = rng.random(len(groups)) < 0.2 + 0.5 * risk
    p = np.clip(risk + rng.normal(0, 0.2, len(groups)), 0, 1).round(1)
    return y, p, groups


# ----------------------------------------------------------------------------------------------
# point metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [1, 2, 8])
def test_metrics_equal_sklearn(seed: int, decimals: int) -> None:
    y, p = random_case(seed, decimals=decimals)
    assert auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert auprc(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)


def test_metrics_on_hand_made_values() -> None:
    # Pairs (pos, neg): (0.8, 0.2) 1, (0.8, 0.8) 1/2, (0.4, 0.2) 1, (0.4, 0.8) 0 -> 2.5 / 4.
    y = np.array([1, 0, 1, 0])
    p = np.array([0.8, 0.2, 0.4, 0.8])
    assert auroc(y, p) == 0.625
    # Threshold 0.8: recall 1/2, precision 1/2; threshold 0.4: recall 1, precision 2/3.
    assert auprc(y, p) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert brier(y, p) == pytest.approx((0.04 + 0.04 + 0.36 + 0.64) / 4)
    assert auroc(y.astype(bool), p) == auroc(y.astype(float), p) == auroc(list(y), list(p))


@pytest.mark.parametrize("metric", [auroc, auprc, brier])
@pytest.mark.parametrize("seed", [0, 1])
def test_integer_weights_equal_repeated_rows(metric, seed: int) -> None:
    # The property the bootstrap relies on: weight k == the row repeated k times (0 == dropped).
    y, p = random_case(seed, n=200)
    weights = np.random.default_rng(seed + 10).integers(0, 4, size=len(y))
    repeated = metric(np.repeat(y, weights), np.repeat(p, weights))
    assert metric(y, p, weights) == pytest.approx(repeated, abs=1e-12)
    assert metric(y, p, np.ones(len(y))) == pytest.approx(metric(y, p), abs=1e-15)


@pytest.mark.parametrize("metric", [auroc, auprc, brier])
def test_weight_matrix_evaluates_each_row(metric) -> None:
    y, p = random_case(3, n=60)
    rng = np.random.default_rng(3)
    weights = rng.integers(0, 3, size=(5, len(y))).astype(float)
    weights[2] = np.where(y, 0, 1)  # replicate with negatives only
    values = metric(y, p, weights)
    assert values.shape == (5,)
    for row in (0, 1, 3, 4):
        assert values[row] == pytest.approx(metric(y, p, weights[row]), abs=1e-15)
    if metric is brier:
        assert values[2] == pytest.approx(metric(y, p, weights[2]))
    else:  # undefined without positives: NaN in a matrix, an error for a single evaluation
        assert np.isnan(values[2])
        with pytest.raises(ValueError, match="undefined"):
            metric(y, p, weights[2])


# ----------------------------------------------------------------------------------------------
# calibration


@pytest.mark.parametrize(("a", "b"), [(0.0, 1.0), (0.5, 1.0), (-0.4, 2.0), (0.3, 0.5)])
def test_calibration_recovers_known_distortion(a: float, b: float) -> None:
    # y ~ Bernoulli(p_true) and logit(p) = a + b * logit(p_true), so
    # logit(p_true) = (logit(p) - a) / b = -a/b + (1/b) * logit(p): the recalibration of p that
    # gives the true probabilities has slope 1/b and intercept -a/b.
    rng = np.random.default_rng(7)
    n = 100_000
    p_true = sigmoid(rng.normal(-1.0, 1.2, size=n))
    y = rng.random(n) < p_true
    p = sigmoid(a + b * logit(p_true))
    slope, intercept = calibration(y, p)
    assert slope == pytest.approx(1 / b, abs=0.03 / b)
    assert intercept == pytest.approx(-a / b, abs=0.03)


def test_perfectly_calibrated_scores_give_identity() -> None:
    rng = np.random.default_rng(8)
    p = rng.beta(1.0, 3.0, size=200_000)
    y = rng.random(len(p)) < p
    slope, intercept = calibration(y, p)
    assert slope == pytest.approx(1.0, abs=0.02)
    assert intercept == pytest.approx(0.0, abs=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_equals_sklearn_logistic_regression(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = sigmoid(rng.normal(0.5 * seed - 1, 1.0 + seed, size=3000))
    y = rng.random(len(p)) < sigmoid(0.3 - 0.2 * seed + 0.7 * logit(p))
    weights = rng.integers(1, 4, size=len(p)) if seed == 2 else None
    model = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000)
    model.fit(logit(p)[:, None], y, sample_weight=weights)
    slope, intercept = calibration(y, p, weights)
    assert slope == pytest.approx(model.coef_[0, 0], abs=1e-5)
    assert intercept == pytest.approx(model.intercept_[0], abs=1e-5)


def test_calibration_weights_and_weight_matrix() -> None:
    rng = np.random.default_rng(4)
    p = rng.random(400)
    y = rng.random(len(p)) < p**1.5
    weights = rng.integers(0, 4, size=len(p))
    slope, intercept = calibration(y, p, weights)
    expected = calibration(np.repeat(y, weights), np.repeat(p, weights))
    assert (slope, intercept) == pytest.approx(expected, abs=1e-9)
    matrix = np.stack([weights, np.ones(len(p)), np.where(y, 1, 0)])  # last: positives only
    slopes, intercepts = calibration(y, p, matrix)
    assert slopes[:2] == pytest.approx([slope, calibration(y, p)[0]], abs=1e-9)
    assert intercepts[:2] == pytest.approx([intercept, calibration(y, p)[1]], abs=1e-9)
    assert np.isnan(slopes[2]) and np.isnan(intercepts[2])


def test_calibration_clips_extreme_scores() -> None:
    y = np.array([0, 1, 0, 1, 1, 0])
    p = np.array([0.0, 1.0, 0.3, 0.6, 0.2, 0.7])
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    assert calibration(y, p) == pytest.approx(calibration(y, clipped), abs=1e-12)


@pytest.mark.parametrize(
    ("y", "p"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]),  # perfectly separated: slope -> infinity
        ([0, 1, 0, 1], [0.4, 0.4, 0.4, 0.4]),  # constant p: slope not identifiable
        ([1, 1, 1, 1], [0.1, 0.2, 0.8, 0.9]),  # a single class
    ],
)
def test_calibration_without_finite_fit_raises(y, p) -> None:
    with pytest.raises(ValueError, match="no finite maximum"):
        calibration(y, p)


# ----------------------------------------------------------------------------------------------
# bootstrap against a slow reference


def reference_replicates(metric, y, p_list, groups, n_boot, seed) -> list[list[float]]:
    """Per replicate: draw patients with rng.integers (patients in sorted id order), concatenate
    each drawn patient's rows, score with scikit-learn; skip replicates with a single class."""
    rng = np.random.default_rng(seed)
    patients = np.unique(groups)
    rows_of = {g: np.flatnonzero(groups == g) for g in patients}
    replicates = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(patients), size=len(patients))
        idx = np.concatenate([rows_of[patients[k]] for k in drawn])
        if len(np.unique(y[idx])) < 2:
            continue
        replicates.append([metric(y[idx], p[idx]) for p in p_list])
    return replicates


def reference_ci(metric, y, p, groups, n_boot, seed, alpha=0.05) -> list[float]:
    values = [v[0] for v in reference_replicates(metric, y, [p], groups, n_boot, seed)]
    return list(np.quantile(values, [alpha / 2, 1 - alpha / 2]))


@pytest.mark.parametrize(("seed", "n_patients"), [(0, 6), (1, 12), (2, 20)])
def test_bootstrap_ci_equals_slow_reference(seed: int, n_patients: int) -> None:
    y, p, groups = grouped_case(seed, n_patients=n_patients)
    kept = [v[0] for v in reference_replicates(roc_auc_score, y, [p], groups, 150, seed)]
    expected = list(np.quantile(kept, [0.025, 0.975]))
    got = bootstrap_ci(auroc, y, p, groups, n_boot=150, seed=seed)
    assert got == pytest.approx(expected, abs=1e-12)
    if n_patients == 6:
        assert len(kept) < 150  # dropping single-class replicates is exercised (and matches)


@pytest.mark.parametrize(
    ("metric", "reference"),
    [(auprc, average_precision_score), (brier, brier_score_loss)],
)
def test_bootstrap_ci_other_metrics_equal_slow_reference(metric, reference) -> None:
    y, p, groups = grouped_case(5, n_patients=25)
    expected = reference_ci(reference, y, p, groups, n_boot=200, seed=3, alpha=0.2)
    got = bootstrap_ci(metric, y, p, groups, n_boot=200, seed=3, alpha=0.2)
    assert got == pytest.approx(expected, abs=1e-12)


def test_bootstrap_with_string_ids_equals_reference() -> None:
    y, p, groups = grouped_case(4, n_patients=20)
    names = np.array([f"patient-{g}" for g in groups])  # sorted order differs from the ints
    expected = reference_ci(roc_auc_score, y, p, names, n_boot=150, seed=1)
    assert bootstrap_ci(auroc, y, p, names, n_boot=150, seed=1) == pytest.approx(
        expected, abs=1e-12
    )


def test_bootstrap_independent_of_chunking(monkeypatch) -> None:
    y, p, groups = grouped_case(6, n_patients=40)
    whole = bootstrap_ci(auroc, y, p, groups, n_boot=101, seed=2)
    paired = paired_bootstrap_difference(auroc, y, p, p**2, groups, n_boot=101, seed=2)
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 3 * len(y))  # chunks of 3 replicates
    assert bootstrap_ci(auroc, y, p, groups, n_boot=101, seed=2) == whole
    assert paired_bootstrap_difference(auroc, y, p, p**2, groups, n_boot=101, seed=2) == paired


def test_bootstrap_is_deterministic_per_seed() -> None:
    y, p, groups = grouped_case(7, n_patients=50)
    first = bootstrap_ci(auroc, y, p, groups, n_boot=200, seed=11)
    assert bootstrap_ci(auroc, y, p, groups, n_boot=200, seed=11) == first
    assert bootstrap_ci(auroc, y, p, groups, n_boot=200, seed=12) != first


def test_bootstrap_resamples_patients_not_rows() -> None:
    # 40 patients with 50 identical visits each: the information is that of 40 rows, and the
    # patient-level interval must be as wide as that, far wider than resampling 2000 rows.
    rng = np.random.default_rng(0)
    n_patients, visits = 40, 50
    y_patient = rng.random(n_patients) < 0.5
    p_patient = np.clip(0.5 + 0.25 * (y_patient - 0.5) + rng.normal(0, 0.2, n_patients), 0, 1)
    y, p = np.repeat(y_patient, visits), np.repeat(p_patient, visits)
    groups = np.repeat(np.arange(n_patients), visits)
    point = auroc(y, p)
    low, high = bootstrap_ci(auroc, y, p, groups, n_boot=400, seed=0)
    row_low, row_high = bootstrap_ci(auroc, y, p, np.arange(len(y)), n_boot=400, seed=0)
    assert low <= point <= high
    assert row_low <= point <= row_high
    assert high - low > 4 * (row_high - row_low)
    # ... and exactly the interval of the 40 distinct patients with one row each.
    one_row = bootstrap_ci(auroc, y_patient, p_patient, np.arange(n_patients), n_boot=400, seed=0)
    assert (low, high) == pytest.approx(one_row, abs=1e-12)


def test_bootstrap_ci_of_calibration_slope() -> None:
    y, p, groups = grouped_case(8, n_patients=60)
    low, high = bootstrap_ci(
        lambda y, p, w: calibration(y, p, w)[0], y, p, groups, n_boot=50, seed=0
    )
    assert low < calibration(y, p)[0] < high


def test_bootstrap_rejects_metric_without_weight_matrix() -> None:
    y, p, groups = grouped_case(0)
    with pytest.raises(ValueError, match=r"weights of shape \(R, n\)"):
        bootstrap_ci(lambda y, p, w: 0.5, y, p, groups, n_boot=10)


# ----------------------------------------------------------------------------------------------
# paired difference


def test_paired_difference_equals_slow_reference() -> None:
    y, p_a, groups = grouped_case(9, n_patients=25)
    p_b = np.clip(p_a + np.random.default_rng(9).normal(0, 0.3, len(y)), 0, 1).round(1)
    result = paired_bootstrap_difference(auroc, y, p_a, p_b, groups, n_boot=150, seed=4)
    pairs = np.array(reference_replicates(roc_auc_score, y, [p_a, p_b], groups, 150, 4))
    diffs = pairs[:, 0] - pairs[:, 1]
    assert result["difference"] == pytest.approx(
        roc_auc_score(y, p_a) - roc_auc_score(y, p_b), abs=1e-12
    )
    assert result["ci95"] == pytest.approx(list(np.quantile(diffs, [0.025, 0.975])), abs=1e-12)
    # Differences that are 0 up to rounding make the shares sensitive to 1e-16: compare loosely.
    expected_p = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    assert result["p_value"] == pytest.approx(expected_p, abs=2 / len(diffs))


def test_paired_difference_of_model_with_itself_is_zero() -> None:
    y, p, groups = grouped_case(10, n_patients=40)
    result = paired_bootstrap_difference(auroc, y, p, p, groups, n_boot=200, seed=0)
    assert result == {"difference": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0}


def test_paired_difference_detects_better_model_and_is_antisymmetric() -> None:
    rng = np.random.default_rng(1)
    n_patients, visits = 300, 3
    groups = np.repeat(np.arange(n_patients), visits)
    p_true = sigmoid(np.repeat(rng.normal(-1, 1.5, n_patients), visits) + rng.normal(0, 0.3, 900))
    y = rng.random(len(p_true)) < p_true
    p_good = p_true
    p_poor = sigmoid(logit(p_true) + rng.normal(0, 2.0, len(p_true)))
    ab = paired_bootstrap_difference(auroc, y, p_good, p_poor, groups, n_boot=500, seed=3)
    ba = paired_bootstrap_difference(auroc, y, p_poor, p_good, groups, n_boot=500, seed=3)
    assert ab["difference"] > 0
    assert 0 < ab["ci95"][0] <= ab["difference"] <= ab["ci95"][1]
    assert ab["p_value"] < 0.01
    assert ba["difference"] == -ab["difference"]
    assert ba["ci95"] == pytest.approx([-ab["ci95"][1], -ab["ci95"][0]], abs=1e-12)
    assert ba["p_value"] == ab["p_value"]


# ----------------------------------------------------------------------------------------------
# the multi-bootstrap over pretraining runs


def _runs_case(spread: float, n_runs: int = 3):
    """Labels, patients, P runs x 2 seeds of scores whose runs differ by `spread` in quality,
    and a baseline's 2 seeds."""
    rng = np.random.default_rng(7)
    n_patients, visits = 200, 2
    groups = np.repeat(np.arange(n_patients), visits)
    p_true = sigmoid(np.repeat(rng.normal(-1, 1.5, n_patients), visits) + rng.normal(0, 0.3, 400))
    y = rng.random(len(p_true)) < p_true

    def noisy(sd: float) -> np.ndarray:
        return sigmoid(logit(p_true) + rng.normal(0, sd, len(p_true)))

    runs = np.stack([[noisy(1.0 + spread * r), noisy(1.0 + spread * r)] for r in range(n_runs)])
    return y, groups, runs, np.stack([noisy(1.5), noisy(1.5)])


def test_multi_bootstrap_of_one_run_or_copies_of_it_is_the_paired_bootstrap() -> None:
    y, groups, runs, base = _runs_case(0.0)
    paired = paired_bootstrap_difference(auroc, y, runs[0], base, groups, n_boot=200, seed=2)
    for copies in (runs[:1], np.stack([runs[0]] * 3)):
        multi = multi_bootstrap_difference(auroc, y, copies, base, groups, n_boot=200, seed=2)
        assert multi["difference"] == pytest.approx(paired["difference"], abs=1e-12)
        assert multi["ci95"] == pytest.approx(paired["ci95"], abs=1e-12)
        assert multi["p_value"] == pytest.approx(paired["p_value"], abs=1e-12)


def test_multi_bootstrap_holds_the_spread_between_runs() -> None:
    y, groups, runs, base = _runs_case(1.0)
    multi = multi_bootstrap_difference(auroc, y, runs, base, groups, n_boot=400, seed=0)
    pooled = paired_bootstrap_difference(
        auroc, y, runs.reshape(-1, runs.shape[-1]), base, groups, n_boot=400, seed=0
    )
    assert multi["difference"] == pytest.approx(pooled["difference"], abs=1e-12)
    assert np.diff(multi["ci95"])[0] > 1.2 * np.diff(pooled["ci95"])[0]
    per_run = [np.mean([auroc(y, p) for p in run]) - np.mean([auroc(y, p) for p in base])
               for run in runs]  # fmt: skip
    assert multi["per_run"] == pytest.approx(per_run, abs=1e-12)
    assert multi["per_run"][0] > multi["per_run"][-1]  # the first run is the least noisy


def test_multi_bootstrap_resamples_each_sides_runs() -> None:
    y, groups, runs, base = _runs_case(1.0)
    one = multi_bootstrap_difference(auroc, y, runs, base, groups, n_boot=300, seed=1)
    copies = multi_bootstrap_difference(auroc, y, runs, np.stack([base] * 3), groups,
                                        n_boot=300, seed=1)  # fmt: skip
    assert copies["difference"] == pytest.approx(one["difference"], abs=1e-12)
    assert copies["ci95"] == pytest.approx(one["ci95"], abs=1e-12)
    ab = multi_bootstrap_difference(auroc, y, runs, runs[::-1], groups, n_boot=300, seed=1)
    assert ab["difference"] == pytest.approx(0.0, abs=1e-12)  # the same runs, in any order
    low, high = ab["ci95"]
    assert low < -0.005 and high > 0.005  # yet each side draws its runs apart


def test_multi_bootstrap_does_not_depend_on_the_replicate_chunks(monkeypatch) -> None:
    y, groups, runs, base = _runs_case(1.0)
    whole = multi_bootstrap_difference(auroc, y, runs, base, groups, n_boot=50, seed=3)
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 7 * len(y))  # 7 replicates a chunk
    chunked = multi_bootstrap_difference(auroc, y, runs, base, groups, n_boot=50, seed=3)
    assert chunked == whole


def test_multi_bootstrap_rejects_runs_of_other_shapes() -> None:
    y, groups, runs, base = _runs_case(0.0)
    with pytest.raises(ValueError, match=r"runs_a must have shape \(P, S, n\)"):
        multi_bootstrap_difference(auroc, y, runs[None], base, groups, n_boot=10)
    with pytest.raises(ValueError, match=r"runs_b must have shape \(P, S, n\)"):
        multi_bootstrap_difference(auroc, y, runs, base[None][:0], groups, n_boot=10)


# ----------------------------------------------------------------------------------------------
# evaluate_predictions and input checks


def test_evaluate_predictions_keys_types_and_values() -> None:
    y, p, groups = grouped_case(11, n_patients=80)
    report = evaluate_predictions(y, p, groups, n_boot=100, seed=5)
    assert list(report) == [
        "auroc",
        "auroc_ci95",
        "auprc",
        "brier",
        "calibration_slope",
        "calibration_intercept",
        "n",
        "prevalence",
        "n_patients",
    ]
    for key in ("auroc", "auprc", "brier", "calibration_slope", "calibration_intercept"):
        assert type(report[key]) is float, key
    assert type(report["n"]) is int and type(report["n_patients"]) is int
    assert type(report["prevalence"]) is float
    assert isinstance(report["auroc_ci95"], list) and len(report["auroc_ci95"]) == 2
    assert all(type(v) is float for v in report["auroc_ci95"])
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert report["auroc"] == roc_auc_score(y, p)
    assert report["auroc_ci95"] == list(bootstrap_ci(auroc, y, p, groups, n_boot=100, seed=5))
    assert report["auroc_ci95"][0] <= report["auroc"] <= report["auroc_ci95"][1]
    assert (report["calibration_slope"], report["calibration_intercept"]) == calibration(y, p)
    assert report["n"] == len(y) and report["n_patients"] == len(np.unique(groups))
    assert report["prevalence"] == pytest.approx(np.mean(y))


def test_evaluate_predictions_separated_classes_has_no_calibration() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    report = evaluate_predictions(y, p, np.arange(6), n_boot=20)
    assert report["auroc"] == 1.0
    assert report["calibration_slope"] is None and report["calibration_intercept"] is None
    json.dumps(report, allow_nan=False)


GOOD_Y, GOOD_P = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.4, 0.6])


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1, 0], [0.1, 0.9], "different lengths"),
        ([], [], "empty"),
        ([0, 1], [0.1, 1.5], r"in \[0, 1\]"),
        ([0, 1], [-0.1, 0.5], r"in \[0, 1\]"),
        ([0, 1], [0.1, np.nan], "finite"),
        ([0, 1], [0.1, np.inf], "finite"),
        ([0, 2], [0.1, 0.9], "0/1"),
        ([0, np.nan], [0.1, 0.9], "0/1"),
        (["a", "b"], [0.1, 0.9], "0/1"),
        ([[0, 1]], [[0.1, 0.9]], "1-D"),
        ([1, 1, 1], [0.1, 0.5, 0.9], "both classes"),
        ([0, 0], [0.1, 0.9], "both classes"),
    ],
)
def test_auroc_rejects_bad_input(y, p, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        auroc(np.asarray(y), np.asarray(p))


def test_other_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="no positive"):
        auprc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0"):
        brier(GOOD_Y, GOOD_P, [1, -1, 1, 1])
    with pytest.raises(ValueError, match="weights must have shape"):
        auroc(GOOD_Y, GOOD_P, [1, 1, 1])
    with pytest.raises(ValueError, match="all weights are zero"):
        brier(GOOD_Y, GOOD_P, np.zeros(4))
    with pytest.raises(ValueError, match="groups and y have different lengths"):
        bootstrap_ci(auroc, GOOD_Y, GOOD_P, [1, 2, 3])
    with pytest.raises(ValueError, match="non-finite patient id"):
        bootstrap_ci(auroc, GOOD_Y, GOOD_P, [1.0, 2.0, np.nan, 3.0])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(auroc, GOOD_Y, GOOD_P, [1, 2, 3, 4], n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(auroc, GOOD_Y, GOOD_P, [1, 2, 3, 4], alpha=1.5)
    with pytest.raises(ValueError, match="p_b and y|y and p_b"):
        paired_bootstrap_difference(auroc, GOOD_Y, GOOD_P, GOOD_P[:3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="both classes"):
        evaluate_predictions([1, 1, 1], [0.2, 0.4, 0.6], [1, 2, 3])
    # Two single-class patients and one replicate that draws the same patient twice.
    seed = next(s for s in range(100) if len(set(np.random.default_rng(s).integers(0, 2, 2))) == 1)
    with pytest.raises(ValueError, match="undefined in all 1"):
        bootstrap_ci(auroc, [1, 0], [0.9, 0.1], ["b", "a"], n_boot=1, seed=seed)
