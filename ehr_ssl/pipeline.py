"""The whole run (`ehr-ssl run`): validate -> tokenize -> pretrain -> fine-tune -> baselines ->
evaluate -> bundle, each a small step that is skipped when its outputs are complete with the same
fingerprint. The run directory's files are named in `ehr_ssl.layout`."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ehr_ssl.artifacts import sha256_file
from ehr_ssl.atomic import atomic_write_text
from ehr_ssl.config import (
    DEVICES,
    FINETUNED,
    PipelineConfig,
    load_pipeline_config,
    parse_budget,
)
from ehr_ssl.data.leakage import screen_dataset
from ehr_ssl.data.meds_input import contract_data
from ehr_ssl.data.readers import (
    Dataset,
    dataset_files,
    is_present,
    read_dataset,
    read_oracle,
    read_visits,
)
from ehr_ssl.data.schema import LABELS, ORACLE_FILENAME
from ehr_ssl.data.splits import visit_splits
from ehr_ssl.data.summary import format_summary, summarize_dataset
from ehr_ssl.errors import InputError
from ehr_ssl.layout import (
    BUNDLE_FILE,
    FINETUNE_SUMMARY_FILE,
    MANIFEST_FILE,
    MEDS_PREDICTIONS_DIR,
    MODEL_CONFIG_FILE,
    VALIDATION_PREDICTIONS_FILE,
    WEIGHTS_FILE,
    RunLayout,
)
from ehr_ssl.model.encoder import CODE_ANCESTORS_BUFFER, resolve_model_settings
from ehr_ssl.outputs import check_output_dir, check_outside_inputs, mark_output_dir, output_lock
from ehr_ssl.settings import NO_FILE, check_choice, naming_source, to_dict
from ehr_ssl.training import distributed
from ehr_ssl.training.stages import (
    Stages,
    data_identity,
    pretrain_stage,
    stage_hash,
    stage_settings,
)

log = logging.getLogger("ehr_ssl")


def load_checked_config(path: Path | None, overrides: dict[str, Any]) -> PipelineConfig:
    """`load_pipeline_config`, with the [model] table checked too: by the encoder's own config,
    which needs torch, hence not in `ehr_ssl.config` (which `tokenize` reads). A bad setting of
    the file then stops here, naming the file, as one of the other tables does."""
    config = load_pipeline_config(path, overrides)
    try:
        config.model = resolve_model_settings(config.model)
    except InputError as e:
        given = frozenset(key for key, value in overrides.items() if value is not None)
        raise naming_source(e, str(path) if path else NO_FILE, given) from None
    return config


@dataclass(frozen=True)
class _Run:
    """What every stage of one run reads: where, with which settings, and the stage record."""

    data_dir: Path
    layout: RunLayout
    config: PipelineConfig
    stages: Stages
    is_main: bool  # under torchrun, rank 0: the one process that writes


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

    Raises:
        InputError: before anything is written, when `run_dir` is a file, a non-empty directory
            other than a run directory, at, inside or above `data_dir`, or being written by
            another process (rank 0 holds its lock for the whole run).
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    if device is not None:
        check_choice(device, DEVICES, "device")
    config.check_stages_fit()
    _check_directories(data_dir, run_dir)
    with (
        output_lock(run_dir, enabled=distributed.current().is_main, clean_inside=True),
        contract_data(data_dir, config.tokenize_config()) as (contract_dir, data_config),
    ):
        config.data = data_config  # a MEDS root's: its static columns, its static rows
        return _run_pipeline(contract_dir, run_dir, config, data_identity(data_dir, config),
                             device=device)  # fmt: skip


def _run_pipeline(
    data_dir: Path, run_dir: Path, config: PipelineConfig, fp_data: str, *, device: str | None
) -> dict:
    """`run_pipeline` once the run directory is checked and locked."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if device is not None:
        config.train.device = config.finetune.device = device
    # every architecture setting recorded; a bad [model] key stops the run before tokenizing
    config.model = resolve_model_settings(config.model)
    # Under torchrun, pretraining and fine-tuning run on every process; the other stages, and
    # every write, on rank 0 while the others wait.
    rank = distributed.current()
    stages = Stages(run_dir, write=rank.is_main)
    run = _Run(data_dir, RunLayout(run_dir), config, stages, rank.is_main)
    started = time.perf_counter()

    fp_tokens, tokens_rerun = _tokenize_step(run, fp_data)
    label_budgets = _draw_label_budgets(run)  # a budget the labels cannot meet stops us here
    fp_encoder = _pretrain_step(run, fp_tokens, tokens_rerun=tokens_rerun)
    fingerprints = _finetune_step(run, fp_tokens, fp_encoder, label_budgets)
    _evaluate_step(run, fp_data, fp_tokens, fp_encoder, fingerprints)

    report = json.loads(run.layout.report.read_text())
    log.info("run: complete in %.0f s -> %s", time.perf_counter() - started, run_dir)
    return report


