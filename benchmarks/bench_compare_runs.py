"""One model of two pipeline runs on the same test visits, paired: run A minus run B.

Two runs of `bench_label_efficiency.py` (or `ehr-ssl run`) on the same cohort and split differ
in one setting (a [model] switch, say); each wrote predictions.parquet with every model's test
scores per budget and label subset. This prints, per budget, the seed-mean test AUROC of the
model in each run and their difference with the paired patient-bootstrap interval (the same
resampled test patients for both runs). A side may be several runs that differ only in the
pretraining seed (RUN,RUN,...): its figure is then the mean over them, and the interval the
Multi-Bootstrap's (`multi_bootstrap_difference`: each side's runs resampled too), since one
pretraining moves the few-label figures by as much as most settings do.

A run may also be named by a predictions file (bench_ablation keeps each readout's as
RUN/predictions-READOUT.parquet). `--model-b` sets side B's model, one for every model of
`--models` (SSL under one readout against the scratch transformer of another run, say).

usage: python benchmarks/bench_compare_runs.py RUN_A[,RUN_A2,...] RUN_B[,RUN_B2,...] \
           [--models ssl,scratch] [--model-b scratch] [--n-boot 500] [--cells]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

from ehr_ssl.evaluation.metrics import auroc, multi_bootstrap_difference

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


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2 (as the pipeline's commands)."""
    print(f"bench_compare_runs: {message}", file=sys.stderr)
    sys.exit(2)


def read_predictions(run: Path) -> pl.DataFrame:
    """The test rows of a run's predictions.parquet, or of a predictions file named directly;
    a missing one ends the script with one line."""
    path = run if run.suffix == ".parquet" else run / PREDICTIONS
    if not path.is_file():
        fail(f"{path}: no predictions file")
    return pl.read_parquet(path).filter(split="test")


def compare(a: list[pl.DataFrame], b: list[pl.DataFrame], model: str, budget: str,
            n_boot: int, model_b: str | None = None) -> dict:  # fmt: skip
    """Side A's mean AUROC of `model` and side B's of `model_b` (`model` when None) at
    `budget` (over runs and seeds), and A minus B, paired; each side a list of runs."""
    sides = [[seed_scores(run.filter(model=name, budget=budget)) for run in side]
             for side, name in ((a, model), (b, model_b or model))]  # fmt: skip
    y, groups, _ = sides[0][0]
    for side in sides:
        for y_run, groups_run, _ in side:
            if not (np.array_equal(y, y_run) and np.array_equal(groups, groups_run)):
                fail(f"{model} at {budget}: the runs scored other test visits or labels")
    runs_a, runs_b = (np.stack([scores for *_, scores in side]) for side in sides)
    paired = multi_bootstrap_difference(auroc, y, runs_a, runs_b, groups, n_boot=n_boot)
    # cells: each run's AUROC per label subset (seed), the figures the means average
    cells_a, cells_b = ([[auroc(y, p) for p in run] for run in runs] for runs in (runs_a, runs_b))
    return {"a": float(np.mean(cells_a)), "b": float(np.mean(cells_b)),
            "cells_a": cells_a, "cells_b": cells_b, **paired}  # fmt: skip


def format_cells(cells: list[list[float]]) -> str:
    """Each run's per-seed AUROCs: seeds joined by " / ", runs by " ; "."""
    return " ; ".join(" / ".join(f"{v:.3f}" for v in run) for run in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", help="a run directory, or several (comma-separated)")
    parser.add_argument("run_b", help="a run directory, or several (comma-separated)")
    parser.add_argument("--models", default="ssl,scratch")
    parser.add_argument("--model-b", help="side B's model for every model of --models")
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--cells", action="store_true",
                        help="also print each run's AUROC per label subset (seed)")  # fmt: skip
    args = parser.parse_args()
    a, b = ([read_predictions(Path(run)) for run in side.split(",")]
            for side in (args.run_a, args.run_b))  # fmt: skip
    budgets = set.intersection(*(set(run["budget"]) for run in a + b))
    budgets = sorted(budgets, key=lambda s: (s == "all", s.zfill(9)))
    model_b = f" (B: {args.model_b})" if args.model_b else ""
    print(f"| model{model_b} | budget | A | B | A - B (95% CI) | p |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for budget in budgets:
            r = compare(a, b, model, budget, args.n_boot, args.model_b)
            low, high = r["ci95"]
            difference = f"{r['difference']:+.3f} ({low:+.3f}, {high:+.3f})"
            print(f"| {model} | {budget} | {r['a']:.3f} | {r['b']:.3f} | {difference} | "
                  f"{r['p_value']:.3f} |")  # fmt: skip
            if args.cells:
                print(f"| {model} per subset | {budget} | {format_cells(r['cells_a'])} | "
                      f"{format_cells(r['cells_b'])} | | |")  # fmt: skip


if __name__ == "__main__":
    main()
