"""Decision curves (Vickers and Elkin 2006): the net benefit of acting on a score at threshold
probabilities pt, against acting on every visit (treat all) and on none. Pure numpy.

Net benefit = TP/n - FP/n * pt / (1 - pt): true alerts, less false alerts weighted by the odds at
which a clinician is indifferent between acting and not (pt = 0.2: one true admission caught is
worth four needless actions).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# 0.05..0.60: the range of risk at which an ED would act on an admission alert; beyond it the
# treat-none line wins for any model of a 7-day admission with a prevalence of a few tens of %.
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 13))


def _odds(thresholds: Any) -> np.ndarray:
    pt = np.asarray(thresholds, dtype=np.float64)
    if pt.ndim != 1 or ((pt <= 0) | (pt >= 1)).any():
        raise ValueError(f"threshold probabilities must be a 1-D array in (0, 1), got {pt!r}")
    return pt / (1.0 - pt)


def net_benefit(y: Any, p: Any, thresholds: Any = THRESHOLDS) -> np.ndarray:
    """Net benefit of flagging visits with `p >= pt`, at each threshold probability pt.

    Shape: y, p (n,); thresholds (K,) -> (K,).
    """
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    odds = _odds(thresholds)
    flagged = p[None, :] >= np.asarray(thresholds, dtype=np.float64)[:, None]  # (K, n)
    true_alerts = (flagged * y).sum(axis=1) / len(y)  # (K,)
    false_alerts = (flagged * (1.0 - y)).sum(axis=1) / len(y)  # (K,)
    return true_alerts - false_alerts * odds


def treat_all_net_benefit(prevalence: float, thresholds: Any = THRESHOLDS) -> np.ndarray:
    """Net benefit of acting on every visit: prevalence - (1 - prevalence) * pt / (1 - pt).

    Shape: thresholds (K,) -> (K,).
    """
    return prevalence - (1.0 - prevalence) * _odds(thresholds)


def decision_curve(
    y: Any, scores: dict[str, np.ndarray], thresholds: Any = THRESHOLDS
) -> dict[str, Any]:
    """Net benefit of each model, of treat-all and of treat-none (0), as plain lists.

    Shape: y (n,); scores name -> (n,) -> {"thresholds", "treat_all", "treat_none", "models"}.
    """
    prevalence = float(np.mean(np.asarray(y, dtype=np.float64)))
    return {
        "thresholds": [float(t) for t in thresholds],
        "treat_all": treat_all_net_benefit(prevalence, thresholds).tolist(),
        "treat_none": [0.0] * len(thresholds),
        "models": {name: net_benefit(y, p, thresholds).tolist() for name, p in scores.items()},
    }