def _check_directories(data_dir: Path, run_dir: Path) -> None:
    """The run directory is new, empty or a run directory, and outside the dataset (a run
    inside it would change the data's fingerprint, and so never resume)."""
    check_outside_inputs(run_dir, {"--data": data_dir})
    check_output_dir(run_dir, "run")
    if not data_dir.is_dir():
        raise InputError("dataset directory not found", file=str(data_dir))


def _tokenize_step(run: _Run, fp_data: str) -> tuple[str, bool]:
    """Validate + tokenize (bad input stops the run before anything is written). Returns the
    tokens' fingerprint and whether they were made anew."""
    fp_tokens = stage_hash(["tokens", fp_data, stage_settings(run.config.tokenize_config())])
    rerun = not run.stages.is_done("tokenize", fp_tokens, run.layout.tokens / MANIFEST_FILE)
    distributed.barrier()  # every process has decided what to run before anything is written
    if run.is_main:
        _validate_and_tokenize(
            run.data_dir, run.layout.root, run.config, rerun, run.stages, fp_tokens
        )
    distributed.barrier()
    return fp_tokens, rerun


def _pretrain_step(run: _Run, fp_tokens: str, *, tokens_rerun: bool) -> str:
    """Pretrain, or resume an interrupted pretraining on unchanged tokens. Returns the
    fingerprint of the encoder's weights."""
    return pretrain_stage(run.layout, run.stages, run.config.pretrain_config(), fp_tokens,
                          tokens_rerun=tokens_rerun, is_main=run.is_main)  # fmt: skip


def _finetune_step(
    run: _Run,
    fp_tokens: str,
    fp_encoder: str,
    label_budgets: dict[tuple[str, int], tuple[pl.Series, pl.Series]],
) -> dict[str, str]:
    """Fine-tune every transformer model at every budget and seed (train and val only; the
    visit ids of `_draw_label_budgets`). Returns each fine-tuning's name -> the hash of its
    summary."""
    fingerprints = {}
    models = [m for m in run.config.evaluate.models if m in FINETUNED]
    # A scratch model takes the encoder's shape, not its weights: a new pretraining of the same
    # shape leaves it as it is.
    fp_shape = _architecture_hash(run.layout.encoder) if "scratch" in models else None
    for (budget, seed), ids in label_budgets.items():
        for model in models:
            fp_from = fp_shape if FINETUNED[model] == "scratch" else fp_encoder
            name, summary_hash = _finetune_model(run, budget, seed, model, ids, fp_tokens, fp_from)
            fingerprints[name] = summary_hash
    return fingerprints


def _draw_label_budgets(run: _Run) -> dict[tuple[str, int], tuple[pl.Series, pl.Series]]:
    """The (train, val) visit ids of every budget and seed, drawn right after tokenizing: a
    budget the labels cannot meet (more visits than are labeled, one class only) stops the run
    before it trains anything, naming the setting and the counts."""
    from ehr_ssl.tokens.shards import read_split
    from ehr_ssl.training.budgets import budget_split

    labeled = [
        read_split(run.layout.tokens, split)
        .filter(pl.col("labeled"))
        .select("visit_id", "labeled", "label")
        for split in ("train", "val")
    ]
    evaluate = run.config.evaluate
    return {
        (budget, seed): budget_split(
            *labeled,
            parse_budget(budget),
            seed=seed,
            selection=run.config.finetune.selection,
            cv_max_labels=run.config.finetune.cv_max_labels,
            setting="evaluate.label_budget"
            if budget == evaluate.label_budget
            else "evaluate.label_budgets",
        )
        for budget in evaluate.budgets
        for seed in evaluate.seeds
    }


