"""What a report must say about its own reliability: warnings when the test set is too small to
trust, when a relative gain is meaningless (AUROCs near chance), and the measured calibration in
words, so no document states a fixed "calibrated" sentence the figures contradict."""

from __future__ import annotations

from typing import Any

# Below these counts a test-set AUROC interval is wide and an operating point rests on a handful
# of visits (Riley et al. 2020 ask for ~100 events to validate; 20 is where intervals of a
# sensitivity or PPV span tens of points).
MIN_TEST_PATIENTS = 100
MIN_TEST_POSITIVES = 20
MIN_TEST_NEGATIVES = 20
# The relative gain (AUROC_ref - 0.5) / (AUROC - 0.5) - 1 divides by the distance from chance:
# within this of 0.5 it explodes (or is ~-1) and says nothing, so it is left out.
NEAR_CHANCE = 0.05

SAMPLE_SIZE_THRESHOLDS = {
    "min_patients": MIN_TEST_PATIENTS,
    "min_positives": MIN_TEST_POSITIVES,
    "min_negatives": MIN_TEST_NEGATIVES,
    "near_chance": NEAR_CHANCE,
}


def sample_size_warnings(
    n_patients: int, n_positives: int, n_negatives: int, *, what: str = "test set"
) -> list[str]:
    """One sentence per count below its threshold (none when all are met)."""
    checks = (
        (n_patients, MIN_TEST_PATIENTS, "patients"),
        (n_positives, MIN_TEST_POSITIVES, "positives (admissions)"),
        (n_negatives, MIN_TEST_NEGATIVES, "negatives"),
    )
    return [
        f"the {what} has {count} {noun}, fewer than {minimum}: its intervals are wide and its "
        "figures may not hold on another sample"
        for count, minimum, noun in checks
        if count < minimum
    ]


def is_small(n_patients: int, n_positives: int, n_negatives: int) -> bool:
    """Whether a (sub)set falls below any of the sample-size thresholds."""
    return bool(sample_size_warnings(n_patients, n_positives, n_negatives))


def near_chance(auroc: float | None) -> bool:
    """Whether an AUROC is within `NEAR_CHANCE` of 0.5 (or unknown)."""
    return auroc is None or abs(auroc - 0.5) < NEAR_CHANCE


def calibration_statement(
    slope: float | None,
    intercept: float | None,
    slope_ci: list[float] | None = None,
    intercept_ci: list[float] | None = None,
) -> str:
    """The measured calibration in one sentence: the slope and intercept (with their intervals
    when known) and what they mean. A claim of good calibration is made only when both
    intervals hold the ideal (slope 1, intercept 0); without intervals no claim is made."""
    if slope is None or intercept is None:
        return (
            "calibration is unmeasured: the logistic recalibration has no finite fit (classes "
            "separated by the score, or a constant score)"
        )
    figures = f"calibration slope {slope:.2f}{_ci(slope_ci)}, intercept {intercept:+.2f}"
    figures += _ci(intercept_ci, signed=True)
    if slope_ci is None or intercept_ci is None:
        return f"{figures} (no interval: read the point values with care)"
    slope_holds_one = slope_ci[0] <= 1.0 <= slope_ci[1]
    if slope_holds_one and intercept_ci[0] <= 0.0 <= intercept_ci[1]:
        return f"{figures}: consistent with calibration on the test set"
    if slope_ci[1] < 1.0:
        verdict = "scores too extreme (slope below 1)"
    elif slope_ci[0] > 1.0:
        verdict = "scores too moderate (slope above 1)"
    else:
        verdict = "risk misestimated on average (the intercept's interval excludes 0)"
    return (
        f"{figures}: miscalibrated, {verdict}; recalibrate before reading scores as probabilities"
    )


def _ci(ci: list[float] | None, signed: bool = False) -> str:
    if ci is None:
        return ""
    form = "{:+.2f}" if signed else "{:.2f}"
    return f" (95% CI {form.format(ci[0])} to {form.format(ci[1])})"


def report_caveats(report: dict[str, Any]) -> list[str]:
    """The warnings of a report (or its JSON round trip): those it recorded, else none."""
    return list((report.get("caveats") or {}).get("warnings") or [])
