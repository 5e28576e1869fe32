"""One model of two pipeline runs on the same test visits, paired: run A minus run B.

Two runs of `bench_label_efficiency.py` (or `ehr-ssl run`) on the same cohort and split differ
in one setting (a [model] switch, say); each wrote predictions.parquet with every model's test
scores per budget and label subset. This prints, per budget, the seed-mean test AUROC of the
model in each run and their difference with the paired patient-bootstrap interval
(`paired_bootstrap_difference`: the same resampled test patients for both runs).

usage: python benchmarks/bench_compare_runs.py RUN_A RUN_B [--models ssl,scratch] [--n-boot 500]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from ehr_ssl.evaluation.metrics import auroc, paired_bootstrap_difference

PREDICTIONS = "predictions.parquet"


def seed_scores(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, patients and scores (one row per seed) of one model and budget, by visit id.
    Shape: (n,), (n,), (S, n)."""
    wide = frame.pivot(on="seed", index=["visit_id", "patient_id", "label"], values="score")
    wide = wide.sort("visit_id")
    seeds = [c for c in wide.columns if c not in ("visit_id", "patient_id", "label")]
    return (
        wide["label"].to_numpy(),
        wide["patient_id"].to_numpy(),
        wide.select(sorted(seeds)).to_numpy().T,
    )


def compare(a: pl.DataFrame, b: pl.DataFrame, model: str, budget: str, n_boot: int) -> dict:
    """Run A's and run B's seed-mean AUROC of `model` at `budget`, and A minus B, paired."""
    y_a, groups, p_a = seed_scores(a.filter(model=model, budget=budget))
    y_b, groups_b, p_b = seed_scores(b.filter(model=model, budget=budget))
    if not (np.array_equal(y_a, y_b) and np.array_equal(groups, groups_b)):
        raise SystemExit(f"{model} at {budget}: the runs scored other test visits or labels")
    paired = paired_bootstrap_difference(auroc, y_a, p_a, p_b, groups, n_boot=n_boot)
    return {
        "a": float(np.mean([auroc(y_a, p) for p in p_a])),
        "b": float(np.mean([auroc(y_b, p) for p in p_b])),
        **paired,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--models", default="ssl,scratch")
    parser.add_argument("--n-boot", type=int, default=500)
    args = parser.parse_args()
    a, b = (pl.read_parquet(run / PREDICTIONS).filter(split="test")
            for run in (args.run_a, args.run_b))  # fmt: skip
    budgets = sorted(set(a["budget"]) & set(b["budget"]), key=lambda s: (s == "all", s.zfill(9)))
    print("| model | budget | A | B | A - B (95% CI) | p |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for budget in budgets:
            r = compare(a, b, model, budget, args.n_boot)
            low, high = r["ci95"]
            difference = f"{r['difference']:+.3f} ({low:+.3f}, {high:+.3f})"
            print(f"| {model} | {budget} | {r['a']:.3f} | {r['b']:.3f} | {difference} | "
                  f"{r['p_value']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
