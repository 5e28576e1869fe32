"""The whole run: validate -> tokenize -> pretrain -> fine-tune -> baselines -> evaluate ->
bundle.

Every stage records a fingerprint of what it was made from (the data files, the settings, the
upstream stages' fingerprints) in RUN/stages.json once its outputs are complete; a later run
skips a stage whose outputs are complete with the same fingerprint, and reruns it and everything
downstream otherwise. An interrupted pretraining resumes from its last checkpoint. The test split
is read once, by the evaluate stage; every choice before it uses train and val only.

Layout of RUN:
    run_config.json   the resolved PipelineConfig
    stages.json       stage -> fingerprint of its complete outputs
    tokens/           token shards and the tokenizer (ehr_ssl.tokens.tokenizer)
    pretrain/         the pretrained encoder and its run (ehr_ssl.training.pretrain)
    models/<budget>-seed<seed>/<model>/   fine-tuned classifiers and probes
    report.json report.md predictions.parquet roc.png calibration.png label_efficiency.png
    bundle/           the SSL model at the main budget and first seed (ehr_ssl.deploy.bundle)
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ehr_ssl.atomic import atomic_write_text
from ehr_ssl.config import COUNTS, FINETUNED, PipelineConfig, parse_budget, to_dict
from ehr_ssl.data.readers import read_dataset
from ehr_ssl.data.schema import ORACLE_FILENAME
from ehr_ssl.data.summary import format_summary, summarize_dataset
from ehr_ssl.errors import InputError
from ehr_ssl.layout import (
    BUNDLE_FILE,
    CHECKPOINTS_DIR,
    FINETUNE_SUMMARY_FILE,
    MANIFEST_FILE,
    PRETRAIN_SUMMARY_FILE,
    RUN_CONFIG_FILE,
    WEIGHTS_FILE,
    RunLayout,
)

log = logging.getLogger("ehr_ssl")


def data_fingerprint(data_dir: Path) -> str:
    """Identity of a dataset directory's files: relative path, size and modification time of
    each (as make does: content is not read, so an 8M-visit dataset costs nothing to check)."""
    files = sorted(p for p in Path(data_dir).rglob("*") if p.is_file())
    entries = [
        (str(p.relative_to(data_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    ]
    return _hash(entries)


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _settings(config: Any) -> dict:
    """A stage's settings for its fingerprint: all but where it runs (moving a finished run to
    a GPU machine must not redo it)."""
    values = to_dict(config)
    values.pop("device", None)
    values.get("train", {}).pop("device", None)
    values.pop("chunk_visits", None)  # a memory bound: the tokens are the same whatever it is
    return values


def _file_hash(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Stages:
    """RUN/stages.json: the fingerprint of each complete stage, rewritten atomically."""

    def __init__(self, run_dir: Path, *, write: bool = True):
        """`write` False: a torchrun process other than rank 0, which reads but never writes."""
        self.path = RunLayout(run_dir).stages
        self.write = write
        self.done: dict[str, str] = {}
        if self.path.exists():
            try:
                self.done = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.done = {}  # a damaged record only costs a rerun

    def is_done(self, name: str, fingerprint: str, marker: Path) -> bool:
        return self.done.get(name) == fingerprint and marker.exists()

    def mark(self, name: str, fingerprint: str) -> None:
        self.done[name] = fingerprint
        if self.write:
            atomic_write_text(self.path, json.dumps(self.done, indent=2, sort_keys=True) + "\n")


def run_pipeline(
    data_dir: Path, run_dir: Path, config: PipelineConfig, *, device: str | None = None
) -> dict:
    """Run every stage that is not already complete for these inputs and settings.

    Args:
        data_dir: The dataset directory (the input contract of `ehr_ssl.data.schema`).
        run_dir: The run directory (created; reused by a later run on the same data).
        config: The resolved configuration.
        device: "auto", "cpu" or "cuda" for pretraining and fine-tuning (overrides config).

    Returns:
        The report (also written as RUN/report.json).
    """
    from transformers.utils import logging as hf_logging

    from ehr_ssl.tokens.shards import read_split
    from ehr_ssl.training import distributed
    from ehr_ssl.training.finetune import budget_split, finetune
    from ehr_ssl.training.pretrain import pretrain

    hf_logging.disable_progress_bar()
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    if device is not None:
        config.train.device = config.finetune.device = device
    if not data_dir.is_dir():
        raise InputError("dataset directory not found", file=str(data_dir))
    if run_dir.resolve() == data_dir.resolve():
        raise InputError("the run directory must not be the dataset directory", file=str(run_dir))
    # Under torchrun, pretraining and fine-tuning run on every process; the other stages, and
    # every write, on rank 0 while the others wait.
    rank = distributed.current()
    stages = _Stages(run_dir, write=rank.is_main)
    started = time.perf_counter()

    # validate + tokenize (bad input stops the run before anything is written)
    layout = RunLayout(run_dir)
    tokens_dir = layout.tokens
    tokenize_config = config.tokenize_config()
    fp_data = data_fingerprint(data_dir)
    fp_tokens = _hash(["tokens", fp_data, _settings(tokenize_config)])
    tokens_rerun = not stages.is_done("tokenize", fp_tokens, tokens_dir / MANIFEST_FILE)
    distributed.barrier()  # every process has decided what to run before anything is written
    if rank.is_main:
        _validate_and_tokenize(data_dir, run_dir, config, tokens_rerun, stages, fp_tokens)
    distributed.barrier()

    # pretrain
    pretrain_dir = layout.pretrain
    pretrain_config = config.pretrain_config()
    fp_pretrain = _hash(["pretrain", fp_tokens, _settings(pretrain_config)])
    encoder_dir = layout.encoder
    if stages.is_done("pretrain", fp_pretrain, pretrain_dir / PRETRAIN_SUMMARY_FILE):
        log.info("pretrain: unchanged since the last run, skipped")
    else:
        resume = not tokens_rerun and _resumable(pretrain_dir, pretrain_config)
        distributed.barrier()
        if not resume and rank.is_main:
            shutil.rmtree(pretrain_dir, ignore_errors=True)
        log.info("pretrain: %s preset%s -> %s", config.preset, " (resumed)" * resume, pretrain_dir)
        pretrain(tokens_dir, pretrain_dir, pretrain_config, resume=resume)
        stages.mark("pretrain", fp_pretrain)
    # Downstream stages depend on the encoder's weights themselves (a rerun on GPU need not
    # reproduce them bit for bit), not only on the settings that made them.
    fp_encoder = _file_hash(encoder_dir / WEIGHTS_FILE)

    # fine-tune every transformer model at every budget and seed (train and val only); every
    # budget is drawn first, so one the data cannot meet stops the run before any training
    labeled = [
        read_split(tokens_dir, split).filter(pl.col("labeled")).select("visit_id", "labeled")
        for split in ("train", "val")
    ]
    ids_of = {
        (budget, seed): budget_split(*labeled, parse_budget(budget), seed=seed)
        for budget in config.evaluate.budgets
        for seed in config.evaluate.seeds
    }
    fingerprints = {}
    for budget in config.evaluate.budgets:
        for seed in config.evaluate.seeds:
            ids = ids_of[budget, seed]
            for model in [m for m in config.evaluate.models if m in FINETUNED]:
                out = layout.model(budget, seed, model)
                ft_config = config.finetune_config(FINETUNED[model], seed)
                fp = _hash(["finetune", fp_tokens, fp_encoder, budget, seed, model,
                            _settings(ft_config)])  # fmt: skip
                name = f"finetune {model} {budget}-seed{seed}"
                if stages.is_done(name, fp, out / FINETUNE_SUMMARY_FILE):
                    log.info("%s: unchanged since the last run, skipped", name)
                    fingerprints[name] = _file_hash(out / FINETUNE_SUMMARY_FILE)
                    continue
                step_started = time.perf_counter()
                summary = finetune(
                    tokens_dir, encoder_dir, out, ft_config, train_ids=ids[0], val_ids=ids[1]
                )
                stages.mark(name, fp)
                fingerprints[name] = _file_hash(out / FINETUNE_SUMMARY_FILE)
                log.info(
                    "%s: %d train / %d val labels, val AUROC %.3f (%.0f s)",
                    name,
                    summary["train_labeled"],
                    summary["val_labeled"],
                    summary["val_auroc"],
                    time.perf_counter() - step_started,
                )

    # baselines + evaluate: the only stage that reads the test split
    has_oracle = (data_dir / ORACLE_FILENAME).exists()
    fp_eval = _hash(
        ["evaluate", fp_tokens, fp_encoder, fingerprints, to_dict(config.evaluate),
         fp_data if has_oracle else None]
    )  # fmt: skip
    if rank.is_main:
        _evaluate_and_bundle(run_dir, config, data_dir if has_oracle else None, stages, fp_eval)
    distributed.barrier()
    report = json.loads(layout.report.read_text())
    log.info("run: complete in %.0f s -> %s", time.perf_counter() - started, run_dir)
    return report


def _validate_and_tokenize(
    data_dir: Path,
    run_dir: Path,
    config: PipelineConfig,
    rerun: bool,
    stages: _Stages,
    fingerprint: str,
) -> None:
    """The validate and tokenize stages (bad input stops the run before anything is written)."""
    from ehr_ssl.tokens.tokenize import tokenize_dataset

    started = time.perf_counter()
    tokenize_config = config.tokenize_config()
    if rerun:
        dataset = read_dataset(data_dir, tokenize_config.data)
        summary = summarize_dataset(dataset, lookback_days=tokenize_config.tokenizer.lookback_days)
        del dataset
        log.info("validate: %s\n%s", data_dir, format_summary(summary))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RunLayout(run_dir).config, json.dumps(to_dict(config), indent=2) + "\n")
    if not rerun:
        log.info("validate + tokenize: unchanged since the last run, skipped")
        return
    tokenize_dataset(data_dir, RunLayout(run_dir).tokens, tokenize_config, overwrite=True)
    stages.mark("tokenize", fingerprint)
    log.info("tokenize: -> %s (%.0f s)", RunLayout(run_dir).tokens, time.perf_counter() - started)


def _evaluate_and_bundle(
    run_dir: Path,
    config: PipelineConfig,
    oracle_dir: Path | None,
    stages: _Stages,
    fingerprint: str,
) -> None:
    """The evaluate stage (the only one that reads the test split), then the bundle of the
    reference model at the main budget, ready for `ehr-ssl predict`."""
    from ehr_ssl.deploy.bundle import export_bundle

    layout = RunLayout(run_dir)
    if stages.is_done("evaluate", fingerprint, layout.report):
        log.info("evaluate: unchanged since the last run, skipped")
    else:
        evaluate_run(oracle_dir, run_dir, config)
        stages.mark("evaluate", fingerprint)
    if "ssl" in config.evaluate.models:
        fp_bundle = _hash(["bundle", fingerprint])
        if not stages.is_done("bundle", fp_bundle, layout.bundle / BUNDLE_FILE):
            export_bundle(run_dir, layout.bundle, model="ssl", overwrite=True)
            stages.mark("bundle", fp_bundle)
            log.info("bundle: -> %s", layout.bundle)


def _resumable(pretrain_dir: Path, config: Any) -> bool:
    """An interrupted pretraining of the same configuration (on unchanged tokens) can resume."""
    saved = pretrain_dir / RUN_CONFIG_FILE
    if not (saved.exists() and (pretrain_dir / CHECKPOINTS_DIR).is_dir()):
        return False
    try:
        return json.loads(saved.read_text()).get("config") == to_dict(config)
    except json.JSONDecodeError:
        return False


def evaluate_run(oracle_dir: Path | None, run_dir: Path, config: PipelineConfig) -> dict:
    """Fit the counts baselines (train, val), score every model on the test split once, and
    write the report, the plots and predictions.parquet to `run_dir`.

    `oracle_dir` is a dataset directory with an oracle.parquet (true probabilities; the
    synthetic cohort ships one), or None.
    """
    from ehr_ssl.evaluation.baselines import count_features, score_counts_baseline
    from ehr_ssl.evaluation.report import build_report, write_report
    from ehr_ssl.tokens.shards import read_split
    from ehr_ssl.tokens.tokenizer import Tokenizer
    from ehr_ssl.training.finetune import budget_split, labeled_split, predict_finetuned
    from ehr_ssl.training.pretrain import resolve_device

    layout = RunLayout(run_dir)
    tokens_dir, encoder_dir = layout.tokens, layout.encoder
    missing = [
        layout.model(budget, seed, model)
        for budget in config.evaluate.budgets
        for seed in config.evaluate.seeds
        for model in config.evaluate.models
        if model in FINETUNED
        and not (layout.model(budget, seed, model) / FINETUNE_SUMMARY_FILE).exists()
    ]
    if missing:
        raise InputError(
            f"incomplete run: {len(missing)} fine-tuned model(s) missing, e.g. {missing[0]} "
            "(`ehr-ssl run` completes it)",
            file=str(run_dir),
        )
    tokenizer = Tokenizer.load(tokens_dir)
    sizes = {"vocab_size": tokenizer.vocab_size, "n_bins": tokenizer.config.n_bins}
    columns = ["visit_id", "patient_id", "labeled", "label", "input_ids", "value_bins",
               "segment_ids"]  # fmt: skip
    train = read_split(tokens_dir, "train").filter(pl.col("labeled")).select(columns)
    val = read_split(tokens_dir, "val").filter(pl.col("labeled")).select(columns)
    test_ds = labeled_split(tokens_dir, "test")
    test = read_split(tokens_dir, "test").filter(pl.col("labeled")).select(columns)
    if test.height == 0 or test["label"].n_unique() < 2:
        raise InputError(
            f"the test split needs labeled visits of both classes to evaluate, has {test.height}",
            file=str(tokens_dir),
        )
    assert test_ds.meta["visit_id"].equals(test["visit_id"])
    x_test = count_features(test, **sizes)
    device = resolve_device(config.finetune.device)
    base = test.select("visit_id", "patient_id", pl.lit("test").alias("split"), "label")

    frames, selection = [], {}
    for budget in config.evaluate.budgets:
        for seed in config.evaluate.seeds:
            train_ids, val_ids = budget_split(train, val, parse_budget(budget), seed=seed)
            scores: dict[str, np.ndarray] = {}
            for model in config.evaluate.models:
                key = f"{budget}-seed{seed}/{model}"
                if model in FINETUNED:
                    out = layout.model(budget, seed, model)
                    summary = json.loads((out / FINETUNE_SUMMARY_FILE).read_text())
                    selection[key] = {
                        k: summary.get(k) for k in ("val_auroc", "selected_epoch", "selected_C")
                    }
                    scores[model] = predict_finetuned(out, encoder_dir, test_ds, device)
                else:
                    scores[model], record = score_counts_baseline(
                        COUNTS[model],
                        train.filter(pl.col("visit_id").is_in(train_ids.implode())),
                        val.filter(pl.col("visit_id").is_in(val_ids.implode())),
                        x_test,
                        **sizes,
                        seed=seed,
                    )
                    selection[key] = {"val_auroc": record["val_auroc"], "chosen": record["chosen"]}
            for model, score in scores.items():
                frames.append(
                    base.with_columns(
                        model=pl.lit(model),
                        score=pl.Series(score, dtype=pl.Float64),
                        budget=pl.lit(budget),
                        seed=pl.lit(seed, dtype=pl.Int64),
                        train_labels=pl.lit(len(train_ids), dtype=pl.Int64),
                    )
                )
    predictions = pl.concat(frames).select(
        "visit_id", "patient_id", "split", "model", "score", "label", "budget", "seed",
        "train_labels",
    )  # fmt: skip
    oracle = None
    if oracle_dir is not None:
        oracle = pl.read_parquet(Path(oracle_dir) / ORACLE_FILENAME)
    report = build_report(
        predictions,
        main_budget=config.evaluate.label_budget,
        reference="ssl",
        oracle=oracle,
        n_boot=config.evaluate.n_boot,
        seed=0,
        settings={
            "preset": config.preset,
            "pretraining": to_dict(config.pretrain_config()),
            "finetune": to_dict(config.finetune),
            "evaluate": to_dict(config.evaluate),
            "tokenizer": to_dict(config.tokenizer),
        },
        selection=selection,
    )
    write_report(predictions, report, run_dir)
    return report