def _finetune_model(
    run: _Run,
    budget: str,
    seed: int,
    model: str,
    ids: tuple[pl.Series, pl.Series],
    fp_tokens: str,
    fp_from: str,
) -> tuple[str, str]:
    """One fine-tuning, unless complete with the same fingerprint (`fp_from`: what it reads
    of the pretraining). Returns its name and the hash of its summary."""
    from ehr_ssl.training.finetune import finetune

    out = run.layout.model(budget, seed, model)
    ft_config = run.config.finetune_config(FINETUNED[model], seed)
    fp = stage_hash(
        ["finetune", fp_tokens, fp_from, budget, seed, model, stage_settings(ft_config)]
    )
    name = f"finetune {model} {budget}-seed{seed}"
    if run.stages.is_done(name, fp, out / FINETUNE_SUMMARY_FILE):
        log.info("%s: unchanged since the last run, skipped", name)
        return name, sha256_file(out / FINETUNE_SUMMARY_FILE)
    started = time.perf_counter()
    summary = finetune(
        run.layout.tokens, run.layout.encoder, out, ft_config, train_ids=ids[0], val_ids=ids[1]
    )
    run.stages.mark(name, fp)
    log.info(
        "%s: %d train / %d val labels, val AUROC %.3f (%.0f s)",
        name,
        summary["train_labeled"],
        summary["val_labeled"],
        summary["val_auroc"],
        time.perf_counter() - started,
    )
    return name, sha256_file(out / FINETUNE_SUMMARY_FILE)


def _architecture_hash(encoder_dir: Path) -> str:
    """What a scratch model takes from the pretrained encoder: its architecture (config.json)
    and its code hierarchy (`code_ancestor_ids`, data made from the vocabulary), not its
    weights (`build_classifier`)."""
    from safetensors import safe_open

    digest = hashlib.sha256((encoder_dir / MODEL_CONFIG_FILE).read_bytes())
    with safe_open(encoder_dir / WEIGHTS_FILE, "pt") as weights:
        if CODE_ANCESTORS_BUFFER in weights.keys():  # noqa: SIM118 (safe_open has no "in")
            digest.update(weights.get_tensor(CODE_ANCESTORS_BUFFER).numpy().tobytes())
    return digest.hexdigest()


def _evaluate_step(
    run: _Run, fp_data: str, fp_tokens: str, fp_encoder: str, fingerprints: dict[str, str]
) -> None:
    """Baselines + evaluate (the only stage that reads the test split), then the bundle."""
    has_oracle = is_present(run.data_dir / ORACLE_FILENAME)
    fp_eval = stage_hash(
        ["evaluate", fp_tokens, fp_encoder, fingerprints, to_dict(run.config.evaluate),
         fp_data if has_oracle else None]
    )  # fmt: skip
    if run.is_main:
        oracle_dir = run.data_dir if has_oracle else None
        _evaluate_and_bundle(run, oracle_dir, fp_eval)
    distributed.barrier()


def _validate_and_tokenize(
    data_dir: Path,
    run_dir: Path,
    config: PipelineConfig,
    rerun: bool,
    stages: Stages,
    fingerprint: str,
) -> None:
    """The validate and tokenize stages (bad input stops the run before anything is written)."""
    from ehr_ssl.tokens.tokenize import tokenize_dataset

    started = time.perf_counter()
    tokenize_config = config.tokenize_config()
    if rerun:
        dataset = read_dataset(data_dir, tokenize_config.data)
        summary = summarize_dataset(dataset, lookback_days=tokenize_config.tokenizer.lookback_days)
        summary["suspected_leaks"] = screen_dataset(dataset, config)  # stops on one not accepted
        _check_trainable_labels(dataset, data_dir, config)
        del dataset
        log.info("validate: %s\n%s", data_dir, format_summary(summary))
    layout = RunLayout(run_dir)
    mark_output_dir(run_dir, "run")  # created once the data passed validation
    atomic_write_text(layout.config, json.dumps(to_dict(config), indent=2) + "\n")
    if not rerun:
        log.info("validate + tokenize: unchanged since the last run, skipped")
        return
    # the run trains next: a split whose labels miss a class stops it here
    tokenize_dataset(data_dir, layout.tokens, tokenize_config, overwrite=True, require_classes=True)
    stages.mark("tokenize", fingerprint)
    log.info("tokenize: -> %s (%.0f s)", layout.tokens, time.perf_counter() - started)


