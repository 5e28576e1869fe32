"""`ehr-ssl synth`, `validate` and `tokenize`: the data commands (polars only, never torch)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ehr_ssl.cli.options import (
    add_cohort_version,
    add_config_options,
    add_meds_settings,
    add_setting,
    fraction,
    overrides,
    positive_int,
    seed,
)
from ehr_ssl.config import TokenizeConfig, load_pipeline_config, load_tokenize_config
from ehr_ssl.data.leakage import screen_dataset
from ehr_ssl.data.meds_input import contract_data
from ehr_ssl.data.readers import read_dataset
from ehr_ssl.data.summary import format_summary, summarize_dataset
from ehr_ssl.data.synthetic.versions import DEFAULT_LABELED_FRAC
from ehr_ssl.data.synthetic.writer import MEDS_LABELS_FILE, MEDS_VISITS_FILE
from ehr_ssl.errors import InputError
from ehr_ssl.outputs import check_output_dir
from ehr_ssl.tokens.shards import format_manifest

log = logging.getLogger("ehr_ssl")

# Settings with a flag of their own on validate (reading the data) and tokenize (all of them).
READING = (
    "data.prediction_offset_minutes",
    "data.static_columns",
    "data.drop_null_time_events",
    "tokenizer.lookback_days",
)
TOKENIZING = (
    "tokenizer.max_length",
    "tokenizer.min_count",
    "tokenizer.n_bins",
    "tokenizer.rare_codes",
    "split.val_fraction",
    "split.test_fraction",
    "shard_visits",
    "chunk_visits",
    "chunk_events",
)


def cmd_synth(args: argparse.Namespace) -> int:
    from ehr_ssl.data.synthetic import generate_cohort, write_cohort, write_meds_cohort

    check_output_dir(args.out, "dataset", flag="OUT")  # at once: a file, or someone's data
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise InputError("output directory already exists (use --overwrite)", file=str(args.out))
    started = time.perf_counter()
    cohort = generate_cohort(
        args.visits,
        labeled_frac=args.labeled_frac,
        seed=args.seed,
        version=args.cohort_version,
    )
    write = write_meds_cohort if args.format == "meds" else write_cohort
    write(cohort, args.out, shards=args.shards, overwrite=args.overwrite)
    log.info(
        "synth: %d visits, %d events, %d labeled -> %s (%.1f s)",
        cohort.visits.height,
        cohort.events.height,
        cohort.labels.height,
        args.out,
        time.perf_counter() - started,
    )
    return 0


def tokenize_config(args: argparse.Namespace) -> TokenizeConfig:
    return load_tokenize_config(args.config, overrides(args))


def cmd_validate(args: argparse.Namespace) -> int:
    pipeline = load_pipeline_config(args.config, overrides(args))
    config = pipeline.tokenize_config()
    with contract_data(args.data, config) as (data_dir, data_config):
        pipeline.data = data_config  # a MEDS root's: its static columns, its static rows
        dataset = read_dataset(data_dir, data_config)
        summary = summarize_dataset(dataset, lookback_days=config.tokenizer.lookback_days)
        summary["suspected_leaks"] = screen_dataset(dataset, pipeline)  # exit 2 on a leak
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from ehr_ssl.tokens.tokenize import tokenize_dataset

    config = tokenize_config(args)
    started = time.perf_counter()
    with contract_data(args.data, config) as (data_dir, data_config):
        config.data = data_config
        manifest = tokenize_dataset(data_dir, args.out, config, overwrite=args.overwrite)
    log.info("tokenize: wrote %s (%.1f s)", args.out, time.perf_counter() - started)
    print(format_manifest(manifest))
    return 0


def _add_synth(commands: argparse._SubParsersAction) -> None:
    synth = commands.add_parser(
        "synth",
        help="write the built-in synthetic ED cohort",
        description="Write a synthetic ED cohort (visits, events, labels and the oracle "
        "admission probabilities) as a dataset directory. Deterministic for a seed.",
    )
    synth.add_argument("out", type=Path, help="dataset directory to create")
    synth.add_argument(
        "--visits", type=positive_int, default=100_000, help="number of visits [100000]"
    )
    synth.add_argument(
        "--labeled-frac",
        type=fraction,
        default=DEFAULT_LABELED_FRAC,
        help=f"fraction of visits with a label [{DEFAULT_LABELED_FRAC}]",
    )
    synth.add_argument("--seed", type=seed, default=0, help="random seed [0]")
    add_cohort_version(synth)
    synth.add_argument(
        "--shards", type=positive_int, default=1, help="write events as this many files [1]"
    )
    synth.add_argument(
        "--format",
        choices=("contract", "meds"),
        default="contract",
        help="contract: visits, events, labels (data_schemas/); meds: a MEDS root, its ED visits "
        f"in MEDS label files (--meds-labels OUT/{MEDS_LABELS_FILE} --meds-prediction-times "
        f"OUT/{MEDS_VISITS_FILE}) [contract]",
    )
    synth.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    synth.set_defaults(run=cmd_synth)


def _add_reading_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("reading the data")
    add_config_options(group, "[data], [split] and [tokenizer] tables")
    for dotted in READING:
        add_setting(group, dotted)
    add_meds_settings(group)
    return group


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_synth(commands)
    validate = commands.add_parser(
        "validate",
        help="check a dataset against the input contract and summarize it",
        description="Check a dataset directory against the input contract (data_schemas/) and "
        "print a summary. Bad input: exit status 2 and one line naming file, column, problem.",
    )
    validate.add_argument("data", type=Path, help="dataset directory, or a MEDS root")
    validate.add_argument("--json", action="store_true", help="print the summary as JSON")
    group = _add_reading_options(validate)
    add_setting(group, "leakage.accept", flag="--accept-leaks")
    validate.set_defaults(run=cmd_validate)

    tokenize = commands.add_parser(
        "tokenize",
        help="split patients, fit the tokenizer on train, write token shards",
        description="Split patients (train/val/test), fit the vocabulary and value bins on the "
        "training patients, tokenize every visit and write token shards and the tokenizer. "
        "Unset options take the --config file's value, else the default in brackets.",
    )
    tokenize.add_argument("data", type=Path, help="dataset directory, or a MEDS root")
    tokenize.add_argument("--out", type=Path, required=True, help="tokens directory to create")
    tokenize.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_reading_options(tokenize)
    group = tokenize.add_argument_group("tokenizer")
    add_setting(group, "split.seed", flag="--split-seed")
    for dotted in TOKENIZING:
        add_setting(group, dotted)
    tokenize.set_defaults(run=cmd_tokenize)
