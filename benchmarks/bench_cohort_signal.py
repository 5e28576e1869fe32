"""Where the synthetic cohort's signal lies: counts + logistic regression (the project's baseline,
selected on val) on the history alone, the current visit alone and both, with every train label,
and on both at label budgets. A realism check: in ED admission data the history predicts about
as well as triage and the two together better than either (Hong, Haimovich and Taylor, PLoS ONE
2018: history 0.86, triage 0.87, both 0.92 AUROC); and the budget curve shows how many labels a
model of the raw codes needs before more stop helping. At each budget the same model is also fit
with the patient's true latent state (frailty and the chronic conditions, which the generator
knows), appended to the counts or in place of the history's counts, and compared with counts
alone (paired patient bootstrap): a guide to what a representation of the history could add,
not a bound (the state enters under the same L2 penalty as the counts, one label subset).

usage: python benchmarks/bench_cohort_signal.py --visits 60000 --labeled-frac 0.3 \
           [--budgets 100,300,1000,all] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from cohort_workdir import bench_stamp, write_or_reuse

from ehr_ssl.config import TokenizeConfig
from ehr_ssl.data.synthetic import DEFAULT_COHORT_VERSION, generate_cohort
from ehr_ssl.evaluation.baselines import count_features, fit_counts_baseline, predict_proba
from ehr_ssl.evaluation.metrics import auroc, bootstrap_ci, paired_bootstrap_difference
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenize import tokenize_dataset
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import SEGMENT_CURRENT, SEGMENT_HISTORY, TOKEN_COLUMNS
from ehr_ssl.training.budgets import budget_split


def without_segment(frame: pl.DataFrame, segment: int) -> pl.DataFrame:
    """The visits' tokens minus those of one segment (that segment's separator goes too; the
    statics stay), with `length` recomputed."""
    keep = pl.col("segment_ids").list.eval(pl.element() != segment)
    return frame.with_columns(
        [pl.col(c).list.gather(keep.list.eval(pl.element().arg_true())) for c in TOKEN_COLUMNS]
    ).with_columns(length=pl.col("input_ids").list.len())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=60_000)
    parser.add_argument(
        "--cohort-version",
        type=int,
        default=DEFAULT_COHORT_VERSION,
        help="synthetic cohort version (1: the figures recorded before 2026-12-04 (fifth session))",
    )
    parser.add_argument("--labeled-frac", type=float, default=0.3)
    parser.add_argument("--budgets", default="100,300,1000,all")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--work", type=Path, help="keep data and tokens here")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-signal-"))
    # The latent state is regenerated each time, so the files must hold the same cohort.
    cohort = generate_cohort(
        args.visits, labeled_frac=args.labeled_frac, seed=0, version=args.cohort_version
    )
    stamp = bench_stamp(cohort, args)
    write_or_reuse(cohort, work, stamp)
    if not (work / "tokens").exists():
        tokenize_dataset(work / "data", work / "tokens", TokenizeConfig())
    tokenizer = Tokenizer.load(work / "tokens")
    sizes = {"vocab_size": tokenizer.vocab_size, "n_bins": tokenizer.config.n_bins}
    train, val, test = (
        read_split(work / "tokens", s).filter(pl.col("labeled")) for s in ("train", "val", "test")
    )
    y_test = test["label"].to_numpy()
    patients = test["patient_id"].to_numpy()
    boot = {"n_boot": args.n_boot, "seed": 0}

    def latent_state(frame: pl.DataFrame) -> np.ndarray:
        """Shape: (rows of frame, 1 + conditions): frailty and the condition indicators."""
        state = frame.select("patient_id").join(
            cohort.latent, on="patient_id", how="left", validate="m:1", maintain_order="left"
        )
        assert state.null_count().sum_horizontal().item() == 0
        return state.drop("patient_id").to_numpy().astype(np.float64)

    # Feature sets: token counts of (some of) each visit, optionally with the true latent state.
    variants = {
        "history + statics": (SEGMENT_CURRENT, False),
        "current visit + statics": (SEGMENT_HISTORY, False),
        "counts": (None, False),
        "counts + true latent state": (None, True),
        "current visit + statics + true latent state": (SEGMENT_HISTORY, True),
    }

    def features(frame: pl.DataFrame, variant: str) -> sp.csr_matrix:
        drop, with_latent = variants[variant]
        counts = count_features(frame if drop is None else without_segment(frame, drop), **sizes)
        return sp.hstack([counts, latent_state(frame)]).tocsr() if with_latent else counts

    def fit_and_score(tr: pl.DataFrame, va: pl.DataFrame, variant: str) -> tuple[dict, np.ndarray]:
        model, record = fit_counts_baseline(
            "logistic",
            features(tr, variant),
            tr["label"].to_numpy(),
            features(va, variant),
            va["label"].to_numpy(),
            seed=0,
        )
        scores = predict_proba(model, features(test, variant))
        low, high = bootstrap_ci(auroc, y_test, scores, patients, **boot)
        summary = {
            "train_labels": tr.height,
            "val_labels": va.height,
            "C": record["chosen"]["C"],
            "test_auroc": round(float(auroc(y_test, scores)), 4),
            "ci95": [round(low, 4), round(high, 4)],
        }
        return summary, scores

    oracle = pl.read_parquet(work / "data" / "oracle.parquet")
    truth = test.join(oracle, on="visit_id", how="left", maintain_order="left")
    result = {
        "visits": args.visits,
        "test_labels": test.height,
        "test_prevalence": round(float(y_test.mean()), 4),
        "oracle_auroc": round(float(auroc(y_test, truth["admission_probability"])), 4),
        "all_labels": {},
        "budgets": {},
    }
    for name in ("history + statics", "current visit + statics"):
        result["all_labels"][name] = fit_and_score(train, val, name)[0]
    for budget in args.budgets.split(","):
        n = None if budget == "all" else int(budget)
        # holdout: these probes are judged on the val split (the budget counts both parts)
        train_ids, val_ids = budget_split(
            train, val, n, seed=0, selection="holdout", cv_max_labels=0
        )
        tr = train.filter(pl.col("visit_id").is_in(train_ids.implode()))
        va = val.filter(pl.col("visit_id").is_in(val_ids.implode()))
        cells, counts_scores = {}, None
        for variant in (
            "counts",
            "counts + true latent state",
            "current visit + statics + true latent state",
        ):
            cells[variant], scores = fit_and_score(tr, va, variant)
            if variant == "counts":
                counts_scores = scores
                continue
            diff = paired_bootstrap_difference(
                auroc, y_test, scores, counts_scores, patients, **boot
            )
            cells[variant]["minus_counts"] = {
                "difference": round(diff["difference"], 4),
                "ci95": [round(v, 4) for v in diff["ci95"]],
                "p_value": round(diff["p_value"], 4),
            }
        result["budgets"][budget] = cells
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
