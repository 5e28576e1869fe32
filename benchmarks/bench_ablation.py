"""The ablation of issue 19: which pretraining views, masking unit, objectives and readout make
the SSL model win with few labels? Every cell is the whole pipeline (`run_pipeline`, the same
few-label selection protocol for every model), on one synthetic cohort.

Pretraining variants: both objectives x views x masking unit; the masked objective alone x
masking unit; the contrastive objective alone x views; with "masked+bag" / "both+bag" the bag of
masked codes predicted from the visit vector (`objective.bag_weight`) added; with
"masked+forecast" (the default since cohort version 2) / "both+forecast" the next codes
forecast from a prefix of the visit (`objective.forecast_weight`) added, and "forecast" that
term alone. Each variant is
pretrained once (in WORK/run-<variant>) and fine-tuned under each readout (the readout is a
fine-tuning setting): the first readout in WORK/run-<variant>, each other one in
WORK/run-<variant>-<readout>, which starts as a copy of the first's tokens and pretraining, so
a rerun in place refits nothing under any readout. The baselines (scratch transformer, counts
logistic regression and GBM, tabular logistic regression) do not depend on pretraining: they
are trained once per readout, in the first variant's run, and every variant's SSL predictions
are compared with them on the same test visits, budgets and seeds (paired differences of seed
means, patient bootstrap). With `--pretrain-seeds 0,1,2` each variant is pretrained once per
seed (`train.seed`; WORK/run-<variant> for seed 0, WORK/run-<variant>-seed<P> for the others)
and its SSL rows are the mean over pretraining seeds and label subsets: one pretraining moves
the few-label figures by about as much as the variants differ (benchmarks/README.md,
"Pretraining seeds"). The baselines' label subsets are repeated once per pretraining seed, so
each difference is that of the two means; its interval is the Multi-Bootstrap's (MultiBERTs:
test patients and pretraining seeds both resampled).

usage: python benchmarks/bench_ablation.py --visits 20000 --labeled-frac 0.3 --budgets 100,300 \
           --seeds 0,1,2 --epochs 3 [--views augment,disjoint,patient] \
           [--mask-units token,encounter] [--objectives both,masked,contrastive] \
           [--readouts pooled,segments] [--work DIR] [--preset small] [--only NAME,...] \
           [--pretrain-seeds 0,1,2]
Prints one Markdown table and writes WORK/ablation.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from bench_compare_runs import seed_scores
from cohort_workdir import bench_stamp, write_or_reuse

from ehr_ssl.config import load_pipeline_config
from ehr_ssl.data.readers import read_oracle
from ehr_ssl.data.synthetic import DEFAULT_COHORT_VERSION, generate_cohort
from ehr_ssl.evaluation.metrics import auroc, multi_bootstrap_difference
from ehr_ssl.evaluation.report import build_report
from ehr_ssl.layout import OUTPUT_MARKER_FILE, PREDICTIONS_FILE, STAGES_FILE, RunLayout
from ehr_ssl.pipeline import run_pipeline

SSL_MODELS = ["ssl", "ssl_linear_probe", "ssl_plus_counts"]
BASELINES = ["scratch", "counts_logistic", "counts_gbm", "tabular_logistic"]
# Label subset s of pretraining seed p is keyed p * SEED_STRIDE + s when the seeds are pooled.
SEED_STRIDE = 1_000_000
# objective name -> (masked_weight, contrastive_weight, bag_weight, forecast_weight)
WEIGHTS = {
    "both": (1.0, 1.0, 0.0, 0.0),
    "masked": (1.0, 0.0, 0.0, 0.0),
    "contrastive": (0.0, 1.0, 0.0, 0.0),
    "masked+bag": (1.0, 0.0, 1.0, 0.0),
    "both+bag": (1.0, 1.0, 1.0, 0.0),
    "masked+forecast": (1.0, 0.0, 0.0, 1.0),
    "both+forecast": (1.0, 1.0, 0.0, 1.0),
    "forecast": (0.0, 0.0, 0.0, 1.0),
}


def variants(objectives: list[str], views: list[str], mask_units: list[str]) -> list[dict]:
    """The pretraining variants: a name and its objective settings."""
    out = []
    for objective in objectives:
        masked, contrastive, bag, forecast = WEIGHTS[objective]
        for view in views if contrastive else ["-"]:
            for unit in mask_units if masked or bag else ["-"]:
                settings = {"objective.masked_weight": masked,
                            "objective.contrastive_weight": contrastive,
                            "objective.bag_weight": bag,
                            "objective.forecast_weight": forecast}  # fmt: skip
                if view != "-":
                    settings["objective.contrastive_views"] = view
                if unit != "-":
                    settings["objective.mask_unit"] = unit
                name = f"{objective}-{view}-{unit}"
                out.append({"name": name, "objective": objective, "views": view,
                            "mask_unit": unit, "settings": settings})  # fmt: skip
    return out


def readout_run_dir(base: Path, readout: str, first_readout: str) -> Path:
    """The run directory of one readout: `base` for the first, else `base`-<readout>, made (once)
    from `base`'s tokens and pretraining with their stage records. One directory per readout keeps
    each readout's fine-tunings: in one shared directory every readout's run would refit the
    models the other's run replaced."""
    if readout == first_readout:
        return base
    run_dir = base.with_name(f"{base.name}-{readout}")
    if run_dir.exists():
        return run_dir
    source, staging = RunLayout(base), RunLayout(base.with_name(f".{run_dir.name}.partial"))
    shutil.rmtree(staging.root, ignore_errors=True)
    for part in ("tokens", "pretrain"):
        shutil.copytree(getattr(source, part), getattr(staging, part))
    stages = json.loads(source.stages.read_text())
    shared = {name: stages[name] for name in ("tokenize", "pretrain")}
    (staging.root / STAGES_FILE).write_text(json.dumps(shared, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(base / OUTPUT_MARKER_FILE, staging.root / OUTPUT_MARKER_FILE)
    staging.root.rename(run_dir)  # complete or absent
    return run_dir


def run_cell(args, data: Path, run_dir: Path, variant: dict, readout: str, models: list[str],
             pretrain_seed: int | None = None):  # fmt: skip
    """One pipeline run (pretraining reused when done); returns its test predictions."""
    budgets = args.budgets.split(",")
    config = load_pipeline_config(
        args.config,
        {
            "preset": args.preset,
            "train.epochs": args.epochs,
            "finetune.readout": readout,
            "finetune.cv_repeats": args.cv_repeats,
            "evaluate.label_budget": budgets[0],
            "evaluate.label_budgets": budgets[1:],
            "evaluate.seeds": [int(s) for s in args.seeds.split(",")],
            "evaluate.models": models,
            "evaluate.n_boot": args.n_boot,
            **variant["settings"],
        }
        | ({} if pretrain_seed is None else {"train.seed": pretrain_seed}),
    )
    started = time.perf_counter()
    run_pipeline(data, run_dir, config, device=args.device)
    print(f"  {variant['name']} / {readout} / pretraining seed {pretrain_seed}: "
          f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    kept = run_dir / f"predictions-{readout}.parquet"
    shutil.copyfile(run_dir / PREDICTIONS_FILE, kept)
    return pl.read_parquet(kept)


def compare(ssl_parts: list[pl.DataFrame], baselines: pl.DataFrame, oracle, n_boot: int,
            main: str) -> dict:  # fmt: skip
    """Every budget's seed-mean AUROC of each model, and SSL minus each (paired). `ssl_parts`:
    the SSL predictions of each pretraining seed; label subset s of pretraining seed p is
    scored as seed p * SEED_STRIDE + s, and every baseline subset once under each such key."""
    if max(part["seed"].max() for part in ssl_parts) >= SEED_STRIDE:
        raise SystemExit(f"label subset seeds must be below {SEED_STRIDE}")
    baselines = baselines.filter(pl.col("model").is_in(BASELINES))
    shifted = [
        frame.with_columns(pl.col("seed") + p * SEED_STRIDE)
        for p, part in enumerate(ssl_parts)
        for frame in (part, baselines)
    ]
    report = build_report(pl.concat(shifted), main_budget=main, oracle=oracle, n_boot=n_boot)
    curve = {
        entry["budget"]: {
            name: {
                "mean": cell["mean"],
                "ci95": cell["ci95"],
                "ssl_minus_this": cell.get("reference_minus_this"),
            }  # fmt: skip
            for name, cell in entry["models"].items()
        }
        for entry in report["label_efficiency"]
    }
    for budget, models in curve.items():  # the spread a single pretraining would show
        models["ssl"]["per_pretraining_seed"] = [_seed_mean(part, budget) for part in ssl_parts]
        if len(ssl_parts) < 2:
            continue
        for name in BASELINES:  # intervals that also resample the pretrainings
            if name in models:
                models[name]["ssl_minus_this_patients_only"] = models[name]["ssl_minus_this"]
                models[name]["ssl_minus_this"] = _multi_difference(
                    ssl_parts, baselines, budget, name, n_boot
                )
    return curve


def _multi_difference(ssl_parts, baselines: pl.DataFrame, budget: str, name: str, n_boot: int):
    """SSL (one set of label subsets per pretraining seed) minus baseline `name` at `budget`,
    by the Multi-Bootstrap (`multi_bootstrap_difference`)."""
    runs = [seed_scores(part.filter(model="ssl", budget=budget)) for part in ssl_parts]
    y, groups, base = seed_scores(baselines.filter(model=name, budget=budget))
    if any(not (np.array_equal(run_y, y) and np.array_equal(run_groups, groups))
           for run_y, run_groups, _ in runs):  # fmt: skip
        raise SystemExit(f"{budget}: the pretraining seeds scored other test visits")
    stacked = np.stack([scores for *_, scores in runs])  # (P, S, n)
    return multi_bootstrap_difference(auroc, y, stacked, base, groups, n_boot=n_boot)


def _seed_mean(ssl: pl.DataFrame, budget: str) -> float:
    """The SSL model's test AUROC at `budget`, averaged over label subsets."""
    frame = ssl.filter(model="ssl", budget=budget)
    return float(np.mean([auroc(part["label"].to_numpy(), part["score"].to_numpy())
                          for part in frame.partition_by("seed")]))  # fmt: skip


def table(results: list[dict], budgets: list[str]) -> str:
    """One row per variant and readout: SSL (and, pretrained with several seeds, each seed's
    mean), its probe and the hybrid per budget, and SSL minus scratch, counts logistic and
    tabular logistic (paired, 95% CI)."""
    header = ["objectives", "views", "mask unit", "readout"]
    for budget in budgets:
        header += [f"ssl@{budget}", f"probe@{budget}", f"hybrid@{budget}",
                   f"ssl-scratch@{budget}", f"ssl-countsLR@{budget}",
                   f"ssl-tabularLR@{budget}"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r["objective"], r["views"], r["mask_unit"], r["readout"]]
        for budget in budgets:
            models = r["curve"][budget]
            cells += [f"{models[m]['mean']:.3f}" for m in SSL_MODELS]
            per_seed = models["ssl"].get("per_pretraining_seed", [])
            if len(per_seed) > 1:  # the SSL cell also shows each pretraining's own mean
                cells[-3] += " (" + " / ".join(f"{m:.3f}" for m in per_seed) + ")"
            for other in ("scratch", "counts_logistic", "tabular_logistic"):
                cells.append(_difference(models.get(other)))
        lines.append("| " + " | ".join(cells) + " |")
    baseline = results[0]["curve"]
    lines.append("")
    for budget in budgets:
        means = ", ".join(
            f"{m} {baseline[budget][m]['mean']:.3f}" for m in BASELINES if m in baseline[budget]
        )
        lines.append(f"Baselines at {budget} labels ({results[0]['readout']} readout): {means}.")
    if len(results[0].get("pretrain_seeds", [])) > 1:
        lines.append("SSL: the mean over pretraining seeds (each seed's own in brackets); the "
                     "differences' intervals by the Multi-Bootstrap (test patients and "
                     "pretraining seeds resampled).")  # fmt: skip
    return "\n".join(lines)


def _difference(model: dict | None) -> str:
    """SSL minus a baseline with its interval; "-" for a baseline the first run did not train
    (a work directory from before tabular logistic joined the baselines)."""
    if model is None:
        return "-"
    diff = model["ssl_minus_this"]
    low, high = diff["ci95"]
    return f"{diff['difference']:+.3f} ({low:+.3f}, {high:+.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=20_000)
    parser.add_argument(
        "--cohort-version",
        type=int,
        default=DEFAULT_COHORT_VERSION,
        help="synthetic cohort version (1: the figures recorded before 2026-12-04 (fifth session))",
    )
    parser.add_argument("--labeled-frac", type=float, default=0.3)
    parser.add_argument("--budgets", default="100,300")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3, help="pretraining epochs")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--config", type=Path, help="pipeline TOML; the flags win over it")
    parser.add_argument("--views", default="augment,disjoint,patient")
    parser.add_argument("--mask-units", default="token,encounter")
    parser.add_argument("--objectives", default="both,masked,contrastive")
    parser.add_argument("--readouts", default="pooled,segments")
    parser.add_argument(
        "--only",
        help="run these variants, in this order, after the first (which trains the baselines): "
        "names as objective-views-unit, '-' where one does not apply (masked---token)",
    )
    parser.add_argument(
        "--pretrain-seeds", help="pretrain each variant once per train.seed [the config's]"
    )
    parser.add_argument("--cv-repeats", type=int, default=1, help="finetune.cv_repeats [1]")
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--work", type=Path, help="keep data and runs here")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-ablation-"))
    cohort = generate_cohort(
        args.visits, labeled_frac=args.labeled_frac, seed=0, version=args.cohort_version
    )
    write_or_reuse(cohort, work, bench_stamp(cohort, args))
    data, oracle = work / "data", read_oracle(work / "data")
    budgets, readouts = args.budgets.split(","), args.readouts.split(",")
    cells = variants(args.objectives.split(","), args.views.split(","), args.mask_units.split(","))
    if args.only:
        by_name = {cell["name"]: cell for cell in cells}
        unknown = [n for n in args.only.split(",") if n not in by_name]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; known: {', '.join(by_name)}")
        cells = [cells[0]] + [by_name[n] for n in args.only.split(",") if n != cells[0]["name"]]
    pretrain_seeds = (
        [int(s) for s in args.pretrain_seeds.split(",")] if args.pretrain_seeds else [None]
    )
    baselines: dict[str, pl.DataFrame] = {}
    results = []  # the readouts of one variant share its pretrainings (`readout_run_dir`)
    for index, variant in enumerate(cells):
        for readout in readouts:
            ssl_parts = []
            for pretrain_seed in pretrain_seeds:
                first = index == 0 and pretrain_seed == pretrain_seeds[0]
                models = SSL_MODELS + (BASELINES if first else [])
                base = work / (f"run-{variant['name']}"
                               + (f"-seed{pretrain_seed}" if pretrain_seed else ""))  # fmt: skip
                run_dir = readout_run_dir(base, readout, readouts[0])
                predictions = run_cell(args, data, run_dir, variant, readout, models,
                                       pretrain_seed)  # fmt: skip
                if first:
                    baselines[readout] = predictions
                ssl_parts.append(predictions.filter(pl.col("model").is_in(SSL_MODELS)))
            curve = compare(ssl_parts, baselines[readout], oracle, args.n_boot, budgets[0])
            results.append({k: variant[k] for k in ("name", "objective", "views", "mask_unit")}
                           | {"readout": readout, "pretrain_seeds": pretrain_seeds,
                              "curve": curve})  # fmt: skip
            (work / "ablation.json").write_text(json.dumps(results, indent=2))
    print(f"\n{args.visits} visits, labeled {args.labeled_frac}, seeds {args.seeds}, "
          f"{args.epochs} pretraining epochs (seeds {args.pretrain_seeds or 'of the config'}), "
          f"preset {args.preset}\n")  # fmt: skip
    print(table(results, budgets))


if __name__ == "__main__":
    main()