def _check_trainable_labels(dataset: Dataset, data_dir: Path, config: PipelineConfig) -> None:
    """A run trains: its labels must exist and each split's hold both classes. Checked before
    the run directory is written (the tokenize stage checks the same again as it writes)."""
    from ehr_ssl.tokens.tokenize import SPLIT_SETTINGS, check_split_classes, sizing_settings

    source = str(data_dir / LABELS.filename)
    if dataset.labels is None or dataset.labels.height == 0:
        raise InputError(
            "no labeled visits: `run` fine-tunes and evaluates on labels (tokenize, pretrain "
            "and embed need none)",
            file=source,
        )
    split = visit_splits(dataset.visits, config.split)
    settings = sizing_settings(dataset.visits, SPLIT_SETTINGS)
    check_split_classes(dataset.visits["visit_id"], split, dataset.labels,
                        settings=settings, required=True, source=source)  # fmt: skip


def _evaluate_and_bundle(run: _Run, oracle_dir: Path | None, fingerprint: str) -> None:
    """The evaluate stage (the only one that reads the test split), then the bundle of the
    reference model at the main budget, ready for `ehr-ssl predict`."""
    from ehr_ssl.deploy.bundle import export_bundle

    layout, config, stages, run_dir = run.layout, run.config, run.stages, run.layout.root
    if stages.is_done("evaluate", fingerprint, layout.report):
        log.info("evaluate: unchanged since the last run, skipped")
    else:
        evaluate_run(oracle_dir, run_dir, config, data_dir=run.data_dir)
        stages.mark("evaluate", fingerprint)
    if "ssl" in config.evaluate.models:
        fp_bundle = stage_hash(["bundle", fingerprint])  # fingerprint holds the seeds (main_seed)
        if not stages.is_done("bundle", fp_bundle, layout.bundle / BUNDLE_FILE):
            check_output_dir(layout.bundle, "bundle")
            export_bundle(run_dir, layout.bundle, model="ssl", overwrite=True)
            stages.mark("bundle", fp_bundle)
            log.info("bundle: -> %s", layout.bundle)


def evaluate_run(
    oracle_dir: Path | None,
    run_dir: Path,
    config: PipelineConfig,
    *,
    data_dir: Path | None = None,
) -> dict:
    """Fit the counts baselines (train, val), score every model on the test split once, and
    write the report, the plots and predictions.parquet to `run_dir`.

    `oracle_dir` is a dataset directory with an oracle.parquet (true probabilities; the
    synthetic cohort ships one), or None. `data_dir` is the dataset directory, whose visits'
    static columns (sex, age, ...) give the report's subgroups; None: no subgroups.
    """
    from ehr_ssl.evaluation.predictions import write_predictions
    from ehr_ssl.evaluation.report import build_report, write_report

    layout = RunLayout(run_dir)
    _check_finetuned_models(layout, config)
    predictions, selection = _score_test_split(layout, config)
    validation, thresholds_from = _score_validation(layout, config)
    oracle = read_oracle(oracle_dir) if oracle_dir is not None else None
    statics = meds_keys = None
    if data_dir is None:
        log.warning("evaluate: no dataset given (--data), so the report has no subgroups and "
                    "no meds_predictions/ are written")  # fmt: skip
    else:  # read once: the subgroups' statics and the MEDS predictions' keys
        (visits_path,) = dataset_files(Path(data_dir))["visits"]
        visits, static_columns, _, _ = read_visits(visits_path, config.data)
        visits = _the_runs_visits(predictions, visits, str(visits_path))
        statics = visits.select("visit_id", *static_columns)
        meds_keys = _meds_keys(visits, str(visits_path))
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
        validation=validation,
        thresholds_from=thresholds_from,
        statics=statics,
    )
    if validation is not None:  # the scores the operating thresholds were fixed on
        write_predictions(validation, layout.root / VALIDATION_PREDICTIONS_FILE)
    if meds_keys is not None:
        _write_meds_predictions(predictions, meds_keys, layout)
    write_report(predictions, report, run_dir)  # report.json last: its files are in place
    return report


