"""The synthetic cohort's versions, one switch: version 2 (the default since 2026-12-04) is
calibrated to published properties of real ED data (docs/cohort.md); version 1 is the cohort
every figure recorded before it was read on, kept so that those figures reproduce."""

from __future__ import annotations

import numpy as np

from ehr_ssl.data.synthetic.simulation import Cohort, generate_cohort_v1
from ehr_ssl.data.synthetic.simulation_v2 import generate_cohort_v2

COHORT_VERSIONS = (1, 2)
DEFAULT_COHORT_VERSION = 2
DEFAULT_LABELED_FRAC = 0.05  # a few labeled visits per hundred, as in hospitals


def generate_cohort(
    n_visits: int,
    *,
    labeled_frac: float = DEFAULT_LABELED_FRAC,
    seed: int = 0,
    version: int = DEFAULT_COHORT_VERSION,
) -> Cohort:
    """Generate a synthetic ED cohort with exactly `n_visits` visits. Deterministic for a
    (version, seed).

    Args:
        n_visits: Number of visits, >= 1.
        labeled_frac: Fraction of visits, in [0, 1], that get a row in `labels` (rounded).
        seed: Seed of the only random generator used.
        version: The generative story, one of COHORT_VERSIONS (see `generate_cohort_v1` and
            `generate_cohort_v2`).

    Returns:
        The cohort: visits, events, labels, the oracle probability and the latent state.

    Raises:
        ValueError: If `n_visits` < 1, `labeled_frac` is outside [0, 1] or `version` unknown.
    """
    if isinstance(n_visits, bool) or not isinstance(n_visits, int | np.integer) or n_visits < 1:
        raise ValueError(f"n_visits must be an integer >= 1, got {n_visits!r}")
    if not 0.0 <= labeled_frac <= 1.0:
        raise ValueError(f"labeled_frac must be in [0, 1], got {labeled_frac!r}")
    if version not in COHORT_VERSIONS:
        raise ValueError(f"version must be one of {COHORT_VERSIONS}, got {version!r}")
    generate = generate_cohort_v1 if version == 1 else generate_cohort_v2
    return generate(int(n_visits), labeled_frac=labeled_frac, seed=seed)
