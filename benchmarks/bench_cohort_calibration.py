"""The synthetic cohort against published properties of real ED data: the figures of the
calibration table in docs/cohort.md, for one cohort version.

Each row is one property: the admission share; the code vocabulary (distinct codes, and how many
are rare); events per patient and per visit before its prediction time; visits with no local
history; how much of a minor condition's code category is that condition (a prefix roll-up's
purity); the AUROC of the triage acuity alone, of triage features, of the history's codes, of
both; how a recent inpatient stay weighs against an old one; whether the latest creatinine
says more than the first. The models are fit on the train patients (70%) with every label and
scored on the others: a property of the data, not of ehr-ssl, so no ehr-ssl model is involved.

usage: python benchmarks/bench_cohort_calibration.py [--visits 100000] [--cohort-version 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from ehr_ssl.data.synthetic import CONDITIONS, DEFAULT_COHORT_VERSION, generate_cohort
from ehr_ssl.data.synthetic.catalog_v2 import CONDITIONS_V2

VITALS = ("HR", "SBP", "RR", "SPO2", "TEMP")


def visit_events(cohort, before: str) -> pl.DataFrame:
    """Each visit's events strictly before its `before` column (arrival_time or
    prediction_time): visit_id, code, numeric_value, time, arrival_time."""
    visits = cohort.visits.select("visit_id", "patient_id", "arrival_time", "prediction_time")
    return (
        cohort.events.lazy()
        .join(visits.lazy(), on="patient_id")
        .filter(pl.col("time") < pl.col(before))
        .select("visit_id", "code", "numeric_value", "time", "arrival_time")
        .collect()
    )


def triage_features(cohort, current: pl.DataFrame) -> np.ndarray:
    """Age, sex, ESI, vitals (with missing indicators) and the chief complaint, per visit."""
    frame = cohort.visits.select("visit_id", "age", (pl.col("sex") == "F").alias("female"))
    wanted = ["TRIAGE//ESI", *(f"VITAL//{v}" for v in VITALS)]
    values = (
        current.filter(pl.col("code").is_in(wanted))
        .group_by("visit_id", "code")
        .agg(pl.col("numeric_value").first())
        .pivot(on="code", index="visit_id", values="numeric_value")
    )
    complaint = (
        current.filter(pl.col("code").str.starts_with("CC//"))
        .select("visit_id", "code")
        .unique()
        .to_dummies("code")
        .group_by("visit_id")
        .max()
    )
    frame = frame.join(values, on="visit_id", how="left").join(complaint, on="visit_id", how="left")
    for code in wanted:
        if code not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.Float64).alias(code))
        frame = frame.with_columns(
            pl.col(code).is_null().alias(f"{code}_missing"),
            pl.col(code).fill_null(pl.col(code).mean()),
        )
    frame = frame.sort("visit_id").fill_null(0)
    return frame.drop("visit_id").to_numpy().astype(np.float64)


def code_counts(
    events: pl.DataFrame, visit_ids: np.ndarray, vocabulary: list[str]
) -> sp.csr_matrix:
    """log1p counts of each vocabulary code among a visit's events (rows: sorted visit ids)."""
    index = {c: i for i, c in enumerate(vocabulary)}
    counts = events.group_by("visit_id", "code").len()
    counts = counts.filter(pl.col("code").is_in(vocabulary))
    rows = np.searchsorted(visit_ids, counts["visit_id"].to_numpy())
    cols = np.array([index[c] for c in counts["code"].to_list()], dtype=np.int64)
    shape = (len(visit_ids), len(vocabulary))
    return sp.csr_matrix((np.log1p(counts["len"].to_numpy()), (rows, cols)), shape=shape)


def fit_auroc(x, y, train: np.ndarray, test: np.ndarray, scale: bool = False) -> float:
    """Test AUROC of an L2 logistic regression, C chosen on a 20% split of the train rows."""
    if scale:
        scaler = StandardScaler(with_mean=not sp.issparse(x)).fit(x[train])
        x = scaler.transform(x)
    rng = np.random.default_rng(0)
    inner = rng.random(len(train)) < 0.8
    best, best_c = -1.0, 1.0
    for c in (0.01, 0.1, 1.0):
        model = LogisticRegression(C=c, max_iter=300).fit(x[train[inner]], y[train[inner]])
        score = roc_auc_score(y[train[~inner]], model.predict_proba(x[train[~inner]])[:, 1])
        best, best_c = (score, c) if score > best else (best, best_c)
    model = LogisticRegression(C=best_c, max_iter=300).fit(x[train], y[train])
    return float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))


def prefix_purity(events: pl.DataFrame, version: int) -> float:
    """Over the minor conditions' diagnosis codes: the share of events in the code's
    three-character category that are that condition's codes (1 = the prefix names it)."""
    conditions = (CONDITIONS if version == 1 else CONDITIONS_V2)[12:]
    dx = events.filter(pl.col("code").str.starts_with("DX//")).with_columns(
        category=pl.col("code").str.slice(0, 7)
    )
    by_category = dx.group_by("category").len().rename({"len": "all"})
    purities = []
    for cond in conditions:
        own = dx.filter(pl.col("code").is_in(list(cond.dx_family)))
        own = own.group_by("category").len().join(by_category, on="category")
        if own.height:
            purities.append(float(own["len"].sum() / own["all"].sum()))
    return float(np.mean(purities))


