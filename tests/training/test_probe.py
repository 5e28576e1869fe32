"""The saved probe's scores (ehr_ssl.training.probe.probe_scores)."""

from __future__ import annotations

import warnings

import numpy as np

from ehr_ssl.training.probe import probe_scores


def _probe(coef: list[float]) -> dict[str, np.ndarray]:
    width = len(coef)
    return {
        "coef": np.asarray(coef),
        "intercept": np.asarray([0.5]),
        "mean": np.ones(width),
        "std": np.full(width, 2.0),
    }


def test_scores_are_the_logistic_of_the_standardized_vectors():
    probe = _probe([1.0, -3.0])
    vectors = np.random.default_rng(0).normal(size=(50, 2))
    logits = ((vectors - 1.0) / 2.0) @ probe["coef"] + 0.5
    np.testing.assert_allclose(probe_scores(probe, vectors), 1 / (1 + np.exp(-logits)))


def test_extreme_logits_score_without_overflow_and_keep_their_order():
    """A feature nearly constant on the probe's training visits standardizes to thousands on
    another visit: its score must stay a finite probability, ordered, with no warning."""
    probe = _probe([1.0])
    vectors = np.asarray([[-5e3], [-4e3], [0.0], [4e3], [5e3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = probe_scores(probe, vectors)
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
    assert np.all(np.diff(scores) >= 0)
    assert scores[0] == 0.0 and scores[-1] == 1.0


def test_probe_under_evidence_selection_keeps_the_c_of_highest_evidence():
    from ehr_ssl.training.probe import fit_probe_cv, standardized_logistic
    from ehr_ssl.training.selection import C_GRID, cv_folds, log_evidence_bound

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (90, 12))  # far from standardized: the probe standardizes
    y = (x[:, 0] - x[:, 1] + 2 * rng.normal(size=90) > 0).astype(np.int64)
    groups, ids = np.arange(90) // 2, np.arange(90) * 7

    def folds(penalty: str):
        return cv_folds(y, groups, ids, folds=3, repeats=1, seed=0, setting="t", penalty=penalty)

    by_folds, by_evidence = fit_probe_cv(x, y, folds("cv")), fit_probe_cv(x, y, folds("evidence"))
    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
    evidence = [log_evidence_bound(z, y, c)[0] for c in C_GRID]
    np.testing.assert_allclose(
        [h["log_evidence"] for h in by_evidence["history"]], evidence, rtol=0, atol=1e-3
    )  # fmt: skip (warm starts along the grid)
    assert by_evidence["C"] == C_GRID[int(np.argmax(evidence))]
    assert all("log_evidence" not in h for h in by_folds["history"])
    # the same fold figures under either; the probe is refit on every row at its C
    assert [h["val_auroc"] for h in by_evidence["history"]] == [
        h["val_auroc"] for h in by_folds["history"]
    ]
    refit = standardized_logistic(x, y, by_evidence["C"])
    np.testing.assert_allclose(by_evidence["coef"], refit["coef"])
