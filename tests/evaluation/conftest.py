"""Shared test data of the report tests: small synthetic test predictions (a good, a worse and a
random model, two budgets, two seeds), their oracle and the report built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ehr_ssl.evaluation.predictions import PREDICTION_COLUMNS
from ehr_ssl.evaluation.report import build_report

N_BOOT = 200
MODELS = ("ssl", "scratch", "random")  # good (the reference), worse, random


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def make_cohort(n_visits: int = 200, n_patients: int = 120, seed: int = 0) -> pl.DataFrame:
    """Test visits (unsorted, non-consecutive ids) of patients with 1+ visits, a known risk."""
    rng = np.random.default_rng(seed)
    patients = np.concatenate(
        [np.arange(n_patients), rng.integers(0, n_patients, n_visits - n_patients)]
    )
    patient_risk = rng.normal(-1.0, 1.2, n_patients)
    risk = sigmoid(patient_risk[patients] + rng.normal(0, 0.5, n_visits))
    return pl.DataFrame(
        {
            "visit_id": rng.permutation(10 * n_visits)[:n_visits] + 1000,
            "patient_id": 7 * patients + 3,
            "risk": risk,
            "label": rng.random(n_visits) < risk,
        }
    )


def make_predictions(
    cohort: pl.DataFrame,
    budgets: tuple[str, ...] = ("100", "all"),
    seeds: tuple[int, ...] = (0, 1),
    models: tuple[str, ...] = MODELS,
) -> pl.DataFrame:
    """One group per (model, budget, seed), rows shuffled differently in every group."""
    noise_sd = {"ssl": 0.6, "scratch": 2.0}  # on the logit scale; the more labels, the less
    logit = np.log(cohort["risk"].to_numpy()) - np.log1p(-cohort["risk"].to_numpy())
    frames = []
    for i, (model, budget, seed) in enumerate(
        (m, b, s) for m in models for b in budgets for s in seeds
    ):
        rng = np.random.default_rng(100 + i)
        if model == "random":
            score = rng.random(cohort.height)
        elif model == "inverted":
            score = 1.0 - cohort["risk"].to_numpy()
        else:
            shrink = 0.5 if budget == "all" else 1.0
            score = sigmoid(logit + rng.normal(0, noise_sd[model] * shrink, cohort.height))
        n_labels = 100 if budget == "100" else (20 if budget == "20" else 4000 + 2 * seed)
        frame = cohort.select("visit_id", "patient_id", "label").with_columns(
            split=pl.lit("test"),
            model=pl.lit(model),
            budget=pl.lit(budget),
            seed=pl.lit(seed),
            train_labels=pl.lit(n_labels),
            score=pl.Series(score),
        )
        frames.append(frame[rng.permutation(frame.height)])
    return pl.concat(frames).select(PREDICTION_COLUMNS)


@pytest.fixture(scope="module")
def cohort() -> pl.DataFrame:
    return make_cohort()


@pytest.fixture(scope="module")
def predictions(cohort: pl.DataFrame) -> pl.DataFrame:
    return make_predictions(cohort)


@pytest.fixture(scope="module")
def oracle(cohort: pl.DataFrame) -> pl.DataFrame:
    extra = pl.DataFrame({"visit_id": [1], "admission_probability": [0.5]})  # not a test visit
    return pl.concat(
        [cohort.select("visit_id", admission_probability="risk"), extra], how="vertical_relaxed"
    )


@pytest.fixture(scope="module")
def report(predictions: pl.DataFrame, oracle: pl.DataFrame) -> dict:
    return build_report(
        predictions,
        main_budget="100",
        oracle=oracle,
        n_boot=N_BOOT,
        seed=0,
        settings={"out": Path("runs/x"), "lr": np.float64(1e-3), "sizes": (1, 2)},
        selection={"ssl": {"val_auroc": 0.8}},
    )
