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
