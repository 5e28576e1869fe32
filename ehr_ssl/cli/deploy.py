"""`ehr-ssl bundle`, `predict`, `embed`, `retrain` and `registry`: using trained models."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ehr_ssl.cli.options import (
    add_config_options,
    add_meds_settings,
    add_setting,
    overrides,
    positive_int,
    seed,
)
from ehr_ssl.config import (
    DEVICES,
    FINETUNED,
    PREDICTION_FORMATS,
    SCORING_CHUNK_VISITS,
    MedsConfig,
    TokenizeConfig,
)
from ehr_ssl.layout import STAGES_FILE
from ehr_ssl.outputs import check_output_dir, check_outside_inputs, output_lock

if TYPE_CHECKING:
    from ehr_ssl.deploy.registry import Registry

log = logging.getLogger("ehr_ssl")

# Settings with a flag of their own on `retrain` (every other one: --config or --set).
RETRAIN_FLAGS = ("preset", "train.epochs", "train.max_steps", "retrain.pretrain_epochs",
                 "retrain.test_fraction", "retrain.label_budget", "retrain.max_auroc_drop",
                 "evaluate.n_boot")  # fmt: skip


def cmd_score(args: argparse.Namespace) -> int:
    """`predict` and `embed`: one row per visit of a dataset, streamed in chunks."""
    from transformers.utils import logging as hf_logging

    from ehr_ssl.api import load
    from ehr_ssl.data.meds_input import contract_data
    from ehr_ssl.deploy.scoring import check_output_file, score_dataset

    hf_logging.disable_progress_bar()
    inputs = {"--data": args.data, "--model": args.model}
    check_output_file(args.out, inputs, overwrite=args.overwrite)  # before loading
    model = load(args.model, device=args.device)
    meds = {key.removeprefix("meds."): value for key, value in overrides(args).items()}
    reading = TokenizeConfig(data=model.tokenizer.input_config(), meds=MedsConfig(**meds))
    with contract_data(args.data, reading) as (data_dir, data_config):
        score_dataset(
            model,
            data_dir,
            args.out,
            output=args.command,
            output_format=getattr(args, "format", "ehr-ssl"),
            threshold=getattr(args, "threshold", None),
            chunk_visits=args.chunk_visits,
            data_config=data_config,
            overwrite=args.overwrite,
        )
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ehr_ssl.deploy.bundle import export_bundle

    hf_logging.disable_progress_bar()
    check_outside_inputs(args.out, {"RUN": args.run_dir})
    check_output_dir(args.out, "bundle")  # --overwrite replaces a bundle, nothing else
    with output_lock(args.out):
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
    from ehr_ssl.pipeline import load_checked_config

    check_outside_inputs(args.registry, {"--data": args.data}, flag="--registry")
    config = load_checked_config(args.config, overrides(args))
    record = retrain(args.data, args.registry, config, wait=args.wait, fresh=args.fresh)
    print(
        f"version {record['version']}: "
        f"{'promoted to production' if record['promoted'] else 'not promoted'}"
    )
    for reason in record["reasons"]:
        print(f"  {reason}")
    if record["next_step"]:
        print(f"next: {record['next_step']}")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from ehr_ssl.deploy.registry import Registry

    registry = Registry.open(args.registry)
    if args.rollback is not None:
        from ehr_ssl.deploy.registry import rollback

        with registry.lock(args.wait):
            version = rollback(registry, args.rollback)
        print(f"version {version} (a copy of version {args.rollback}) is in production")
    production = registry.production_version()
    print(f"production: version {production}" if production else "production: none")
    for record in registry.history():
        metrics = record.get("candidate") or {}
        print(
            f"version {record['version']}  {record.get('time', '?')}  "
            f"{'promoted' if record.get('promoted') else 'rejected'}  "
            f"AUROC {metrics.get('auroc', float('nan')):.3f}  "
            f"test window {_window(record)}"
        )
        if record.get("rollback_of") is not None:
            print(f"  a rollback: a copy of version {record['rollback_of']}")
        if (record.get("data") or {}).get("dates_warning"):
            print(f"  warning: {record['data']['dates_warning']}")
    _print_unfinished_work(registry)
    return 0


def _print_unfinished_work(registry: Registry) -> None:
    """A killed retrain's work and its finished stages (a running retrain's is not listed)."""
    if registry.is_locked():
        print("a retrain is running")
        return
    committed = {record.get("work") for record in registry.history()}
    for work in registry.unfinished_work():
        try:
            done = ", ".join(json.loads((work / STAGES_FILE).read_text())) or "no stage"
        except (OSError, ValueError):  # none finished, or removed since
            done = "no stage"
        if work.name not in committed:  # (committed: removed by the next retrain)
            print(f"unfinished retrain: {work.name} ({done} finished; the next retrain on the "
                  "same inputs resumes it, --fresh discards it)")  # fmt: skip


def _window(record: dict) -> str:
    """The test window's visits and patients of a history record (older records: visits)."""
    test = (record.get("data") or {}).get("splits", {}).get("test", {})
    patients = f" / {test['patients']} patients" if "patients" in test else ""
    return f"{test.get('visits', '?')} visits{patients}"


