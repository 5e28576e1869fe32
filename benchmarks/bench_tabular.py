"""The counts and tabular baselines side by side on a tokens directory: test AUROC and fit time
(selection included) at label budgets and seeds, each model selected under the run's few-label
protocol (`ehr_ssl.evaluation.scoring`), the test split scored once per model.

usage: python benchmarks/bench_tabular.py TOKENS_DIR [--budgets 100,300,1000] [--seeds 0,1,2]
           [--models counts_logistic,counts_gbm,tabular_logistic,tabular_gbm] [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from ehr_ssl.config import COUNTS, TABULAR, FinetuneConfig
from ehr_ssl.evaluation.scoring import (
    draw_label_budget,
    read_labeled,
    read_test_split,
    score_counts,
    score_tabular,
)

MODELS = [*COUNTS, *TABULAR]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokens", type=Path)
    parser.add_argument("--budgets", default="100,300,1000")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", type=Path, help="append one JSON line per fit here")
    args = parser.parse_args()

    start = time.perf_counter()
    test = read_test_split(args.tokens, shortage="{n} labeled test visits", file=args.tokens)
    train, val = read_labeled(args.tokens, "train"), read_labeled(args.tokens, "val")
    width = f"{test.tabular.shape[1]} tabular, {test.counts.shape[1]} counts columns"
    print(f"read + test features {time.perf_counter() - start:.1f} s, {width}")
    y_test = test.rows["label"].to_numpy()
    results = []
    for budget_name in args.budgets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            budget = draw_label_budget(train, val, budget_name, seed=seed, config=FinetuneConfig())
            for model in args.models.split(","):
                score = score_counts if model in COUNTS else score_tabular
                start = time.perf_counter()
                scores, choice = score(model, test, budget)
                row = {"budget": budget_name, "seed": seed, "model": model,
                       "auroc": float(roc_auc_score(y_test, scores)),
                       "fit_seconds": time.perf_counter() - start, "chosen": choice["chosen"],
                       "protocol": choice["selection"]["protocol"]}  # fmt: skip
                results.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    with args.out.open("a") as file:
                        file.write(json.dumps(row) + "\n")
    summarize(results)


def summarize(results: list[dict]) -> None:
    """A markdown table: mean test AUROC (min-max over seeds) and mean fit seconds."""
    print("| budget | model | test AUROC, mean (min-max) | seeds | fit s, mean |")
    print("|---|---|---|---|---|")
    keys = dict.fromkeys((r["budget"], r["model"]) for r in results)
    for budget, model in keys:
        rows = [r for r in results if (r["budget"], r["model"]) == (budget, model)]
        auroc = np.array([r["auroc"] for r in rows])
        seconds = np.mean([r["fit_seconds"] for r in rows])
        print(f"| {budget} | {model} | {auroc.mean():.3f} ({auroc.min():.3f}-{auroc.max():.3f}) "
              f"| {len(rows)} | {seconds:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
