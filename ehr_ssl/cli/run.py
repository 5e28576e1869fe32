"""`ehr-ssl run`, `evaluate` and `demo`: the whole pipeline into one run directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ehr_ssl.cli.options import (
    add_cohort_version,
    add_config_options,
    add_setting,
    is_main_process,
    overrides,
    positive_int,
    seed,
)
from ehr_ssl.config import DEVICES, RUN_OPTIONS
from ehr_ssl.data.synthetic.versions import DEFAULT_LABELED_FRAC
from ehr_ssl.outputs import check_output_dir, check_outside_inputs, mark_output_dir, output_lock
from ehr_ssl.settings import read_toml

# Settings with a flag of their own on `run`, the keywords of `ehr_ssl.run` (every other one:
# --config or --set).
RUN_FLAGS = {"--" + name.replace("_", "-"): dotted for name, dotted in RUN_OPTIONS.items()}


def cmd_run(args: argparse.Namespace) -> int:
    from ehr_ssl.evaluation.render import format_report_table
    from ehr_ssl.pipeline import load_checked_config, run_pipeline
    from ehr_ssl.training.distributed import process_group

    check_outside_inputs(args.out, {"--data": args.data})  # at once, before anything is read
    check_output_dir(args.out, "run")
    config = load_checked_config(args.config, overrides(args))
    with process_group(args.device or config.train.device):
        report = run_pipeline(args.data, args.out, config, device=args.device)
    if is_main_process():
        print(format_report_table(report))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ehr_ssl.api import evaluate

    hf_logging.disable_progress_bar()
    print(evaluate(args.run_dir, data=args.data, n_boot=args.n_boot))
    return 0


# The demo's label-efficiency curve besides every label, unless a flag or its --config sets one.
DEMO_LABEL_BUDGETS = ["100", "300"]


def _demo_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The demo's own flags as settings: those given, and the demo's curve where neither the
    flag nor the --config file sets one (the file's settings beat the demo's defaults, flags
    beat both)."""
    settings: dict[str, Any] = {}
    if args.epochs is not None:
        settings["train.epochs"] = args.epochs
    if args.label_budgets is not None:
        settings["evaluate.label_budgets"] = args.label_budgets.split(",")
    elif args.config is None or "label_budgets" not in _file_table(args.config, "evaluate"):
        settings["evaluate.label_budgets"] = DEMO_LABEL_BUDGETS
    return settings


def _file_table(path: Path, table: str) -> dict[str, Any]:
    """The `table` of the TOML file at `path` ({} when it has none, or a value there that the
    configuration's loader reports with its file)."""
    found = read_toml(path).get(table, {})
    return found if isinstance(found, dict) else {}


def cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from ehr_ssl.data.synthetic import generate_cohort, write_cohort
    from ehr_ssl.evaluation.render import format_report_table
    from ehr_ssl.pipeline import load_checked_config, run_pipeline

    check_output_dir(args.out, "demo")
    config = load_checked_config(args.config, {**_demo_settings(args), **overrides(args)})
    data_dir = args.out / "data"
    with output_lock(args.out):
        logging.getLogger("ehr_ssl").info(
            "demo: synthesizing %d visits (seed %d) -> %s", args.visits, args.seed, data_dir
        )
        cohort = generate_cohort(args.visits, seed=args.seed, version=args.cohort_version)
        write_cohort(cohort, data_dir, overwrite=True)
        mark_output_dir(args.out, "demo")
        report = run_pipeline(data_dir, args.out / "run", config)
    print()
    print(format_report_table(report))
    print(f"\nreport: {args.out / 'run' / 'report.md'}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="the whole pipeline: validate, tokenize, pretrain, fine-tune, baselines, evaluate",
        description="Run validate -> tokenize -> pretrain -> fine-tune -> baselines -> evaluate "
        "into one run directory, skipping every stage whose outputs are complete for the same "
        "inputs and settings (a failed or killed run restarts where it stopped; pretraining "
        "resumes from its last checkpoint). Writes report.json, report.md, predictions.parquet "
        "and plots, and prints the report table. Unset options take the --config file's "
        "value, else the preset's or the default in brackets.",
    )
    run.add_argument(
        "--data", type=Path, required=True, help="dataset directory, or a MEDS root (--meds-labels)"
    )
    run.add_argument("--out", type=Path, required=True, help="run directory")
    add_config_options(run, "every stage's tables (pipelines/*.toml)")
    for flag, dotted in RUN_FLAGS.items():
        add_setting(run, dotted, flag=flag)
    run.add_argument(
        "--device",
        choices=DEVICES,
        help="where to pretrain and fine-tune [the config's train.device: auto, cuda if any]",
    )
    run.set_defaults(run=cmd_run)

    evaluate = commands.add_parser(
        "evaluate",
        help="(re)write the report of a run directory",
        description="Fit the counts baselines and score every fine-tuned model of a run "
        "directory on the test split, with patient-level bootstrap CIs and paired differences; "
        "write report.json, report.md, predictions.parquet and the plots. `ehr-ssl run` does "
        "this as its last stage.",
    )
    evaluate.add_argument(
        "run_dir", metavar="RUN", type=Path, help="run directory made by `ehr-ssl run`"
    )
    evaluate.add_argument(
        "--data",
        type=Path,
        help="the run's dataset directory, or its MEDS root (read with the run's [meds] settings): "
        "its visits' static columns give the "
        "report's subgroups and its keys the MEDS predictions; its oracle.parquet, if any, the "
        "oracle AUROC. Without it: no subgroups, no meds_predictions/",
    )
    evaluate.add_argument(
        "--n-boot", type=positive_int, help="bootstrap replicates [the run's evaluate.n_boot]"
    )
    evaluate.set_defaults(run=cmd_evaluate)
    _add_demo(commands)


def _add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline on a synthetic cohort",
        description=f"Synthesize a cohort ({DEFAULT_LABELED_FRAC:.0%} labeled) into OUT/data "
        "and run the whole pipeline "
        "with the small preset into OUT/run, then print the report table.",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="demo directory [runs/demo]"
    )
    demo.add_argument(
        "--visits", type=positive_int, default=20_000, help="synthetic visits [20000]"
    )
    demo.add_argument("--seed", type=seed, default=0, help="random seed of the cohort [0]")
    add_cohort_version(demo)
    demo.add_argument(
        "--epochs", type=positive_int, help="pretraining epochs [the preset's: 3 for small]"
    )
    demo.add_argument(
        "--label-budgets",
        help=f"label-efficiency curve besides all labels [{','.join(DEMO_LABEL_BUDGETS)}]",
    )
    add_config_options(demo, "pipeline tables (e.g. pipelines/demo.toml)")
    demo.set_defaults(run=cmd_demo)
