"""Metrics for binary risk predictions (AUROC, AUPRC, Brier, calibration slope and intercept) and
their confidence intervals from a bootstrap that resamples patients, not rows. Pure numpy.

Conventions: `y` is 0/1 (bool or numeric), `p` a score in [0, 1], `groups` the patient id of each
row. Every metric takes optional `weights`: (n,) row multiplicities, or (R, n) with one row of
weights per bootstrap replicate, which evaluates R replicates in one vectorized pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# A metric is metric(y, p, weights) with weights None, (n,) or (R, n); returns a float, or (R,).
Metric = Callable[..., Any]

CLIP = 1e-6  # calibration: p is clipped to [CLIP, 1 - CLIP] before the logit
# Bootstrap replicates are evaluated in chunks of at most this many (replicate, row) cells, which
# bounds memory at a few (R, n) float64 arrays of ~16 MiB each whatever the size of the test set.
_CHUNK_ELEMENTS = 2**21


# ----------------------------------------------------------------------------------------------
# input checks


def _check_labels_scores(y: Any, p: Any, name: str = "p") -> tuple[np.ndarray, np.ndarray]:
    """Validated copies: y as float64 0/1 and p as float64 in [0, 1], both (n,), n >= 1."""
    y_arr, p_arr = np.asarray(y), np.asarray(p)
    if y_arr.ndim != 1 or p_arr.ndim != 1:
        raise ValueError(f"y and {name} must be 1-D, got shapes {y_arr.shape} and {p_arr.shape}")
    if len(y_arr) != len(p_arr):
        raise ValueError(f"y and {name} have different lengths: {len(y_arr)} and {len(p_arr)}")
    if len(y_arr) == 0:
        raise ValueError("empty input: y and p have no rows")
    if y_arr.dtype == bool:
        y_float = y_arr.astype(np.float64)
    elif np.issubdtype(y_arr.dtype, np.number):
        y_float = y_arr.astype(np.float64)
        bad = ~((y_float == 0) | (y_float == 1))
        if bad.any():
            raise ValueError(f"y must be 0/1 or bool, found {y_arr[np.argmax(bad)]!r}")
    else:
        raise ValueError(f"y must be 0/1 or bool, got dtype {y_arr.dtype}")
    if not np.issubdtype(p_arr.dtype, np.number) or np.issubdtype(p_arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {p_arr.dtype}")
    p_float = p_arr.astype(np.float64)
    bad = ~np.isfinite(p_float) | (p_float < 0) | (p_float > 1)
    if bad.any():
        raise ValueError(
            f"{name} must be finite and in [0, 1], found {p_float[np.argmax(bad)]!r} "
            f"({int(bad.sum())} such rows)"
        )
    return y_float, p_float


def _check_weights(weights: Any, n: int) -> np.ndarray:
    """Weights as float64 (R, n), finite and >= 0; None means one replicate of unit weights."""
    if weights is None:
        return np.ones((1, n))
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[-1] != n:
        raise ValueError(f"weights must have shape ({n},) or (R, {n}), got {w.shape}")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        raise ValueError(f"weights must be finite and >= 0, found {w[bad][0]!r}")
    return w.reshape(-1, n)


def _finish(values: np.ndarray, weights: Any, metric: str, why: str) -> float | np.ndarray:
    """A float for a single evaluation (raising when undefined), the (R,) array (NaN = undefined)
    for a 2-D weights matrix."""
    if weights is not None and np.ndim(weights) == 2:
        return values
    if not np.isfinite(values[0]):
        raise ValueError(f"{metric} is undefined: {why}")
    return float(values[0])


def _patient_index(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Each row's patient number in 0..G-1 (patients in sorted order of their ids), and G."""
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {g.shape}")
    if len(g) != n:
        raise ValueError(f"groups and y have different lengths: {len(g)} and {n}")
    if g.dtype.kind in "fc" and not np.isfinite(g).all():
        raise ValueError("groups contains a non-finite patient id")
    try:
        _, patient_of_row = np.unique(g, return_inverse=True)
    except TypeError as error:  # e.g. an object array mixing str and int ids
        raise ValueError(f"groups must hold mutually comparable patient ids: {error}") from error
    patient_of_row = patient_of_row.reshape(-1)
    return patient_of_row, int(patient_of_row.max()) + 1