def _the_runs_visits(predictions: pl.DataFrame, visits: pl.DataFrame, source: str) -> pl.DataFrame:
    """`visits` (checked, from `source`) with the run's visit_id type, checked to hold every
    test visit of the run before anything is written: InputError otherwise (another dataset)."""
    from ehr_ssl.evaluation.predictions import check_test_visits_in, with_run_visit_ids

    visits = with_run_visit_ids(visits, predictions, file=source)
    check_test_visits_in(predictions, visits, source)
    return visits


def _meds_keys(visits: pl.DataFrame, source: str) -> pl.DataFrame | None:
    """The MEDS prediction schema's keys of the run's `visits` (from `source`); None when
    patient ids are not integers as MEDS subject ids are (then no MEDS predictions)."""
    from ehr_ssl.evaluation.predictions import meds_keys

    if not visits.schema["patient_id"].is_integer():
        log.info("evaluate: no MEDS predictions (MEDS subject ids are integers, these are not)")
        return None
    return meds_keys(visits, None, source)


def _write_meds_predictions(
    predictions: pl.DataFrame, keys: pl.DataFrame, layout: RunLayout
) -> None:
    """The test predictions in the MEDS prediction schema (RUN/meds_predictions/)."""
    from ehr_ssl.evaluation.predictions import write_meds_test_predictions

    n = write_meds_test_predictions(predictions, keys, layout.root / MEDS_PREDICTIONS_DIR)
    log.info("evaluate: %d MEDS prediction files -> %s", n, layout.root / MEDS_PREDICTIONS_DIR)


def _check_finetuned_models(layout: RunLayout, config: PipelineConfig) -> None:
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
            file=str(layout.root),
        )


def _score_validation(
    layout: RunLayout, config: PipelineConfig, model: str = "ssl"
) -> tuple[pl.DataFrame | None, str | None]:
    """The reference model's scores on validation visits at the main budget, every seed (the
    report's operating thresholds are fixed on them); (None, None) when it is not fine-tuned."""
    from ehr_ssl.evaluation.scoring import draw_label_budget, read_labeled, score_validation
    from ehr_ssl.training.device import resolve_device

    if model not in config.evaluate.models or model not in FINETUNED:
        return None, None
    train, val = read_labeled(layout.tokens, "train"), read_labeled(layout.tokens, "val")
    device, name = resolve_device(config.finetune.device), config.evaluate.label_budget
    frames, source = [], None
    for seed in config.evaluate.seeds:
        budget = draw_label_budget(train, val, name, seed=seed, config=config.finetune)
        frame, source = score_validation(
            budget, val, model, finetune_dir=layout.model(name, seed, model),
            encoder_dir=layout.encoder, tokens_dir=layout.tokens, device=device,
        )  # fmt: skip
        frames.append(frame)
    return pl.concat(frames), source


def _score_test_split(layout: RunLayout, config: PipelineConfig) -> tuple[pl.DataFrame, dict]:
    """Every model at every budget and seed on the test split (read once). Returns the
    predictions and the choices made on val, keyed "<budget>-seed<seed>/<model>"."""
    from ehr_ssl.evaluation.scoring import (
        draw_label_budget,
        read_labeled,
        read_test_split,
        score_models,
    )
    from ehr_ssl.training.device import resolve_device

    test = read_test_split(
        layout.tokens,
        shortage="the test split needs labeled visits of both classes to evaluate, has {n}",
        file=layout.tokens,
    )
    train, val = read_labeled(layout.tokens, "train"), read_labeled(layout.tokens, "val")
    device = resolve_device(config.finetune.device)
    frames, selection = [], {}
    for budget_name in config.evaluate.budgets:
        for seed in config.evaluate.seeds:
            budget = draw_label_budget(train, val, budget_name, seed=seed, config=config.finetune)
            finetuned = {model: layout.model(budget_name, seed, model)
                         for model in config.evaluate.models if model in FINETUNED}  # fmt: skip
            predictions, chosen = score_models(
                test, budget, config.evaluate.models,
                finetuned=finetuned, encoder_dir=layout.encoder, device=device,
            )  # fmt: skip
            frames.append(predictions)
            selection |= {f"{budget_name}-seed{seed}/{m}": c for m, c in chosen.items()}
    return pl.concat(frames), selection
