"""`ehr-ssl pretrain` and `finetune`: the training commands (torchrun launches them as they are)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ehr_ssl.cli.options import add_config_options, add_setting, is_main_process, overrides
from ehr_ssl.config import FinetuneConfig
from ehr_ssl.errors import InputError
from ehr_ssl.layout import ENCODER_DIR, MODEL_CONFIG_FILE
from ehr_ssl.outputs import check_output_dir, check_outside_inputs
from ehr_ssl.settings import load_config, read_toml

log = logging.getLogger("ehr_ssl")

# Settings with a flag of their own (every other one: --config or --set).
PRETRAIN_FLAGS = ("train.max_steps", "train.epochs", "train.device", "train.precision",
                  "train.batch_size", "train.learning_rate", "train.num_workers", "train.seed",
                  "objective.masked_weight", "objective.contrastive_weight",
                  "objective.forecast_weight", "train.include_test_unlabeled", "train.compile",
                  "train.tensorboard")  # fmt: skip
FINETUNE_FLAGS = ("mode", "label_budget", "learning_rate", "encoder_lr_ratio", "warmup_epochs",
                  "batch_size", "max_epochs", "patience", "selection", "seed", "device",
                  "precision")  # fmt: skip


def cmd_pretrain(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ehr_ssl.pipeline import load_checked_config
    from ehr_ssl.training.distributed import process_group
    from ehr_ssl.training.pretrain import pretrain

    hf_logging.disable_progress_bar()  # transformers' own save bars; our logs stay plain lines
    check_output_dir(args.out, "pretrain")  # at once, before the configuration is read
    config = load_checked_config(args.config, overrides(args)).pretrain_config()
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


def _finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    """[finetune] of the --config file (or the whole file when it has no such table), then the
    flags and --set finetune.KEY=VALUE."""
    values = {}
    for dotted, value in overrides(args).items():
        section, _, key = dotted.partition(".")
        if section != "finetune" or not key:
            raise InputError("finetune takes only finetune.KEY settings", setting=dotted)
        values[key] = value
    base = {}
    if args.config is not None:
        file_values = read_toml(args.config)
        table = file_values.get("finetune", file_values)
        base = table if isinstance(table, dict) else {}
    return load_config(FinetuneConfig, None, values, base=base, source=str(args.config or "config"))


def cmd_finetune(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ehr_ssl.training.distributed import process_group
    from ehr_ssl.training.finetune import finetune

    hf_logging.disable_progress_bar()
    check_output_dir(args.out, "finetune")  # at once, before any model is read
    config = _finetune_config(args)
    nested = args.encoder / ENCODER_DIR
    encoder = nested if nested.is_dir() else args.encoder
    if not (encoder / MODEL_CONFIG_FILE).is_file():
        raise InputError("not a pretrained encoder (no config.json)", file=str(args.encoder))
    check_outside_inputs(args.out, {"--tokens": args.tokens, "--encoder": args.encoder})
    started = time.perf_counter()
    with process_group(config.device):
        summary = finetune(args.tokens, encoder, args.out, config)
    log.info("finetune: wrote %s (%.1f s)", args.out, time.perf_counter() - started)
    if is_main_process():
        print(
            f"{summary['mode']}: {summary['train_labeled']} train and {summary['val_labeled']} val "
            f"labels; validation AUROC {summary['val_auroc']:.3f} -> {args.out}"
        )
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    pretrain = commands.add_parser(
        "pretrain",
        help="self-supervised pretraining of the encoder on token shards",
        description="Pretrain the encoder with masked-event modeling and the forecast term (and, "
        "on request, contrastive visits) on "
        "every visit of the patients outside the test split (labeled or not). Writes the "
        "encoder (safetensors + config.json), the tokenizer, the resolved config, metrics.jsonl "
        "and checkpoints. Unset options take the --config file's value, else the preset's.",
    )
    pretrain.add_argument("--tokens", type=Path, required=True, help="tokens directory")
    pretrain.add_argument("--out", type=Path, required=True, help="run directory")
    add_setting(pretrain, "preset")
    add_config_options(pretrain, "preset and [model], [objective], [train]")
    pretrain.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    for dotted in PRETRAIN_FLAGS:
        add_setting(pretrain, dotted)
    pretrain.set_defaults(run=cmd_pretrain)

    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a pretrained encoder for admission within 7 days",
        description="Train a classifier for admission within 7 days on the labeled train visits "
        "(optionally a label budget of them), choosing the epoch (or the probe's "
        "regularization) on the budget's labels (cv folds over them up to "
        "finetune.cv_max_labels, the validation split above: finetune.selection); never "
        "reads the test split. The "
        "positive class is weighted by n_negative / n_positive. Unset options take the "
        "--config file's [finetune] value, else the default in brackets.",
    )
    finetune.add_argument("--tokens", type=Path, required=True, help="tokens directory")
    finetune.add_argument(
        "--encoder", type=Path, required=True, help="pretrain run directory (or its encoder/)"
    )
    finetune.add_argument("--out", type=Path, required=True, help="output directory")
    add_config_options(finetune, "a [finetune] table", examples="finetune.learning_rate=1e-4")
    for key in FINETUNE_FLAGS:
        add_setting(finetune, f"finetune.{key}")
    finetune.set_defaults(run=cmd_finetune)