def recency_ratio(history: pl.DataFrame, labeled: pl.DataFrame) -> dict[str, float]:
    """Admission share of visits whose latest inpatient stay began within 30 days before the
    arrival, and of those whose latest began more than 365 days before."""
    stays = (
        history.filter(pl.col("code") == "ADMIT//INPATIENT")
        .group_by("visit_id")
        .agg(((pl.col("arrival_time") - pl.col("time").max()).dt.total_days()).min().alias("d"))
    )
    joined = labeled.join(stays, on="visit_id", how="left")
    recent = joined.filter(pl.col("d") <= 30)["label"].mean()
    old = joined.filter(pl.col("d") > 365)["label"].mean()
    none = joined.filter(pl.col("d").is_null())["label"].mean()
    return {"admitted_stay_30d": recent, "admitted_stay_over_365d": old, "admitted_no_stay": none}


def creatinine_trend(history: pl.DataFrame, labeled: pl.DataFrame) -> dict[str, float]:
    """AUROC of the first and of the latest outpatient creatinine before the arrival, among
    labeled visits with at least two."""
    values = (
        history.filter(pl.col("code") == "LAB//CREATININE")
        .sort("time")
        .group_by("visit_id")
        .agg(
            pl.col("numeric_value").first().alias("first"),
            pl.col("numeric_value").last().alias("latest"),
            pl.len().alias("n"),
        )
        .filter(pl.col("n") >= 2)
        .join(labeled, on="visit_id")
    )
    y = values["label"].to_numpy()
    return {
        "creatinine_first_auroc": float(roc_auc_score(y, values["first"].to_numpy())),
        "creatinine_latest_auroc": float(roc_auc_score(y, values["latest"].to_numpy())),
        "visits_with_two_creatinine": values.height,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=100_000)
    parser.add_argument("--cohort-version", type=int, default=DEFAULT_COHORT_VERSION)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    cohort = generate_cohort(
        args.visits, labeled_frac=1.0, seed=args.seed, version=args.cohort_version
    )
    seconds = time.perf_counter() - start
    events = cohort.events
    per_patient_code = events.group_by("code").agg(pl.col("patient_id").n_unique().alias("p"))
    history = visit_events(cohort, "arrival_time")
    before_prediction = visit_events(cohort, "prediction_time")
    current = before_prediction.filter(pl.col("time") >= pl.col("arrival_time"))
    per_visit = before_prediction.group_by("visit_id").len()["len"]
    labels = cohort.labels.sort("visit_id")
    y = labels["label"].to_numpy()
    visit_ids = labels["visit_id"].to_numpy()

    patients = cohort.visits.sort("visit_id")["patient_id"].to_numpy()
    train = np.flatnonzero(np.random.default_rng(1).random(patients.max() + 1)[patients] < 0.7)
    test = np.setdiff1d(np.arange(len(visit_ids)), train)
    vocabulary = per_patient_code.filter(pl.col("p") >= 10)["code"].sort().to_list()
    x_triage = triage_features(cohort, current)
    x_history = code_counts(history, visit_ids, vocabulary)
    x_current = code_counts(current, visit_ids, vocabulary)
    esi = (
        current.filter(pl.col("code") == "TRIAGE//ESI")
        .group_by("visit_id")
        .agg(pl.col("numeric_value").first())
    )
    esi = labels.join(esi, on="visit_id", how="left").with_columns(
        pl.col("numeric_value").fill_null(3)
    )
    triage_scaled = sp.csr_matrix(StandardScaler().fit(x_triage[train]).transform(x_triage))
    figures = {
        "version": args.cohort_version,
        "visits": args.visits,
        "generate_seconds": round(seconds, 1),
        "admission_share": float(y.mean()),
        "distinct_codes": events["code"].n_unique(),
        "codes_in_under_10_patients_share": float((per_patient_code["p"] < 10).mean()),
        "events_per_patient_mean": events.height / events["patient_id"].n_unique(),
        "events_per_patient_median": float(events.group_by("patient_id").len()["len"].median()),
        "events_before_prediction_per_visit_median": float(per_visit.median()),
        "visits_over_256_events_share": float((per_visit > 256).sum() / args.visits),
        "visits_without_history_share": 1.0 - history["visit_id"].n_unique() / args.visits,
        "minor_condition_prefix_purity": prefix_purity(events, args.cohort_version),
        "esi_alone_auroc": float(roc_auc_score(y[test], -esi["numeric_value"].to_numpy()[test])),
        "triage_lr_auroc": fit_auroc(x_triage, y, train, test, scale=True),
        "history_lr_auroc": fit_auroc(x_history, y, train, test),
        "all_lr_auroc": fit_auroc(
            sp.hstack([triage_scaled, x_history, x_current]).tocsr(), y, train, test
        ),
        **recency_ratio(history, labels),
        **creatinine_trend(history, labels),
    }
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
