"""Where the synthetic cohort's signal lies: counts + logistic regression (the project's baseline,
selected on val) on the history alone, the current visit alone and both, with every train label,
and on both at label budgets. A realism check: in ED admission data the history predicts about
as well as triage and the two together better than either (Hong, Haimovich and Taylor, PLoS ONE
2018: history 0.86, triage 0.87, both 0.92 AUROC); and the budget curve shows how many labels a
model of the raw codes needs before more stop helping. At each budget the same model is also fit
with the patient's true latent state (frailty and chronic conditions, which the generator knows)
appended to the counts: the most that a perfect representation of the history could add to it.

usage: python benchmarks/bench_cohort_signal.py --visits 60000 --labeled-frac 0.3 \
           [--budgets 100,300,1000,all] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import polars as pl
import scipy.sparse as sp

from ehr_ssl.baselines import count_features, fit_counts_baseline, predict_proba
from ehr_ssl.config import TokenizeConfig
from ehr_ssl.data.synthetic import generate_cohort, write_cohort
from ehr_ssl.evaluation import auroc, bootstrap_ci
from ehr_ssl.finetuning import budget_split
from ehr_ssl.shards import read_split
from ehr_ssl.tokenizer import SEGMENT_CURRENT, SEGMENT_HISTORY, Tokenizer, tokenize_dataset

LIST_COLUMNS = ("input_ids", "value_bins", "time_deltas", "segment_ids")


def without_segment(frame: pl.DataFrame, segment: int) -> pl.DataFrame:
    """The visits' tokens minus those of one segment (statics and separators stay)."""
    keep = pl.col("segment_ids").list.eval(pl.element() != segment)
    return frame.with_columns(
        [pl.col(c).list.gather(keep.list.eval(pl.element().arg_true())) for c in LIST_COLUMNS]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=60_000)
    parser.add_argument("--labeled-frac", type=float, default=0.3)
    parser.add_argument("--budgets", default="100,300,1000,all")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--work", type=Path, help="keep data and tokens here")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-signal-"))
    cohort = generate_cohort(args.visits, labeled_frac=args.labeled_frac, seed=0)
    if not (work / "data" / "visits.parquet").exists():
        write_cohort(cohort, work / "data")
    if not (work / "tokens" / "manifest.json").exists():
        tokenize_dataset(work / "data", work / "tokens", TokenizeConfig())
    tokenizer = Tokenizer.load(work / "tokens")
    sizes = {"vocab_size": tokenizer.vocab_size, "n_bins": tokenizer.config.n_bins}
    train, val, test = (
        read_split(work / "tokens", s).filter(pl.col("labeled")) for s in ("train", "val", "test")
    )
    y_test = test["label"].to_numpy()
    patients = test["patient_id"].to_numpy()

    def features(frame: pl.DataFrame, with_latent: bool) -> sp.csr_matrix:
        counts = count_features(frame, **sizes)
        if not with_latent:
            return counts
        state = frame.select("patient_id").join(cohort.latent, on="patient_id", how="left")
        return sp.hstack([counts, state.drop("patient_id").to_numpy().astype(float)]).tocsr()

    def fit_and_score(
        tr: pl.DataFrame, va: pl.DataFrame, te: pl.DataFrame, with_latent: bool = False
    ) -> dict:
        model, record = fit_counts_baseline(
            "logistic",
            features(tr, with_latent),
            tr["label"].to_numpy(),
            features(va, with_latent),
            va["label"].to_numpy(),
            seed=0,
        )
        scores = predict_proba(model, features(te, with_latent))
        low, high = bootstrap_ci(auroc, y_test, scores, patients, n_boot=args.n_boot, seed=0)
        return {
            "train_labels": tr.height,
            "val_labels": va.height,
            "C": record["chosen"]["C"],
            "test_auroc": round(float(auroc(y_test, scores)), 4),
            "ci95": [round(low, 4), round(high, 4)],
        }

    result = {
        "visits": args.visits,
        "test_labels": test.height,
        "test_prevalence": round(float(y_test.mean()), 4),
        "all_labels": {},
        "budgets": {},
    }
    oracle = pl.read_parquet(work / "data" / "oracle.parquet")
    truth = test.join(oracle, on="visit_id", how="left")["admission_probability"].to_numpy()
    result["oracle_auroc"] = round(float(auroc(y_test, truth)), 4)
    for name, drop in (
        ("history + statics", SEGMENT_CURRENT),
        ("current + statics", SEGMENT_HISTORY),
    ):
        frames = (without_segment(f, drop) for f in (train, val, test))
        result["all_labels"][name] = fit_and_score(*frames)
    for budget in args.budgets.split(","):
        n = None if budget == "all" else int(budget)
        train_ids, val_ids = budget_split(train, val, n, seed=0)
        tr = train.filter(pl.col("visit_id").is_in(train_ids.implode()))
        va = val.filter(pl.col("visit_id").is_in(val_ids.implode()))
        result["budgets"][budget] = {
            "counts": fit_and_score(tr, va, test),
            "counts + true latent state": fit_and_score(tr, va, test, with_latent=True),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
