"""Does pretraining on unlabeled visits beat training on the labeled few? The whole pipeline
(`ehr_ssl.pipeline.run_pipeline`) on a synthetic cohort: test AUROC at label budgets for the SSL
encoder (full fine-tuning, linear probe), the same transformer from scratch and the counts
baselines, against the oracle, with patient-level bootstrap CIs and paired differences (SSL full
fine-tuning minus each model), once per pretraining objective variant.

Each variant is a pipeline run in WORK/run-<variant> (its report.md, report.json and plots stay
there); the cohort is synthesized once. Selection never reads the test split, which is scored
once. A variant names the weights of the masked, contrastive and forecast terms ("default": the
preset's own).

usage: python benchmarks/bench_label_efficiency.py --visits 60000 --budgets 1000 --epochs 4 \
           [--objectives default,both,masked,masked+forecast,...] [--seeds 0,1,2] [--skip-all] \
           [--work DIR] \
           [--config benchmarks/wide.toml]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cohort_workdir import bench_stamp, write_or_reuse

from ehr_ssl.config import load_pipeline_config
from ehr_ssl.data.synthetic import DEFAULT_COHORT_VERSION, generate_cohort
from ehr_ssl.evaluation.render import format_report_markdown
from ehr_ssl.pipeline import run_pipeline

# variant -> the weights of (masked, contrastive, forecast); "default": the preset's own
_WEIGHTS = {
    "both": (1.0, 1.0, 0.0),
    "masked": (1.0, 0.0, 0.0),
    "contrastive": (0.0, 1.0, 0.0),
    "masked+forecast": (1.0, 0.0, 1.0),
    "both+forecast": (1.0, 1.0, 1.0),
}
_TERMS = ("objective.masked_weight", "objective.contrastive_weight", "objective.forecast_weight")
OBJECTIVES = {"default": {}} | {
    name: dict(zip(_TERMS, weights, strict=True)) for name, weights in _WEIGHTS.items()
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=60_000)
    parser.add_argument(
        "--cohort-version",
        type=int,
        default=DEFAULT_COHORT_VERSION,
        help="synthetic cohort version (1: the figures recorded before 2026-12-04 (fifth session))",
    )
    parser.add_argument("--labeled-frac", type=float, default=0.1)
    parser.add_argument("--budgets", default="1000", help="the main budget first, then a curve")
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--skip-all", action="store_true", help="leave out the all-labels budget (ablations)"
    )
    parser.add_argument("--epochs", type=int, default=4, help="pretraining epochs")
    parser.add_argument("--preset", help="tiny, small or base [the --config file's, else small]")
    parser.add_argument(
        "--config", type=Path, help="pipeline TOML (e.g. a model width); the flags win over it"
    )
    parser.add_argument("--objectives", default="both", help=f"of {', '.join(OBJECTIVES)}")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--work", type=Path, help="keep data and runs here")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-labels-"))
    data = work / "data"
    cohort = generate_cohort(
        args.visits, labeled_frac=args.labeled_frac, seed=0, version=args.cohort_version
    )
    stamp = bench_stamp(cohort, args)
    write_or_reuse(cohort, work, stamp)
    budgets = args.budgets.split(",")
    summary = {"visits": args.visits, "labeled_frac": args.labeled_frac, "runs": {}}
    for variant in args.objectives.split(","):
        config = load_pipeline_config(
            args.config,
            {
                "preset": args.preset,
                "train.epochs": args.epochs,
                "evaluate.label_budget": budgets[0],
                "evaluate.label_budgets": budgets[1:] + ([] if args.skip_all else ["all"]),
                "evaluate.seeds": [int(s) for s in args.seeds.split(",")],
                "evaluate.n_boot": args.n_boot,
                **OBJECTIVES[variant],
            },
        )
        started = time.perf_counter()
        report = run_pipeline(data, work / f"run-{variant}", config, device="cpu")
        seconds = time.perf_counter() - started
        print(f"\n## objectives: {variant} ({seconds:.0f} s, {work / f'run-{variant}'})\n")
        print(format_report_markdown(report))
        curve = report["label_efficiency"]
        summary["runs"][variant] = {
            "seconds": round(seconds),
            "oracle_auroc": report["oracle_auroc"],
            "models": {
                name: {
                    "auroc": m["auroc"],
                    "auroc_ci95": m["auroc_ci95"],
                    "ssl_minus_this": m["reference_minus_this"],
                    "relative_gain": m["relative_gain"],
                }
                for name, m in report["models"].items()
            },
            "curve": {
                entry["budget"]: {name: cell["mean"] for name, cell in entry["models"].items()}
                for entry in curve
            },
        }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
