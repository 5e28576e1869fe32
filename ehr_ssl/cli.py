"""The `ehr-ssl` command: parses arguments and calls one library function per subcommand.

Exit status: 0 success, 2 bad input or configuration (one line on stderr naming the file, the
column and the problem), 1 an internal error. Logs carry counts and paths, never identifiers.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import time
from pathlib import Path

from ehr_ssl import __version__
from ehr_ssl.config import PRESETS, TokenizeConfig, load_config, load_pretrain_config
from ehr_ssl.data.readers import read_dataset
from ehr_ssl.data.summary import format_summary, summarize_dataset
from ehr_ssl.errors import InputError, TrainingError
from ehr_ssl.shards import format_manifest

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


def _tokenize_config(args: argparse.Namespace) -> TokenizeConfig:
    return load_config(
        TokenizeConfig,
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
    from ehr_ssl.tokenizer import tokenize_dataset

    config = _tokenize_config(args)
    started = time.perf_counter()
    manifest = tokenize_dataset(args.data, args.out, config, overwrite=args.overwrite)
    log.info("tokenize: wrote %s (%.1f s)", args.out, time.perf_counter() - started)
    print(format_manifest(manifest))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ehr_ssl.train import pretrain

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


def cmd_demo(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ehr_ssl.data.synthetic import generate_cohort, write_cohort
    from ehr_ssl.tokenizer import tokenize_dataset
    from ehr_ssl.train import pretrain

    hf_logging.disable_progress_bar()
    data_dir, tokens_dir, run_dir = args.out / "data", args.out / "tokens", args.out / "pretrain"
    log.info("demo 1/4 synth: %d visits (seed %d) -> %s", args.visits, args.seed, data_dir)
    cohort = generate_cohort(args.visits, labeled_frac=0.05, seed=args.seed)
    write_cohort(cohort, data_dir, overwrite=True)
    log.info("demo 2/4 validate: %s", data_dir)
    config = TokenizeConfig()
    summary = summarize_dataset(
        read_dataset(data_dir, config.data), lookback_days=config.tokenizer.lookback_days
    )
    print(format_summary(summary))
    log.info("demo 3/4 tokenize: -> %s", tokens_dir)
    manifest = tokenize_dataset(data_dir, tokens_dir, config, overwrite=True)
    print()
    print(format_manifest(manifest))
    log.info("demo 4/4 pretrain (small preset, %d epochs): -> %s", args.epochs, run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    pretrain_config = load_pretrain_config(
        None, {"preset": "small", "train.epochs": args.epochs, "train.device": "auto"}
    )
    summary = pretrain(tokens_dir, run_dir, pretrain_config)
    final = summary["final_metrics"]
    print()
    print(
        f"pretrained encoder: {summary['steps']} steps on {summary['pretraining_visits']:,} "
        f"visits; final loss {final['loss']:.3f} (masked code {final['masked_code']:.3f}, value "
        f"bin {final['masked_bin']:.3f}, contrastive {final['contrastive']:.3f}) -> {run_dir}"
    )
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

    demo = commands.add_parser(
        "demo",
        help="run the pipeline on a synthetic cohort",
        description="Synthesize a cohort, validate it, tokenize it and pretrain the small "
        "encoder on it (fine-tuning and evaluation are added as they exist), printing the "
        "summaries. Replaces OUT/data, OUT/tokens and OUT/pretrain.",
        formatter_class=formatter,
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory")
    demo.add_argument("--visits", type=_positive_int, default=20_000, help="synthetic visits")
    demo.add_argument("--seed", type=_seed, default=0, help="random seed")
    demo.add_argument("--epochs", type=_positive_int, default=3, help="pretraining epochs")
    demo.set_defaults(run=cmd_demo)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
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


if __name__ == "__main__":
    sys.exit(main())
