"""Does pretraining on unlabeled visits beat training on the labeled few? Test AUROC at label
budgets for the SSL encoder (full fine-tuning, linear probe), the same transformer from scratch,
and the counts baselines (logistic regression, gradient boosting), against the oracle.

Synthesizes a cohort, tokenizes it, pretrains the `small` encoder on every visit outside the
test split, then for each budget and seed: draws nested label subsets from train (and val's
proportional share, `finetuning.budget_ids`), fine-tunes / fits every model choosing on val
only, and scores the
whole labeled test split once with patient-level bootstrap CIs and paired differences
(SSL full fine-tuning minus each other model).

usage: python benchmarks/bench_label_efficiency.py --visits 60000 --budgets 1000 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from ehr_ssl.baselines import count_features, fit_counts_baseline
from ehr_ssl.baselines import predict_proba as counts_proba
from ehr_ssl.config import FinetuneConfig, TokenizeConfig, load_pretrain_config
from ehr_ssl.data.synthetic import generate_cohort, write_cohort
from ehr_ssl.evaluation import auroc, evaluate_predictions, paired_bootstrap_difference
from ehr_ssl.finetuning import budget_ids, finetune, labeled_split, predict_finetuned
from ehr_ssl.shards import read_split
from ehr_ssl.tokenizer import Tokenizer, tokenize_dataset
from ehr_ssl.train import pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=60_000)
    parser.add_argument("--labeled-frac", type=float, default=0.1)
    parser.add_argument("--budgets", default="1000")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=4, help="pretraining epochs")
    parser.add_argument("--pooling", choices=("cls", "mean"), help="encoder pooling [preset's]")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--work", type=Path, help="keep data, tokens and models here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-labels-"))
    started = time.perf_counter()
    write_cohort(
        generate_cohort(args.visits, labeled_frac=args.labeled_frac, seed=0),
        work / "data",
        overwrite=True,
    )
    tokens = work / "tokens"
    tokenize_dataset(work / "data", tokens, TokenizeConfig(), overwrite=True)
    encoder_dir = work / "pretrain" / "encoder"
    pretrain(
        tokens,
        work / "pretrain",
        load_pretrain_config(
            None,
            {"preset": "small", "train.epochs": args.epochs, "model.pooling": args.pooling},
        ),
    )
    pretrain_s = time.perf_counter() - started

    tokenizer = Tokenizer.load(tokens)
    sizes = {"vocab_size": tokenizer.vocab_size, "n_bins": tokenizer.config.n_bins}
    train = read_split(tokens, "train").filter(pl.col("labeled"))
    val = read_split(tokens, "val").filter(pl.col("labeled"))
    test = read_split(tokens, "test").filter(pl.col("labeled"))
    test_ds = labeled_split(tokens, "test")  # the same visits, in the same order as `test`
    assert test_ds.meta["visit_id"].equals(test["visit_id"])
    y, groups = test["label"].to_numpy(), test["patient_id"].to_numpy()
    oracle = test.join(pl.read_parquet(work / "data" / "oracle.parquet"), on="visit_id")
    x_test = count_features(test, **sizes)
    device = torch.device("cpu")

    results = []
    for budget in [int(b) for b in args.budgets.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            train_ids, val_ids = budget_ids(tokens, budget, seed=seed)
            tr = train.filter(pl.col("visit_id").is_in(train_ids.implode()))
            va = val.filter(pl.col("visit_id").is_in(val_ids.implode()))
            scores = {}
            for mode in ("full", "linear-probe", "scratch"):
                out = work / f"ft-{budget}-{seed}-{mode}"
                finetune(
                    tokens,
                    encoder_dir,
                    out,
                    FinetuneConfig(mode=mode, seed=seed),
                    train_ids=tr["visit_id"],
                    val_ids=va["visit_id"],
                )
                scores[f"ssl_{mode}" if mode != "scratch" else "scratch"] = predict_finetuned(
                    out, encoder_dir, test_ds, device
                )
            x_tr, x_va = count_features(tr, **sizes), count_features(va, **sizes)
            for kind in ("logistic", "gbm"):
                model, _ = fit_counts_baseline(
                    kind, x_tr, tr["label"].to_numpy(), x_va, va["label"].to_numpy(), seed=seed
                )
                scores[f"counts_{kind}"] = counts_proba(model, x_test)
            row = {"budget": budget, "seed": seed, "val_labels": va.height, "models": {}}
            for name, p in scores.items():
                row["models"][name] = evaluate_predictions(y, p, groups, n_boot=args.n_boot)
                if name != "ssl_full":
                    row["models"][name]["ssl_full_minus_this"] = paired_bootstrap_difference(
                        auroc, y, scores["ssl_full"], p, groups, n_boot=args.n_boot
                    )
            results.append(row)
            print(
                json.dumps(
                    {
                        "budget": budget,
                        "seed": seed,
                        **{k: round(v["auroc"], 4) for k, v in row["models"].items()},
                    }
                )
            )

    all_labels, _ = fit_counts_baseline(
        "logistic",
        count_features(train, **sizes),
        train["label"].to_numpy(),
        count_features(val, **sizes),
        val["label"].to_numpy(),
        seed=0,
    )
    summary = {
        "visits": args.visits,
        "pretraining_epochs": args.epochs,
        "pooling": args.pooling or "cls",
        "pretrain_seconds_including_synth_and_tokenize": round(pretrain_s),
        "test_labeled": test.height,
        "test_prevalence": float(y.mean()),
        "oracle_auroc": auroc(
            oracle["label"].to_numpy(), oracle["admission_probability"].to_numpy()
        ),
        "counts_logistic_all_train_labels": {
            "train_labels": train.height,
            "auroc": auroc(y, counts_proba(all_labels, x_test)),
        },
        "results": results,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