# ----------------------------------------------------------------------------------------------
# metrics


def _cumulative_class_weights(
    y: np.ndarray, p: np.ndarray, w: np.ndarray, *, descending: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight of the rows scored up to each distinct score, inclusive.

    Rows are sorted by score (descending or ascending); block k holds the k-th distinct score and
    the returned arrays are cumulative sums at the last row of each block. Cumulative sums, not
    per-block reductions, because `np.add.reduceat` along rows is several times slower; with the
    integer weights of the bootstrap every sum is exact in float64.

    Shape: y, p (n,); w (R, n) -> two (R, K) arrays, K distinct scores.
    """
    order = np.argsort(-p if descending else p, kind="stable")
    p_sorted = p[order]
    block_ends = np.flatnonzero(np.r_[p_sorted[1:] != p_sorted[:-1], True])  # (K,)
    w_sorted = w[:, order]  # (R, n)
    positive = w_sorted * y[order]  # (R, n)
    positive_cum = np.cumsum(positive, axis=1)  # (R, n)
    negative_cum = np.cumsum(w_sorted - positive, axis=1)  # (R, n)
    if len(block_ends) == len(p):  # no ties: every row ends its own block
        return positive_cum, negative_cum
    return positive_cum[:, block_ends], negative_cum[:, block_ends]


def _per_block(cumulative: np.ndarray) -> np.ndarray:
    """Undo a cumulative sum along the last axis. Shape: (R, K) -> (R, K)."""
    return np.diff(cumulative, axis=1, prepend=0.0)


def auroc(y: Any, p: Any, weights: Any = None) -> float | np.ndarray:
    """Area under the ROC curve in its Mann–Whitney form, with weights.

    AUROC = sum over (positive i, negative j) of w_i w_j [1(p_i > p_j) + 1/2 1(p_i = p_j)],
    divided by W_pos W_neg. Unweighted it equals `sklearn.metrics.roc_auc_score`; with integer
    weights it equals the unweighted AUROC of the data with each row repeated w times. One sort,
    O(n log n), then O(R n) for R weight vectors.

    Shape: y, p (n,); weights None, (n,) or (R, n) -> float, or (R,) for 2-D weights.

    Args:
        y: Labels, 0/1 or bool.
        p: Scores in [0, 1] (only their order matters).
        weights: Row weights (bootstrap multiplicities), or one row of weights per replicate.

    Returns:
        The AUROC; for 2-D weights an array with NaN where a replicate lacks a class.

    Raises:
        ValueError: On bad input, or (1-D or no weights) when the weighted data lack a class.
    """
    y, p = _check_labels_scores(y, p)
    w = _check_weights(weights, len(y))
    positive_cum, negative_cum = _cumulative_class_weights(y, p, w, descending=False)  # (R, K)
    # Negatives strictly below a block count fully, those tied with it 1/2: the mean of the
    # cumulative negative weight before and after the block.
    negative_before = np.pad(negative_cum[:, :-1], ((0, 0), (1, 0)))  # (R, K) shifted by one
    concordant = (_per_block(positive_cum) * 0.5 * (negative_before + negative_cum)).sum(axis=1)
    pairs = positive_cum[:, -1] * negative_cum[:, -1]  # (R,)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(pairs > 0, concordant / pairs, np.nan)
    return _finish(values, weights, "AUROC", "it needs both classes (with positive weight)")


def auprc(y: Any, p: Any, weights: Any = None) -> float | np.ndarray:
    """Average precision, step-wise, as `sklearn.metrics.average_precision_score`, with weights.

    AP = sum over distinct thresholds t (high to low) of (R_t - R_prev) P_t, with recall R and
    precision P of the rule `p >= t`: no interpolation. With integer weights it equals the AP of
    the data with each row repeated w times.

    Shape: y, p (n,); weights None, (n,) or (R, n) -> float, or (R,) for 2-D weights.

    Args:
        y: Labels, 0/1 or bool.
        p: Scores in [0, 1].
        weights: Row weights, or one row of weights per replicate.

    Returns:
        The average precision; for 2-D weights an array with NaN where a replicate has no positive.

    Raises:
        ValueError: On bad input, or (1-D or no weights) when there is no positive weight.
    """
    y, p = _check_labels_scores(y, p)
    w = _check_weights(weights, len(y))
    true_pos, false_pos = _cumulative_class_weights(y, p, w, descending=True)  # (R, K)
    flagged = true_pos + false_pos  # (R, K) weight of rows with p >= threshold
    # A block before any weighted row has 0/0 precision but adds no recall: count it as 0.
    precision = np.divide(true_pos, flagged, out=np.zeros_like(true_pos), where=flagged > 0)
    total_pos = true_pos[:, -1]  # (R,)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(
            total_pos > 0, (_per_block(true_pos) * precision).sum(axis=1) / total_pos, np.nan
        )
    return _finish(values, weights, "AUPRC", "there is no positive (with positive weight)")


def brier(y: Any, p: Any, weights: Any = None) -> float | np.ndarray:
    """Brier score: the weighted mean of (p - y)^2 (lower is better).

    Shape: y, p (n,); weights None, (n,) or (R, n) -> float, or (R,) for 2-D weights.

    Args:
        y: Labels, 0/1 or bool.
        p: Predicted probabilities in [0, 1].
        weights: Row weights, or one row of weights per replicate.

    Returns:
        The Brier score; for 2-D weights an array with NaN where all weights are zero.

    Raises:
        ValueError: On bad input, or (1-D weights) when all weights are zero.
    """
    y, p = _check_labels_scores(y, p)
    w = _check_weights(weights, len(y))
    total = w.sum(axis=1)  # (R,)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(total > 0, (w @ (p - y) ** 2) / total, np.nan)
    return _finish(values, weights, "the Brier score", "all weights are zero")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), without overflow


def _logistic_nll(eta: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted negative log-likelihood of a logistic model, per replicate.

    Shape: eta (R, n), y (n,), w (R, n) -> (R,).
    """
    return (w * (np.logaddexp(0.0, eta) - y * eta)).sum(axis=1)


def _fit_recalibration(
    y: np.ndarray, x: np.ndarray, w: np.ndarray, *, max_iter: int = 100, tol: float = 1e-10
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ML fit of P(y=1) = sigmoid(intercept + slope * x), R fits at once.

    Newton's method on the two parameters with step halving (the log-likelihood is concave, so a
    halved Newton step always ends up increasing it). x is centered per replicate for a
    well-conditioned Hessian. Fits that do not converge (a class missing, the classes separated by
    x, or x constant: then no finite maximum exists) give NaN.

    Shape: y, x (n,); w (R, n) -> slope (R,), intercept (R,).
    """
    total = w.sum(axis=1)  # (R,)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (w @ x) / total  # (R,)
    xc = x[None, :] - x_mean[:, None]  # (R, n) centered
    # Start from the identity recalibration (slope 1, intercept 0): near the optimum for a
    # reasonably calibrated model. Parameters: eta = a + b * xc, so intercept = a - b * x_mean.
    a, b = x_mean.copy(), np.ones_like(x_mean)
    nll = _logistic_nll(a[:, None] + b[:, None] * xc, y, w)
    converged = np.zeros(len(w), dtype=bool)
    positive_weight = w @ y  # (R,)
    # One class only: the likelihood increases without bound, fail now instead of at max_iter.
    failed = ~np.isfinite(nll) | (positive_weight <= 0) | (positive_weight >= total)
    for _ in range(max_iter):
        active = ~(converged | failed)
        if not active.any():
            break
        mu = _sigmoid(a[:, None] + b[:, None] * xc)  # (R, n)
        residual = w * (y - mu)  # (R, n) gradient terms
        curvature = w * mu * (1.0 - mu)  # (R, n) Hessian terms
        g_a, g_b = residual.sum(axis=1), (residual * xc).sum(axis=1)
        h_aa, h_ab = curvature.sum(axis=1), (curvature * xc).sum(axis=1)
        h_bb = (curvature * xc * xc).sum(axis=1)
        det = h_aa * h_bb - h_ab * h_ab
        with np.errstate(invalid="ignore", divide="ignore"):
            step_a = (h_bb * g_a - h_ab * g_b) / det
            step_b = (h_aa * g_b - h_ab * g_a) / det
        # A singular Hessian (constant x, or curvature lost to separation) has no Newton step.
        failed |= active & ~(np.isfinite(step_a) & np.isfinite(step_b) & (det > 0))
        active &= ~failed
        step_a, step_b = np.where(active, step_a, 0.0), np.where(active, step_b, 0.0)
        scale = np.ones_like(a)
        for _ in range(40):  # step halving, vectorized over the fits that still overshoot
            eta = (a + scale * step_a)[:, None] + (b + scale * step_b)[:, None] * xc
            new_nll = _logistic_nll(eta, y, w)
            worse = active & ~(new_nll <= nll + 1e-12 * np.abs(nll))
            if not worse.any():
                break
            scale = np.where(worse, 0.5 * scale, scale)
        failed |= worse  # no decrease along a Newton direction: numerically stuck
        active &= ~worse
        a = np.where(active, a + scale * step_a, a)
        b = np.where(active, b + scale * step_b, b)
        nll = np.where(active, new_nll, nll)
        converged |= active & (np.abs(scale * step_a) < tol) & (np.abs(scale * step_b) < tol)
    slope = np.where(converged, b, np.nan)
    intercept = np.where(converged, a - b * x_mean, np.nan)
    return slope, intercept


def calibration(
    y: Any, p: Any, weights: Any = None
) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """Calibration slope and intercept by logistic recalibration.

    Fits logit P(y = 1) = intercept + slope * logit(p) by weighted maximum likelihood (Newton's
    method on the two parameters), with p clipped to [1e-6, 1 - 1e-6]. Perfect calibration gives
    slope 1 and intercept 0. A slope below 1 means scores too extreme (overfitting), above 1 too
    moderate. This is the usual "calibration slope" (Cox 1958; Steyerberg); note the intercept here
    comes from the JOINT fit of both parameters, not the "calibration-in-the-large" intercept of a
    fit with the slope fixed at 1, so it is read together with the slope.

    Shape: y, p (n,); weights None, (n,) or (R, n) -> two floats, or two (R,) for 2-D weights.

    Args:
        y: Labels, 0/1 or bool.
        p: Predicted probabilities in [0, 1].
        weights: Row weights, or one row of weights per replicate.

    Returns:
        (slope, intercept); for 2-D weights two arrays with NaN where the fit has no finite
        maximum.

    Raises:
        ValueError: On bad input, or (1-D or no weights) when no finite maximum-likelihood fit
            exists: a single class, classes perfectly separated by p, or constant p.
    """
    y, p = _check_labels_scores(y, p)
    w = _check_weights(weights, len(y))
    p_clipped = np.clip(p, CLIP, 1.0 - CLIP)
    x = np.log(p_clipped) - np.log1p(-p_clipped)  # logit
    slope, intercept = _fit_recalibration(y, x, w)
    if weights is not None and np.ndim(weights) == 2:
        return slope, intercept
    if not (np.isfinite(slope[0]) and np.isfinite(intercept[0])):
        raise ValueError(
            "calibration slope is undefined: the logistic fit has no finite maximum "
            "(a single class, classes perfectly separated by p, or constant p)"
        )
    return float(slope[0]), float(intercept[0])


# ----------------------------------------------------------------------------------------------
# patient-level bootstrap


def _check_bootstrap_args(n_boot: int, alpha: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _replicate_weights(
    patient_of_row: np.ndarray, n_patients: int, n_boot: int, seed: int
) -> Iterator[np.ndarray]:
    """Row weights of bootstrap replicates, in chunks: a row's weight is how often its patient
    was drawn, so a replicate never materializes duplicated rows.

    Replicate r draws its patients with the r-th call `rng.integers(0, G, size=G)` of
    `rng = np.random.default_rng(seed)`, G patients numbered in sorted order of their ids.

    Shape: patient_of_row (n,) -> yields (R, n) float64, R replicates per chunk, n_boot in all.
    """
    rng = np.random.default_rng(seed)
    n = len(patient_of_row)
    per_chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, per_chunk):
        r = min(per_chunk, n_boot - start)
        drawn = np.stack([rng.integers(0, n_patients, size=n_patients) for _ in range(r)])  # (r, G)
        # Count draws per (replicate, patient) with one bincount over offset patient numbers.
        offsets = n_patients * np.arange(r)[:, None]  # (r, 1)
        counts = np.bincount((drawn + offsets).ravel(), minlength=r * n_patients)
        yield counts.reshape(r, n_patients)[:, patient_of_row].astype(np.float64)  # (r, n)


def _replicate_values(metric: Metric, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """metric over a (R, n) weight matrix, checked to give R values."""
    values = np.asarray(metric(y, p, w), dtype=np.float64)
    if values.shape != (len(w),):
        raise ValueError(
            f"metric must accept weights of shape (R, n) and return shape (R,): got {values.shape} "
            f"for R={len(w)} (the metrics of ehr_ssl.evaluation.metrics do)"
        )
    return values


def _finite_replicates(
    statistic: Callable[[np.ndarray], np.ndarray],
    groups: Any,
    n: int,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """statistic(weights (R, n)) -> (R,) over all n_boot patient-level replicates, keeping the
    finite values (a replicate where a metric is undefined is dropped). Shape: -> (<= n_boot,)."""
    patient_of_row, n_patients = _patient_index(groups, n)
    values = np.concatenate(
        [statistic(w) for w in _replicate_weights(patient_of_row, n_patients, n_boot, seed)]
    )
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError(f"the metric is undefined in all {n_boot} bootstrap replicates")
    return values


def _percentile_interval(values: np.ndarray, alpha: float) -> list[float]:
    low, high = np.quantile(values, [alpha / 2, 1.0 - alpha / 2])
    return [float(low), float(high)]


def bootstrap_ci(
    metric: Metric,
    y: Any,
    p: Any,
    groups: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric, resampling patients, not rows.

    Each replicate draws as many patients as there are, with replacement, and keeps all rows of
    each drawn patient (as many times as it was drawn), so the correlation between visits of one
    patient widens the interval as it should. Replicates are evaluated as weighted metrics (weight
    = times the row's patient was drawn), many at once. Replicates where the metric is undefined
    (for AUROC: a replicate with one class only) are DROPPED, and the interval comes from the rest.
    Deterministic for a seed: replicate r uses the r-th draw `rng.integers(0, G, size=G)` of
    `np.random.default_rng(seed)` over the G patients in sorted order of their ids.

    Shape: y, p, groups (n,) -> (low, high).

    Args:
        metric: metric(y, p, weights) accepting weights of shape (R, n) and returning (R,) with
            NaN where undefined, as `auroc`, `auprc`, `brier` do (for the calibration slope, pass
            `lambda y, p, w: calibration(y, p, w)[0]`).
        y: Labels, 0/1 or bool.
        p: Scores in [0, 1].
        groups: Patient id of each row (ints, strings, any mutually comparable ids).
        n_boot: Number of bootstrap replicates drawn.
        seed: Seed of `np.random.default_rng`.
        alpha: 1 - coverage: the interval spans the alpha/2 and 1 - alpha/2 quantiles.

    Returns:
        (low, high) as floats.

    Raises:
        ValueError: On bad input, or when the metric is undefined in every replicate.
    """
    _check_bootstrap_args(n_boot, alpha)
    y, p = _check_labels_scores(y, p)
    values = _finite_replicates(
        lambda w: _replicate_values(metric, y, p, w), groups, len(y), n_boot, seed
    )
    low, high = _percentile_interval(values, alpha)
    return low, high


def paired_bootstrap_difference(
    metric: Metric,
    y: Any,
    p_a: Any,
    p_b: Any,
    groups: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Difference metric(a) - metric(b) of two models scored on the same rows, with a paired
    patient-level bootstrap: each replicate evaluates both models on the SAME resampled patients.

    A model may come as several training seeds, one row of scores each: its metric is then the
    mean over its seeds, in the full data and in every replicate, so the difference is that of
    the seed means. The interval resamples test patients only: it is conditional on the seeds'
    label subsets and does not hold the spread between subsets. 1-D scores are one seed.

    Replicates where the metric is undefined for any seed of either model are dropped. The
    two-sided p-value is 2 * min(share of replicate differences <= 0, share >= 0), capped at 1
    (so a model compared with itself gets 1). Same resampling scheme and seed contract as
    `bootstrap_ci`.

    Shape: y, groups (n,); p_a (n,) or (S_a, n); p_b (n,) or (S_b, n) -> dict.

    Args:
        metric: A metric accepting (R, n) weights, as for `bootstrap_ci`.
        y: Labels, 0/1 or bool.
        p_a: Scores of model a in [0, 1], one row per seed.
        p_b: Scores of model b in [0, 1], one row per seed.
        groups: Patient id of each row.
        n_boot: Number of bootstrap replicates drawn.
        seed: Seed of `np.random.default_rng`.
        alpha: 1 - coverage of the interval (the key stays `ci95`).

    Returns:
        {"difference": float on the full data, "ci95": [low, high], "p_value": float}.

    Raises:
        ValueError: On bad input, when the metric is undefined on the full data, or when it is
            undefined in every replicate.
    """
    _check_bootstrap_args(n_boot, alpha)
    y, seeds_a = _seed_rows(y, p_a, "p_a")
    _, seeds_b = _seed_rows(y, p_b, "p_b")
    _patient_index(groups, len(y))  # bad groups fail before any metric is computed
    difference = float(
        np.mean([float(metric(y, p)) for p in seeds_a])
        - np.mean([float(metric(y, p)) for p in seeds_b])
    )
    differences = _finite_replicates(
        lambda w: _seed_mean(metric, y, seeds_a, w) - _seed_mean(metric, y, seeds_b, w),
        groups,
        len(y),
        n_boot,
        seed,
    )
    return {"difference": difference, **_interval_and_p(differences, alpha)}


def _interval_and_p(differences: np.ndarray, alpha: float) -> dict[str, Any]:
    """The percentile interval of replicate differences and the two-sided bootstrap p-value."""
    share_below = float(np.mean(differences <= 0))
    share_above = float(np.mean(differences >= 0))
    return {
        "ci95": _percentile_interval(differences, alpha),
        "p_value": min(1.0, 2.0 * min(share_below, share_above)),
    }


def multi_bootstrap_difference(
    metric: Metric,
    y: Any,
    runs_a: Any,
    runs_b: Any,
    groups: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """`paired_bootstrap_difference` where a model comes as several pretraining runs (each a
    set of training seeds), by the Multi-Bootstrap of the MultiBERTs (Sellam et al., ICLR
    2022): each replicate resamples the test patients (the same for both models) and, apart,
    each model's runs with replacement, so the interval also holds the spread between
    pretrainings that one run cannot show. A model's metric is the mean over its (drawn) runs
    of each run's seed mean. A model no pretraining touches (a baseline) is one run: (S, n) or
    (n,). With one run each, or copies of one run, it equals `paired_bootstrap_difference`
    (same patient draws for a seed; copies to rounding). Each side draws its runs from its own
    stream, so swapping the sides negates the difference but not exactly the interval; when
    both sides share their pretraining seeds, drawing them apart is the conservative choice.

    Shape: y, groups (n,); runs_a, runs_b (P, S, n), (S, n) or (n,) -> dict.

    Returns:
        {"difference": float on the full data, "ci95": [low, high], "p_value": float,
        "per_run": a's runs' each minus b on the full data}.

    Raises:
        ValueError: On bad input, when the metric is undefined on the full data, or when it is
            undefined in every replicate.
    """
    _check_bootstrap_args(n_boot, alpha)
    a, b = _runs(y, runs_a, "runs_a"), _runs(y, runs_b, "runs_b")
    y = _check_labels_scores(y, a[0][0], name="runs_a[0][0]")[0]
    _patient_index(groups, len(y))
    full_a = [float(np.mean([float(metric(y, p)) for p in rows])) for rows in a]
    full_b = float(np.mean([np.mean([float(metric(y, p)) for p in rows]) for rows in b]))
    # The runs each replicate draws: generators apart from the patients' (seed, 1 and 2).
    shares = [_run_shares(len(runs), n_boot, [seed, side]) for side, runs in ((1, a), (2, b))]
    done = 0

    def statistic(w: np.ndarray) -> np.ndarray:
        nonlocal done
        means = []
        for runs, share in zip((a, b), shares, strict=True):
            values = np.stack([_seed_mean(metric, y, rows, w) for rows in runs], axis=1)  # (R, P)
            drawn = share[done : done + len(w)]
            means.append((np.where(drawn > 0, values, 0.0) * drawn).sum(axis=1))  # undrawn: 0
        done += len(w)
        return means[0] - means[1]

    replicates = _finite_replicates(statistic, groups, len(y), n_boot, seed)
    replicates[np.abs(replicates) < 1e-12] = 0.0  # sums over copies of a run: exact zeros stay
    return {
        "difference": float(np.mean(full_a) - full_b),
        **_interval_and_p(replicates, alpha),
        "per_run": [value - full_b for value in full_a],
    }


def _runs(y: Any, scores: Any, name: str) -> list[list[np.ndarray]]:
    """Checked score rows of each run of one model: (P, S, n); (S, n) or (n,) is one run."""
    matrix = np.asarray(scores)
    matrix = matrix.reshape((1,) * (3 - matrix.ndim) + matrix.shape) if matrix.ndim < 3 else matrix
    if matrix.ndim != 3 or matrix.shape[0] == 0:
        raise ValueError(f"{name} must have shape (P, S, n) with P >= 1, got {matrix.shape}")
    return [_seed_rows(y, run, f"{name}[{i}]")[1] for i, run in enumerate(matrix)]


def _run_shares(n_runs: int, n_boot: int, seed: list[int]) -> np.ndarray:
    """Each replicate's share of each run: P draws with replacement. Shape: -> (n_boot, P)."""
    drawn = np.random.default_rng(seed).integers(0, n_runs, size=(n_boot, n_runs))
    return np.stack([np.bincount(row, minlength=n_runs) for row in drawn]) / n_runs


def _seed_rows(y: Any, scores: Any, name: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Checked labels and score rows of one model: (n,) is one seed, (S, n) S seeds."""
    matrix = np.asarray(scores)
    if matrix.ndim == 1:
        matrix = matrix[None]
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"{name} must have shape (S, n) with S >= 1, got {matrix.shape}")
    checked = [_check_labels_scores(y, row, name=f"{name}[{s}]") for s, row in enumerate(matrix)]
    return checked[0][0], [p for _, p in checked]


def _seed_mean(metric: Metric, y: np.ndarray, rows: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    """The metric averaged over seeds in each replicate (NaN where any seed's is undefined).

    Shape: rows S x (n,), w (R, n) -> (R,)."""
    return np.mean([_replicate_values(metric, y, p, w) for p in rows], axis=0)


def seed_mean_bootstrap_ci(
    metric: Metric,
    y: Any,
    scores: Any,
    groups: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """A metric averaged over training seeds, with a patient-level bootstrap interval of that mean.

    S seeds of one model score the same n rows. Each replicate resamples patients once and
    evaluates every seed on that same resample, so the interval is the one of the seed-mean metric
    (test-set uncertainty, with the seed-to-seed spread averaged in), not of a single seed.
    Replicates where the metric is undefined for any seed are dropped. Same resampling scheme and
    seed contract as `bootstrap_ci`: with S = 1 the interval equals `bootstrap_ci`'s.

    Shape: y, groups (n,); scores (S, n) -> dict.

    Args:
        metric: A metric accepting (R, n) weights, as for `bootstrap_ci`.
        y: Labels, 0/1 or bool.
        scores: Scores in [0, 1], one row per seed.
        groups: Patient id of each row.
        n_boot: Number of bootstrap replicates drawn.
        seed: Seed of `np.random.default_rng` (of the bootstrap, not of the models).
        alpha: 1 - coverage of the interval (the key stays `ci95`).

    Returns:
        {"mean": mean over seeds of the metric on the full data, "ci95": [low, high], "min" and
        "max": over seeds, "n_seeds": S}, as plain Python values.

    Raises:
        ValueError: On bad input, when the metric is undefined on the full data for some seed, or
            when it is undefined in every replicate.
    """
    _check_bootstrap_args(n_boot, alpha)
    if np.ndim(scores) != 2:
        raise ValueError(f"scores must have shape (S, n) with S >= 1, got {np.shape(scores)}")
    y, per_seed_scores = _seed_rows(y, scores, "scores")
    _patient_index(groups, len(y))  # bad groups fail before any metric is computed
    per_seed = [float(metric(y, p)) for p in per_seed_scores]
    means = _finite_replicates(  # NaN, so dropped, where any seed's metric is undefined
        lambda w: _seed_mean(metric, y, per_seed_scores, w), groups, len(y), n_boot, seed
    )
    return {
        "mean": float(np.mean(per_seed)),
        "ci95": _percentile_interval(means, alpha),
        "min": min(per_seed),
        "max": max(per_seed),
        "n_seeds": len(per_seed),
    }


def evaluate_predictions(
    y: Any, p: Any, groups: Any, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """All metrics of one model on one split, as plain Python values (JSON-serializable).

    Shape: y, p, groups (n,) -> dict.

    Args:
        y: Labels, 0/1 or bool.
        p: Predicted probabilities in [0, 1].
        groups: Patient id of each row.
        n_boot: Bootstrap replicates for the AUROC interval (patient-level).
        seed: Seed of the bootstrap.

    Returns:
        {"auroc", "auroc_ci95" ([low, high], 95%), "auprc", "brier", "calibration_slope",
        "calibration_intercept", "n", "prevalence", "n_patients"}. The calibration values are
        None when the logistic recalibration has no finite fit (classes perfectly separated by
        p, or constant p); every other value is a float or an int.

    Raises:
        ValueError: On bad input, or when y has a single class.
    """
    y, p = _check_labels_scores(y, p)
    _, n_patients = _patient_index(groups, len(y))
    point = auroc(y, p)
    low, high = bootstrap_ci(auroc, y, p, groups, n_boot=n_boot, seed=seed, alpha=0.05)
    try:
        slope, intercept = calibration(y, p)
    except ValueError:  # separated classes or constant p: no finite recalibration
        slope, intercept = None, None
    return {
        "auroc": point,
        "auroc_ci95": [low, high],
        "auprc": auprc(y, p),
        "brier": brier(y, p),
        "calibration_slope": slope,
        "calibration_intercept": intercept,
        "n": len(y),
        "prevalence": float(y.mean()),
        "n_patients": n_patients,
    }


def calibration_ci(
    y: Any, p: Any, groups: Any, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """Calibration slope and intercept (`calibration`) with patient-level bootstrap intervals
    (`bootstrap_ci`, replicates without a finite fit dropped).

    Shape: y, p, groups (n,) -> dict.

    Returns:
        {"slope", "slope_ci95", "intercept", "intercept_ci95"}: the point values None when the
        fit has no finite maximum (separated classes, constant p), an interval None when no
        replicate has one.

    Raises:
        ValueError: On bad input.
    """
    y, p = _check_labels_scores(y, p)
    _patient_index(groups, len(y))
    try:
        slope, intercept = calibration(y, p)
    except ValueError:  # no finite fit on the full data: nothing to put an interval on
        return {"slope": None, "slope_ci95": None, "intercept": None, "intercept_ci95": None}
    intervals = []
    for part in (0, 1):  # 0: slope, 1: intercept
        try:
            low, high = bootstrap_ci(
                lambda yy, pp, w, part=part: calibration(yy, pp, w)[part], y, p, groups,
                n_boot=n_boot, seed=seed, alpha=alpha,
            )  # fmt: skip
            intervals.append([low, high])
        except ValueError:  # no replicate with a finite fit
            intervals.append(None)
    return {"slope": slope, "slope_ci95": intervals[0], "intercept": intercept,
            "intercept_ci95": intervals[1]}  # fmt: skip