def _add_score_commands(commands: argparse._SubParsersAction) -> None:
    for name, what in (
        ("predict", "P(admission within 7 days) per visit: visit_id, score"),
        ("embed", "the visit vector per visit: visit_id, embedding (bundle.json's embedding.dim)"),
    ):
        score = commands.add_parser(
            name,
            help=f"{what.split(':')[0]} for a dataset, with a model bundle",
            description=f"Write {what}, for every visit of a dataset directory, tokenized with "
            "the bundle's tokenizer. Streams in chunks of patients (bounded memory); a progress "
            "bar on a terminal, log lines otherwise. Rows come chunk by chunk: join on visit_id.",
        )
        score.add_argument(
            "--model", type=Path, required=True, help="bundle directory, or a registry"
        )
        score.add_argument(
            "--data", type=Path, required=True, help="dataset directory, or a MEDS root"
        )
        add_meds_settings(score)
        score.add_argument("--out", type=Path, required=True, help="output Parquet file")
        score.add_argument(
            "--overwrite",
            action="store_true",
            help="replace --out whatever it holds [only an earlier predict/embed output]",
        )
        score.add_argument(
            "--chunk-visits",
            type=positive_int,
            default=SCORING_CHUNK_VISITS,
            help=f"visits per chunk [{SCORING_CHUNK_VISITS}]",
        )
        score.add_argument(
            "--device", choices=DEVICES, default="auto", help="where to score [auto: cuda if any]"
        )
        if name == "predict":
            score.add_argument(
                "--format",
                choices=PREDICTION_FORMATS,
                default="ehr-ssl",
                help="ehr-ssl: visit_id, score; meds: the MEDS prediction schema (subject_id, "
                "prediction_time, boolean_value when every visit has a label, "
                "predicted_boolean_value, predicted_boolean_probability) for meds-evaluation "
                "[ehr-ssl]",
            )
            score.add_argument(
                "--threshold",
                type=float,
                help="meds: predicted_boolean_value is score >= this [none: left null]",
            )
        score.set_defaults(run=cmd_score)


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_score_commands(commands)
    bundle = commands.add_parser(
        "bundle",
        help="package a fine-tuned model of a run as a bundle",
        description="Write a model bundle (encoder, head, tokenizer, report, model card) from a "
        "run directory. `ehr-ssl run` bundles the SSL model at the main budget into RUN/bundle.",
    )
    bundle.add_argument("run_dir", metavar="RUN", type=Path, help="run directory")
    bundle.add_argument("--out", type=Path, required=True, help="bundle directory")
    bundle.add_argument("--model", default="ssl", choices=tuple(FINETUNED), help="which [ssl]")
    bundle.add_argument("--label-budget", help="label budget [the run's main one]")
    bundle.add_argument(
        "--seed", type=seed, help="fine-tuning seed [the run's smallest, its main table's]"
    )
    bundle.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    bundle.set_defaults(run=cmd_bundle)

    _add_retrain(commands)

    registry = commands.add_parser(
        "registry", help="show a registry's production version and history"
    )
    registry.add_argument("registry", type=Path, help="registry directory")
    registry.add_argument(
        "--rollback",
        type=int,
        metavar="VERSION",
        help="serve an earlier production version again (committed as the next version)",
    )
    registry.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for a retrain's lock [0]"
    )
    registry.set_defaults(run=cmd_registry)


def _add_retrain(commands: argparse._SubParsersAction) -> None:
    retrain = commands.add_parser(
        "retrain",
        help="scheduled retraining into a model registry, with a promotion gate",
        description="Warm-start from the registry's production model, continue pretraining on "
        "the dataset, fine-tune, compare candidate and production on the most recent visits "
        "(a temporal test window), and promote the candidate only if it passes the gate "
        "([retrain] table of the config). The first retrain creates the registry and trains "
        "from scratch. A lock keeps concurrent retrains apart; a killed retrain leaves the "
        "registry as it was, and the next retrain on the same data, settings and production "
        "model resumes its work from the last complete stage.",
    )
    retrain.add_argument(
        "--data", type=Path, required=True, help="dataset directory, or a MEDS root (--meds-labels)"
    )
    retrain.add_argument("--registry", type=Path, required=True, help="registry directory")
    add_config_options(retrain, "every stage's tables and [retrain]")
    add_meds_settings(retrain)
    for dotted in RETRAIN_FLAGS:
        add_setting(retrain, dotted)
    add_setting(retrain, "leakage.accept", flag="--accept-leaks")
    retrain.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for another retrain's lock [0]"
    )
    retrain.add_argument(
        "--fresh",
        action="store_true",
        help="start over: discard the work a killed retrain left instead of resuming it",
    )
    retrain.set_defaults(run=cmd_retrain)
