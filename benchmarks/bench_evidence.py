"""The evidence's cost: the log-evidence bound that chooses a logistic model's C
(`selection.log_evidence_bound`), at every C of the grid in the order selection reads them
(each warm-started from the last), on the rows of a label budget drawn as the pipeline draws
it, scaled as the counts or tabular logistic regression reads them: per C the bound, its EM
steps and seconds.

usage: python benchmarks/bench_evidence.py TOKENS_DIR [--budget 1000] [--seed 0]
           [--features counts|tabular]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import scipy.sparse as sp

from ehr_ssl.config import FinetuneConfig
from ehr_ssl.evaluation.baselines import _make_pipeline, count_features
from ehr_ssl.evaluation.scoring import draw_label_budget, read_labeled
from ehr_ssl.evaluation.tabular import TabularSpec
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.training.selection import C_GRID, RowCovariance, log_evidence_bound


class CountedRows(RowCovariance):
    """A `RowCovariance` that counts the EM steps read from it."""

    steps = 0

    def posterior_moments(self, c, linear):
        moments = super().posterior_moments(c, linear)

        def counted(curvature):
            self.steps += 1
            return moments(curvature)

        return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokens", type=Path)
    parser.add_argument("--budget", default="1000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", choices=("counts", "tabular"), default="counts")
    args = parser.parse_args()

    train, val = read_labeled(args.tokens, "train"), read_labeled(args.tokens, "val")
    budget = draw_label_budget(train, val, args.budget, seed=args.seed, config=FinetuneConfig())
    if args.features == "counts":
        tokenizer = Tokenizer.load(args.tokens)
        sizes = {"vocab_size": tokenizer.vocab_size, "n_bins": tokenizer.config.n_bins}
        x = count_features(budget.train, **sizes)
    else:
        x = TabularSpec.from_tokens(args.tokens).features(budget.train)
    y = budget.train["label"].to_numpy()
    scaling = _make_pipeline("logistic", {}, seed=0)[:-1]  # the logistic models' own steps
    rows = sp.csr_matrix(scaling.fit_transform(x, y))
    start = time.perf_counter()
    counted = CountedRows(rows)
    print(f"{rows.shape[0]} labels x {rows.shape[1]} columns; "
          f"the rows' covariance {time.perf_counter() - start:.1f} s")  # fmt: skip
    print("| C | log evidence bound | EM steps | seconds |")
    print("|---|---|---|---|")
    xi, total, total_steps = None, 0.0, 0
    for c in C_GRID:
        counted.steps, start = 0, time.perf_counter()
        value, xi = log_evidence_bound(counted, y, c, start=xi)
        seconds = time.perf_counter() - start
        total, total_steps = total + seconds, total_steps + counted.steps
        print(f"| {c:.4g} | {value:.3f} | {counted.steps} | {seconds:.1f} |")
    print(f"| every C | | {total_steps} | {total:.1f} |")


if __name__ == "__main__":
    main()
