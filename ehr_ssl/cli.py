"""The `ehr-ssl` command: parses arguments and calls one library function per subcommand.

Exit status: 0 success, 2 bad input or configuration (one line on stderr naming the file, the
column and the problem), 1 an internal error. Logs carry counts and paths, never identifiers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from ehr_ssl import __version__
from ehr_ssl.config import (
    FINETUNE_MODES,
    PRESETS,
    RUN_OPTIONS,
    FinetuneConfig,
    PipelineConfig,
    TokenizeConfig,
    load_config,
    load_pipeline_config,
    load_pretrain_config,
    load_tokenize_config,
    parse_budget,
    read_toml,
)
from ehr_ssl.data.readers import read_dataset
from ehr_ssl.data.summary import format_summary, summarize_dataset
from ehr_ssl.errors import InputError, TrainingError
from ehr_ssl.layout import ENCODER_DIR, MODEL_CONFIG_FILE
from ehr_ssl.tokens.shards import format_manifest

log = logging.getLogger("ehr_ssl")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2), like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {value}")
    return value


def _seed_list(text: str) -> list[int]:
    return [_seed(part) for part in text.split(",")]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _column_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading the data")
    group.add_argument(
        "--config",
        type=Path,
        help="TOML file with [data], [split] and [tokenizer] tables; options given here win",
    )
    group.add_argument(
        "--prediction-offset-minutes",
        type=float,
        help="prediction_time = arrival_time + this when visits has no prediction_time "
        "(default 60)",
    )
    group.add_argument(
        "--static-columns",
        type=_column_list,
        help="comma-separated visit columns to use as static features (default: age,sex where "
        "present; name only columns known at arrival, never identifiers)",
    )
    group.add_argument(
        "--drop-null-time-events",
        action="store_true",
        default=None,
        help="drop events with a null time (MEDS static rows) instead of rejecting them",
    )
    group.add_argument(
        "--lookback-days",
        type=float,
        help="history window before arrival_time (default 365)",
    )


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="pipeline TOML (pipelines/*.toml)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="tiny (tests), small (CPU demo), base (GPU)"
    )
    parser.add_argument("--epochs", type=_positive_int, help="pretraining epochs")
    parser.add_argument(
        "--label-budget", help="labels of the main report: a count, a fraction or all [all]"
    )
    parser.add_argument(
        "--label-budgets", help="label-efficiency curve, e.g. 100,300,1000,3000,all"
    )
    parser.add_argument("--seeds", type=_seed_list, help="label subsets per budget, e.g. 0,1,2 [0]")
    parser.add_argument("--n-boot", type=_positive_int, help="bootstrap replicates [1000]")


def _tokenize_config(args: argparse.Namespace) -> TokenizeConfig:
    return load_tokenize_config(
        args.config,
        {
            "data.prediction_offset_minutes": args.prediction_offset_minutes,
            "data.static_columns": args.static_columns,
            "data.drop_null_time_events": args.drop_null_time_events,
            "tokenizer.lookback_days": args.lookback_days,
            "tokenizer.max_length": getattr(args, "max_length", None),
            "tokenizer.min_count": getattr(args, "min_count", None),
            "tokenizer.n_bins": getattr(args, "n_bins", None),
            "split.seed": getattr(args, "split_seed", None),
            "split.val_fraction": getattr(args, "val_fraction", None),
            "split.test_fraction": getattr(args, "test_fraction", None),
            "shard_visits": getattr(args, "shard_visits", None),
            "chunk_visits": getattr(args, "chunk_visits", None),
        },
    )


def cmd_synth(args: argparse.Namespace) -> int:
    from ehr_ssl.data.synthetic import generate_cohort, write_cohort

    if args.out.exists() and not args.overwrite:
        raise InputError("output directory already exists (use --overwrite)", file=str(args.out))
    started = time.perf_counter()
    cohort = generate_cohort(args.visits, labeled_frac=args.labeled_frac, seed=args.seed)
    write_cohort(cohort, args.out, shards=args.shards, overwrite=args.overwrite)
    log.info(
        "synth: %d visits, %d events, %d labeled -> %s (%.1f s)",
        cohort.visits.height,
        cohort.events.height,
        cohort.labels.height,
        args.out,
        time.perf_counter() - started,
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    config = _tokenize_config(args)
    dataset = read_dataset(args.data, config.data)
    summary = summarize_dataset(dataset, lookback_days=config.tokenizer.lookback_days)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from ehr_ssl.tokens.tokenize import tokenize_dataset

    config = _tokenize_config(args)
    started = time.perf_counter()
    manifest = tokenize_dataset(args.data, args.out, config, overwrite=args.overwrite)
    log.info("tokenize: wrote %s (%.1f s)", args.out, time.perf_counter() - started)
    print(format_manifest(manifest))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ehr_ssl.training.distributed import process_group
    from ehr_ssl.training.pretrain import pretrain

    hf_logging.disable_progress_bar()  # transformers' own save bars; our logs stay plain lines

    config = load_pretrain_config(
        args.config,
        {
            "preset": args.preset,
            "train.max_steps": args.max_steps,
            "train.epochs": args.epochs,
            "train.device": args.device,
            "train.batch_size": args.batch_size,
            "train.learning_rate": args.learning_rate,
            "train.num_workers": args.num_workers,
            "train.seed": args.seed,
            "train.compile": args.compile,
            "train.tensorboard": args.tensorboard,
            "train.include_test_unlabeled": args.include_test_unlabeled,
            "objective.masked_weight": args.masked_weight,
            "objective.contrastive_weight": args.contrastive_weight,
        },
    )
    started = time.perf_counter()
    with process_group(config.train.device):  # joins torchrun's processes, if launched so
        summary = pretrain(args.tokens, args.out, config, resume=args.resume)
    final = summary["final_metrics"]
    log.info(
        "pretrain: %d steps, final loss %.4f, wrote %s (%.1f s)",
        summary["steps"],
        final.get("loss", float("nan")),
        args.out,
        time.perf_counter() - started,
    )
    return 0


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    options = {name: getattr(args, name, None) for name in RUN_OPTIONS}
    if options["label_budgets"]:
        options["label_budgets"] = options["label_budgets"].split(",")
    return load_pipeline_config(
        args.config, {RUN_OPTIONS[name]: value for name, value in options.items()}
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ehr_ssl.training.distributed import process_group
    from ehr_ssl.training.finetune import finetune

    hf_logging.disable_progress_bar()
    budget = None if args.label_budget is None else parse_budget(args.label_budget)
    config = load_config(
        FinetuneConfig,
        None,
        {
            "mode": args.mode,
            "label_budget": budget,
            "learning_rate": args.learning_rate,
            "encoder_lr_ratio": args.encoder_lr_ratio,
            "batch_size": args.batch_size,
            "max_epochs": args.max_epochs,
            "patience": args.patience,
            "seed": args.seed,
            "device": args.device,
        },
        base=_read_table(args.config, "finetune"),
        source=str(args.config or "config"),
    )
    nested = args.encoder / ENCODER_DIR
    encoder = nested if nested.is_dir() else args.encoder
    if not (encoder / MODEL_CONFIG_FILE).is_file():
        raise InputError("not a pretrained encoder (no config.json)", file=str(args.encoder))
    started = time.perf_counter()
    with process_group(config.device):
        summary = finetune(args.tokens, encoder, args.out, config)
    log.info("finetune: wrote %s (%.1f s)", args.out, time.perf_counter() - started)
    if _is_main_process():
        print(
            f"{summary['mode']}: {summary['train_labeled']} train and {summary['val_labeled']} val "
            f"labels; validation AUROC {summary['val_auroc']:.3f} -> {args.out}"
        )
    return 0


def _read_table(path: Path | None, table: str) -> dict:
    """One table of a TOML file (a pipeline config's [finetune]), or the whole file when it has
    no such table (a file holding the fine-tuning keys only)."""
    if path is None:
        return {}
    values = read_toml(path)
    return values.get(table, values) if isinstance(values.get(table, values), dict) else {}


def cmd_run(args: argparse.Namespace) -> int:
    from ehr_ssl.evaluation.report import format_report_table
    from ehr_ssl.pipeline import run_pipeline
    from ehr_ssl.training.distributed import process_group

    config = _pipeline_config(args)
    with process_group(args.device or config.train.device):
        report = run_pipeline(args.data, args.out, config, device=args.device)
    if _is_main_process():
        print(format_report_table(report))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ehr_ssl.api import evaluate

    hf_logging.disable_progress_bar()
    print(evaluate(args.run_dir, data=args.data, n_boot=args.n_boot))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """`predict` and `embed`: one row per visit of a dataset, streamed in chunks."""
    from transformers.utils import logging as hf_logging

    from ehr_ssl.api import load
    from ehr_ssl.deploy.scoring import score_dataset

    hf_logging.disable_progress_bar()
    model = load(args.model, device=args.device)
    score_dataset(model, args.data, args.out, output=args.command, chunk_visits=args.chunk_visits)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ehr_ssl.deploy.bundle import export_bundle

    hf_logging.disable_progress_bar()
    out = export_bundle(
        args.run_dir,
        args.out,
        model=args.model,
        budget=args.label_budget,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    log.info("bundle: -> %s", out)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from ehr_ssl.deploy.retraining import retrain

    config = load_pipeline_config(
        args.config,
        {
            "preset": args.preset,
            "train.epochs": args.epochs,
            "train.max_steps": args.max_steps,
            "retrain.pretrain_epochs": args.pretrain_epochs,
            "retrain.test_fraction": args.test_fraction,
            "retrain.label_budget": args.label_budget,
            "retrain.max_auroc_drop": args.max_auroc_drop,
            "evaluate.n_boot": args.n_boot,
        },
    )
    record = retrain(args.data, args.registry, config, wait=args.wait)
    print(
        f"version {record['version']}: "
        f"{'promoted to production' if record['promoted'] else 'not promoted'}"
    )
    for reason in record["reasons"]:
        print(f"  {reason}")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from ehr_ssl.deploy.registry import Registry

    registry = Registry.open(args.registry)
    production = registry.production_version()
    print(f"production: version {production}" if production else "production: none")
    for record in registry.history():
        metrics = record.get("candidate") or {}
        print(
            f"version {record['version']}  {record.get('time', '?')}  "
            f"{'promoted' if record.get('promoted') else 'rejected'}  "
            f"AUROC {metrics.get('auroc', float('nan')):.3f}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ehr_ssl.data.synthetic import generate_cohort, write_cohort
    from ehr_ssl.evaluation.report import format_report_table
    from ehr_ssl.pipeline import run_pipeline

    data_dir = args.out / "data"
    log.info("demo: synthesizing %d visits (seed %d) -> %s", args.visits, args.seed, data_dir)
    write_cohort(
        generate_cohort(args.visits, labeled_frac=0.05, seed=args.seed), data_dir, overwrite=True
    )
    config = load_pipeline_config(
        args.config,
        {
            "preset": "small",
            "train.epochs": args.epochs,
            "evaluate.label_budgets": args.label_budgets.split(","),
        },
    )
    report = run_pipeline(data_dir, args.out / "run", config)
    print()
    print(format_report_table(report))
    print(f"\nreport: {args.out / 'run' / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = _Parser(
        prog="ehr-ssl",
        description="Self-supervised representations of ED visits from EHR Parquet data. "
        "Exit status: 0 success, 2 bad input or configuration, 1 internal error.",
    )
    parser.add_argument("--version", action="version", version=f"ehr-ssl {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    synth = commands.add_parser(
        "synth",
        help="write the built-in synthetic ED cohort",
        description="Write a synthetic ED cohort (visits, events, labels and the oracle "
        "admission probabilities) as a dataset directory. Deterministic for a seed.",
        formatter_class=formatter,
    )
    synth.add_argument("out", type=Path, help="dataset directory to create")
    synth.add_argument("--visits", type=_positive_int, default=100_000, help="number of visits")
    synth.add_argument(
        "--labeled-frac", type=_fraction, default=0.05, help="fraction of visits with a label"
    )
    synth.add_argument("--seed", type=_seed, default=0, help="random seed")
    synth.add_argument(
        "--shards", type=_positive_int, default=1, help="write events as this many files"
    )
    synth.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    synth.set_defaults(run=cmd_synth)

    validate = commands.add_parser(
        "validate",
        help="check a dataset against the input contract and summarize it",
        description="Check a dataset directory against the input contract (data_schemas/) and "
        "print a summary. Bad input: exit status 2 and one line naming file, column, problem.",
        formatter_class=formatter,
    )
    validate.add_argument("data", type=Path, help="dataset directory")
    validate.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_data_options(validate)
    validate.set_defaults(run=cmd_validate)

    tokenize = commands.add_parser(
        "tokenize",
        help="split patients, fit the tokenizer on train, write token shards",
        description="Split patients (train/val/test), fit the vocabulary and value bins on the "
        "training patients, tokenize every visit and write token shards and the tokenizer. "
        "Unset options take the --config file's value, else the default in brackets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tokenize.add_argument("data", type=Path, help="dataset directory")
    tokenize.add_argument("--out", type=Path, required=True, help="tokens directory to create")
    tokenize.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_data_options(tokenize)
    group = tokenize.add_argument_group("tokenizer")
    group.add_argument("--max-length", type=_positive_int, help="tokens per visit [256]")
    group.add_argument(
        "--min-count",
        type=_positive_int,
        help="distinct training patients a code needs to enter the vocabulary [5]",
    )
    group.add_argument("--n-bins", type=_positive_int, help="quantile bins per numeric code [10]")
    group.add_argument("--split-seed", type=_seed, help="seed of the patient split hash [0]")
    group.add_argument("--val-fraction", type=_fraction, help="share of patients in val [0.1]")
    group.add_argument("--test-fraction", type=_fraction, help="share of patients in test [0.1]")
    group.add_argument(
        "--shard-visits", type=_positive_int, help="visits per output shard [200000]"
    )
    group.add_argument(
        "--chunk-visits",
        type=_positive_int,
        help="memory bound: more visits than this are tokenized in chunks of patients, the "
        "events read chunk by chunk; the tokens are the same [500000]",
    )
    tokenize.set_defaults(run=cmd_tokenize)

    pretrain = commands.add_parser(
        "pretrain",
        help="self-supervised pretraining of the encoder on token shards",
        description="Pretrain the encoder with masked-event modeling and contrastive visits on "
        "every visit of the patients outside the test split (labeled or not). Writes the "
        "encoder (safetensors + config.json), the tokenizer, the resolved config, metrics.jsonl "
        "and checkpoints. Unset options take the --config file's value, else the preset's.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pretrain.add_argument("--tokens", type=Path, required=True, help="tokens directory")
    pretrain.add_argument("--out", type=Path, required=True, help="run directory")
    pretrain.add_argument(
        "--preset", choices=sorted(PRESETS), help="tiny (tests), small (CPU demo), base (GPU)"
    )
    pretrain.add_argument(
        "--config", type=Path, help="TOML file with preset and [model], [objective], [train]"
    )
    pretrain.add_argument("--max-steps", type=_positive_int, help="stop after this many steps")
    pretrain.add_argument("--epochs", type=_positive_int, help="passes over the visits [1]")
    pretrain.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="where to train [auto: cuda if any]"
    )
    pretrain.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    pretrain.add_argument("--batch-size", type=_positive_int, help="visits per step")
    pretrain.add_argument("--learning-rate", type=float, help="peak learning rate")
    pretrain.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    pretrain.add_argument("--seed", type=_seed, help="seed of initialization, data order, masking")
    pretrain.add_argument(
        "--masked-weight", type=float, help="weight of masked-event modeling (0 = off) [1.0]"
    )
    pretrain.add_argument(
        "--contrastive-weight", type=float, help="weight of contrastive visits (0 = off) [1.0]"
    )
    pretrain.add_argument(
        "--include-test-unlabeled",
        action="store_true",
        default=None,
        help="transductive: also pretrain on the test patients' unlabeled visits",
    )
    pretrain.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile the encoder"
    )
    pretrain.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="also log to RUN/tensorboard (needs the tensorboard package)",
    )
    pretrain.set_defaults(run=cmd_pretrain)

    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a pretrained encoder for admission within 7 days",
        description="Train a classifier for admission within 7 days on the labeled train visits "
        "(optionally a label budget of them), choosing the epoch (or the probe's "
        "regularization) on the validation split only; never reads the test split. The "
        "positive class is weighted by n_negative / n_positive. Unset options take the "
        "--config file's [finetune] value, else the default in brackets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    finetune.add_argument("--tokens", type=Path, required=True, help="tokens directory")
    finetune.add_argument(
        "--encoder", type=Path, required=True, help="pretrain run directory (or its encoder/)"
    )
    finetune.add_argument("--out", type=Path, required=True, help="output directory")
    finetune.add_argument(
        "--mode",
        choices=FINETUNE_MODES,
        help="full: encoder + head [default]; linear-probe: logistic regression on the frozen "
        "encoder; scratch: same architecture, random init (supervised-only baseline)",
    )
    finetune.add_argument(
        "--label-budget", help="labeled train visits to use: a count, a fraction or all [all]"
    )
    finetune.add_argument("--config", type=Path, help="TOML file with a [finetune] table")
    finetune.add_argument("--learning-rate", type=float, help="head learning rate [1e-3]")
    finetune.add_argument("--encoder-lr-ratio", type=float, help="encoder lr / head lr [0.1]")
    finetune.add_argument("--batch-size", type=_positive_int, help="visits per step [64]")
    finetune.add_argument("--max-epochs", type=_positive_int, help="epochs at most [30]")
    finetune.add_argument("--patience", type=_positive_int, help="early-stopping epochs [4]")
    finetune.add_argument("--seed", type=_seed, help="seed of the label subset and training [0]")
    finetune.add_argument("--device", choices=("auto", "cpu", "cuda"), help="[auto]")
    finetune.set_defaults(run=cmd_finetune)

    run = commands.add_parser(
        "run",
        help="the whole pipeline: validate, tokenize, pretrain, fine-tune, baselines, evaluate",
        description="Run validate -> tokenize -> pretrain -> fine-tune -> baselines -> evaluate "
        "into one run directory, skipping every stage whose outputs are complete for the same "
        "inputs and settings (a failed or killed run restarts where it stopped; pretraining "
        "resumes from its last checkpoint). Writes report.json, report.md, predictions.parquet "
        "and plots, and prints the report table. Unset options take the --config file's "
        "value, else the preset's or the default in brackets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--data", type=Path, required=True, help="dataset directory")
    run.add_argument("--out", type=Path, required=True, help="run directory")
    _add_pipeline_options(run)
    run.add_argument("--max-steps", type=_positive_int, help="pretraining steps at most")
    run.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="where to train [auto: cuda if any]"
    )
    run.set_defaults(run=cmd_run)

    evaluate = commands.add_parser(
        "evaluate",
        help="(re)write the report of a run directory",
        description="Fit the counts baselines and score every fine-tuned model of a run "
        "directory on the test split, with patient-level bootstrap CIs and paired differences; "
        "write report.json, report.md, predictions.parquet and the plots. `ehr-ssl run` does "
        "this as its last stage.",
        formatter_class=formatter,
    )
    evaluate.add_argument(
        "run_dir", metavar="RUN", type=Path, help="run directory made by `ehr-ssl run`"
    )
    evaluate.add_argument(
        "--data", type=Path, help="dataset directory, for its oracle.parquet if it has one"
    )
    evaluate.add_argument("--n-boot", type=_positive_int, help="bootstrap replicates")
    evaluate.set_defaults(run=cmd_evaluate)

    for name, what in (
        ("predict", "P(admission within 7 days) per visit: visit_id, score"),
        ("embed", "the pooled visit vector per visit: visit_id, embedding (fixed-size list)"),
    ):
        score = commands.add_parser(
            name,
            help=f"{what.split(':')[0]} for a dataset, with a model bundle",
            description=f"Write {what}, for every visit of a dataset directory, tokenized with "
            "the bundle's tokenizer. Streams in chunks of patients (bounded memory); a progress "
            "bar on a terminal, log lines otherwise. Rows come chunk by chunk: join on visit_id.",
            formatter_class=formatter,
        )
        score.add_argument(
            "--model", type=Path, required=True, help="bundle directory, or a registry"
        )
        score.add_argument("--data", type=Path, required=True, help="dataset directory")
        score.add_argument("--out", type=Path, required=True, help="output Parquet file")
        score.add_argument(
            "--chunk-visits", type=_positive_int, default=100_000, help="visits per chunk"
        )
        score.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        score.set_defaults(run=cmd_score)

    bundle = commands.add_parser(
        "bundle",
        help="package a fine-tuned model of a run as a bundle",
        description="Write a model bundle (encoder, head, tokenizer, report, model card) from a "
        "run directory. `ehr-ssl run` bundles the SSL model at the main budget into RUN/bundle.",
        formatter_class=formatter,
    )
    bundle.add_argument("run_dir", metavar="RUN", type=Path, help="run directory")
    bundle.add_argument("--out", type=Path, required=True, help="bundle directory")
    bundle.add_argument(
        "--model", default="ssl", choices=("ssl", "ssl_linear_probe", "scratch"), help="which"
    )
    bundle.add_argument("--label-budget", help="label budget (default: the run's main one)")
    bundle.add_argument("--seed", type=_seed, help="fine-tuning seed (default: the run's first)")
    bundle.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    bundle.set_defaults(run=cmd_bundle)

    retrain = commands.add_parser(
        "retrain",
        help="scheduled retraining into a model registry, with a promotion gate",
        description="Warm-start from the registry's production model, continue pretraining on "
        "the dataset, fine-tune, compare candidate and production on the most recent visits "
        "(a temporal test window), and promote the candidate only if it passes the gate "
        "([retrain] table of the config). The first retrain creates the registry and trains "
        "from scratch. A lock keeps concurrent retrains apart; a killed retrain leaves the "
        "registry as it was.",
        formatter_class=formatter,
    )
    retrain.add_argument("--data", type=Path, required=True, help="dataset directory")
    retrain.add_argument("--registry", type=Path, required=True, help="registry directory")
    retrain.add_argument("--config", type=Path, help="pipeline TOML with a [retrain] table")
    retrain.add_argument("--preset", choices=sorted(PRESETS), help="for a first retrain")
    retrain.add_argument("--epochs", type=_positive_int, help="pretraining epochs (first)")
    retrain.add_argument("--max-steps", type=_positive_int, help="pretraining steps at most")
    retrain.add_argument(
        "--pretrain-epochs", type=_positive_int, help="continued pretraining epochs [1]"
    )
    retrain.add_argument("--test-fraction", type=float, help="test window share [0.1]")
    retrain.add_argument("--label-budget", help="fine-tuning labels [all]")
    retrain.add_argument("--max-auroc-drop", type=float, help="gate tolerance [0.01]")
    retrain.add_argument("--n-boot", type=_positive_int, help="bootstrap replicates [1000]")
    retrain.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for another retrain's lock"
    )
    retrain.set_defaults(run=cmd_retrain)

    registry = commands.add_parser(
        "registry",
        help="show a registry's production version and history",
        formatter_class=formatter,
    )
    registry.add_argument("registry", type=Path, help="registry directory")
    registry.set_defaults(run=cmd_registry)

    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline on a synthetic cohort",
        description="Synthesize a cohort (5%% labeled) into OUT/data and run the whole pipeline "
        "with the small preset into OUT/run, then print the report table.",
        formatter_class=formatter,
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo directory")
    demo.add_argument("--visits", type=_positive_int, default=20_000, help="synthetic visits")
    demo.add_argument("--seed", type=_seed, default=0, help="random seed of the cohort")
    demo.add_argument("--epochs", type=_positive_int, default=3, help="pretraining epochs")
    demo.add_argument(
        "--label-budgets", default="100,300", help="label-efficiency curve besides all labels"
    )
    demo.add_argument("--config", type=Path, help="pipeline TOML (e.g. pipelines/demo.toml)")
    demo.set_defaults(run=cmd_demo)
    return parser


def _is_main_process() -> bool:
    """False in torchrun's processes other than rank 0, which speaks for the run."""
    return os.environ.get("RANK", "0") == "0"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if not _is_main_process():
        logging.getLogger().setLevel(logging.WARNING)
    # SIGTERM (a scheduler's stop) unwinds like Ctrl-C, so temporary outputs are removed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.run(args)
    except InputError as e:
        print(f"ehr-ssl: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"ehr-ssl: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # an output path that cannot be written, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"ehr-ssl: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ehr-ssl: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: exit 1 for schedulers
        # The message of a library's exception may quote data values (identifiers), so only its
        # type and where it was raised go to the log unless EHR_SSL_DEBUG asks for everything.
        if os.environ.get("EHR_SSL_DEBUG"):
            raise
        frame = traceback.extract_tb(e.__traceback__)[-1]
        print(
            f"ehr-ssl: internal error: {type(e).__name__} at {Path(frame.filename).name}:"
            f"{frame.lineno} (set EHR_SSL_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
