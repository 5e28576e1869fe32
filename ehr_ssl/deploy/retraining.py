"""Scheduled retraining (`ehr-ssl retrain`): warm-start from the production model, continue
pretraining on the new data, fine-tune, compare candidate and production on the same fresh test
window, and promote the candidate only when it passes the gate."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from ehr_ssl.artifacts import sha256_file
from ehr_ssl.atomic import atomic_write_text
from ehr_ssl.config import COUNTS, TABULAR, PipelineConfig
from ehr_ssl.data.meds_input import contract_data
from ehr_ssl.data.readers import read_oracle
from ehr_ssl.data.splits import temporal_splits
from ehr_ssl.deploy.registry import Registry
from ehr_ssl.errors import InputError
from ehr_ssl.layout import (
    BUNDLE_FILE,
    CANDIDATE_DIR,
    ENCODER_DIR,
    FINETUNE_SUMMARY_FILE,
    MANIFEST_FILE,
    RETRAIN_REPORT_JSON,
    RETRAIN_REPORT_MD,
    RunLayout,
)
from ehr_ssl.model.encoder import resolve_model_settings
from ehr_ssl.settings import to_dict
from ehr_ssl.training.stages import (
    Stages,
    data_identity,
    pretrain_stage,
    stage_hash,
    stage_settings,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ehr_ssl.config import FinetuneConfig
    from ehr_ssl.deploy.bundle import AdmissionModel
    from ehr_ssl.evaluation.scoring import LabelBudget

log = logging.getLogger("ehr_ssl")


@dataclass(frozen=True)
class _Production:
    """The production model a retrain warm-starts from and competes with (none at first)."""

    version: int | None
    model: AdmissionModel | None
    # The last version production has not fallen below (itself, unless it was promoted within
    # the AUROC tolerance of the one before): scored on the window too, so that promotions each
    # a little worse cannot add up (`gate`). None: production is its own anchor.
    anchor: int | None = None
    anchor_model: AdmissionModel | None = None


def retrain(
    data_dir: Path,
    registry_dir: Path,
    config: PipelineConfig,
    *,
    wait: float = 0.0,
    fresh: bool = False,
) -> dict:
    """Retrain on the dataset at `data_dir` and record the outcome in the registry.

    The split is temporal (`ehr_ssl.data.splits.temporal_splits`): the most recent visits are
    the test window, read once for the comparison; the other patients are split into train and
    val. With a production model, its tokenizer is kept (the encoder's embeddings are tied to
    its vocabulary: new codes read as their class or [UNK], and the drift section says how
    many [UNK]); a first
    retrain fits a tokenizer on train and pretrains from scratch. Tokens are cached in the
    registry under the production tokenizer, so a retrain on a dataset that grew tokenizes only
    the new and changed visits (`ehr_ssl.tokens.incremental`). Everything else is built in the
    registry's work/ and committed at the end (`ehr_ssl.deploy.registry.Registry.commit`); a
    retrain killed before that is resumed by the next one on the same data, settings and
    production model, from its last complete stage (pretraining from its last checkpoint).

    Args:
        data_dir: The dataset directory (the input contract; labels needed), or a MEDS root
            with its ED visits' label file (`config.meds`).
        registry_dir: The registry (created on the first retrain).
        config: Pipeline settings; `config.retrain` holds the window, the warm start and gate.
        wait: Seconds to wait for another retrain's lock before giving up.
        fresh: Discard the work a killed retrain left instead of resuming it.

    Returns:
        The history record: version, promoted, reasons, figures of both models, drift.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError("dataset directory not found", file=str(data_dir))
    # every architecture setting recorded; a bad [model] key stops before the registry is touched
    config.model = resolve_model_settings(config.model)
    config.check_stages_fit()
    if config.train.include_test_unlabeled:  # the window is the prospective check: unseen
        raise InputError(
            "a retrain never pretrains on its test window (the gate's check of the future)",
            setting="train.include_test_unlabeled",
        )
    started = time.perf_counter()
    # a MEDS root is read in the contract's form (a temporary copy); its key is its own files
    with contract_data(data_dir, config.tokenize_config()) as (contract_dir, data_config):
        config.data = data_config  # a MEDS root's: its static columns, its static rows
        registry = Registry.open(registry_dir, create=True)
        with registry.lock(wait):
            production = _load_production(registry)  # what serves once the lock is ours
            key = work_key(data_dir, config, registry, production)
            with registry.work_dir(key, fresh=fresh) as work:
                work_of = _Work(contract_dir, RunLayout(work), Stages(work), key)
                record, promote, reasons, bundle = _retrain_stages(
                    work_of, config, registry, production
                )
                version = registry.commit(bundle, record | {"work": work.name}, promote=promote)
    log.info(
        "retrain: version %d %s (%s) in %.0f s",
        version,
        "promoted to production" if promote else "not promoted",
        "; ".join(reasons),
        time.perf_counter() - started,
    )
    report = registry.version_path(version) / RETRAIN_REPORT_MD
    return {"version": version, "promoted": promote, **record,
            "next_step": next_step(promote, production.version, str(report))}  # fmt: skip


@dataclass(frozen=True)
class _Work:
    """Where one retrain's stages run: its work directory laid out as a run directory (plus the
    candidate's fine-tuning), its stage record, and the key of its inputs."""

    data_dir: Path
    layout: RunLayout
    stages: Stages
    key: str

    @property
    def fp_tokens(self) -> str:
        """The tokens' fingerprint: the key names every input they are made from."""
        return stage_hash(["tokens", self.key])


# Changes with the work directory's layout: a killed retrain of another layout is not resumed.
WORK_FORMAT = 1


def work_key(
    data_dir: Path, config: PipelineConfig, registry: Registry, production: _Production
) -> str:
    """The identity of a retrain's inputs (16 hex digits): the data files (path, size and
    modification time, as `ehr-ssl run` checks them), every setting but the memory bounds, the
    kind of device pretraining runs on, and the production model it warm-starts from (its
    version, anchor and bundle checksums). A killed retrain's work is resumed only by a
    retrain with the same key."""
    from ehr_ssl.training.device import resolve_device

    settings = to_dict(config)
    # "auto" is CPU on one machine, CUDA on another: a checkpoint resumes only on its kind
    settings["pretraining_device"] = resolve_device(config.train.device).type
    for bound in ("chunk_visits", "chunk_events"):  # memory bounds: the same tokens
        settings.pop(bound, None)
    served = None
    if production.version is not None:
        bundle = registry.version_path(production.version) / BUNDLE_FILE
        served = [production.version, production.anchor, sha256_file(bundle)]
    identity = ["retrain", WORK_FORMAT, data_identity(data_dir, config), settings, served]
    return stage_hash(identity)[:16]


def _retrain_stages(
    work: _Work, config: PipelineConfig, registry: Registry, production: _Production
) -> tuple[dict, bool, list, Path]:
    """Every stage of a retrain in its work directory, each skipped when a killed retrain with
    the same key finished it. Returns the history record, the decision, its reasons and the
    bundle to commit."""
    layout = work.layout
    manifest, counts, tokens_rerun = _tokenize(work, config, registry, production)
    check_window_after_production(manifest, registry, production.version)
    registry.prune_work(keep=layout.root)  # this retrain's input is checked: it goes on
    # the label budget is drawn (and checked against the labels) before any training
    ft_config = config.finetune_config("full", config.evaluate.main_seed)
    budget = _draw_budget(layout, config, ft_config)
    fp_encoder = _pretrain(work, config, registry, production, tokens_rerun=tokens_rerun)
    summary = _finetune_candidate(work, budget, ft_config, fp_encoder)
    report = _compare_on_test_window(work, budget, production, config, ft_config, fp_encoder)
    models = report["models"]
    promote, reasons = gate(
        models["candidate"], models.get("production"), config,
        anchor=models.get("anchor"), anchor_version=production.anchor,
    )  # fmt: skip
    drift = _drift(layout.tokens, manifest, production)
    record = _history_record(
        report, reasons, production.version, config, manifest, counts, summary, drift
    ) | {"anchor_version": anchor_version(promote, models, production)}
    documents = _retrain_report_documents(record, promote, drift)
    bundle_dir = _save_bundle(layout, config, ft_config, production.version, report, documents)
    return record, promote, reasons, bundle_dir


def next_step(promote: bool, production: int | None, report: str) -> str | None:
    """What the user should do after a retrain that was not promoted (None when it was);
    `report` names the retrain report."""
    if promote:
        return None
    if production is not None:
        return f"production stays version {production}; the candidate's figures are in {report}"
    return (
        "no model is in production yet: this version is kept but not served. Read "
        f"{report} for the failed checks; more labeled visits (retrain.label_budget), more "
        "pretraining (train.epochs) or a longer test window (retrain.test_fraction) are the "
        "usual cures; lower a [retrain] gate threshold only after reviewing that report, then "
        "run `ehr-ssl retrain` again"
    )


def _load_production(registry: Registry) -> _Production:
    from ehr_ssl.deploy.bundle import load_bundle

    version = registry.production_version()
    if version is None:
        log.info("retrain: no production model yet, training from scratch")
        return _Production(None, None)
    model = load_bundle(registry.version_path(version))
    log.info("retrain: warm start from production version %d", version)
    anchor = registry.record(version).get("anchor_version")
    if anchor is None or anchor == version:
        return _Production(version, model)
    if not registry.version_path(anchor).is_dir():
        log.warning("retrain: version %d, the gate's anchor, was deleted: not compared", anchor)
        return _Production(version, model)
    return _Production(version, model, anchor, load_bundle(registry.version_path(anchor)))


def _tokenize(
    work: _Work, config: PipelineConfig, registry: Registry, production: _Production
) -> tuple[dict, dict, bool]:
    """Tokenize with a temporal split (the test window: the most recent visits), under the
    production tokenizer if there is one (or find the tokens a killed retrain made). Returns
    the manifest, each split's counts and whether the tokens were made anew."""
    from ehr_ssl.tokens.shards import read_manifest
    from ehr_ssl.tokens.tokenize import tokenize_dataset

    tokens_dir, fingerprint = work.layout.tokens, work.fp_tokens
    rerun = not work.stages.is_done("tokenize", fingerprint, tokens_dir / MANIFEST_FILE)
    if rerun:
        split_config = replace(config.split, test_fraction=config.retrain.test_fraction)

        def splits(visits: pl.DataFrame) -> pl.Series:
            return temporal_splits(visits["patient_id"], visits["prediction_time"], split_config)

        _screen_for_leaks(work.data_dir, config, splits)
        warm = production.model is not None
        shutil.rmtree(tokens_dir, ignore_errors=True)  # a killed tokenization's
        tokenize_dataset(
            work.data_dir,
            tokens_dir,
            config.tokenize_config(),
            tokenizer=production.model.tokenizer if warm else None,
            splits=splits,
            # a dataset that only grew since the last retrain: only what is new is tokenized
            cache_dir=registry.token_cache_dir if warm else None,
            split_settings={"test": "retrain.test_fraction (the test window, --test-fraction)"},
            require_classes=True,
        )
        work.stages.mark("tokenize", fingerprint)
    else:
        log.info("retrain: tokens of the interrupted retrain kept")
    manifest = read_manifest(tokens_dir)  # as written: a resumed retrain reads the same
    counts = {k: {c: v[c] for c in ("visits", "patients", "labeled", "positives")}
              for k, v in manifest["splits"].items()}  # fmt: skip
    log.info("retrain: tokenized %s", json.dumps(counts))
    warning = shifted_dates_warning(*manifest["arrival_time_range"])
    if warning:
        log.warning("retrain: %s", warning)
    return manifest, counts, rerun


def _screen_for_leaks(data_dir: Path, config: PipelineConfig, splits: Callable) -> None:
    """The label-leak screen of `ehr-ssl run` and `validate`, on the labels of the retrain's
    train and val visits (never the test window's): a new code that nearly separates admitted
    from discharged visits, an order recorded after the outcome, would otherwise pass the gate
    with an excellent window AUROC. Stops (InputError) on a code `leakage.accept` does not
    accept."""
    from ehr_ssl.data.leakage import screen_dataset
    from ehr_ssl.data.readers import read_dataset

    dataset = read_dataset(data_dir, config.tokenize_config().data)
    leaks = screen_dataset(dataset, config, splits=splits)
    if leaks:
        log.info("retrain: accepted codes the leak screen flags: %s",
                 ", ".join(leak["code"] for leak in leaks))  # fmt: skip


# A date later than this many days after today, or a data span longer than this many years, is
# not a hospital's real calendar: de-identified exports (MIMIC-IV: 2110-2214) shift each
# patient's dates by their own offset.
FUTURE_DAYS, MAX_SPAN_YEARS = 1, 40


def shifted_dates_warning(first: str, last: str, today: datetime | None = None) -> str | None:
    """A warning when the dataset's dates (first, last arrival) look shifted per patient (the
    window "most recent by prediction_time" then mixes patients of every real era), else None."""
    first_time, last_time = datetime.fromisoformat(first), datetime.fromisoformat(last)
    today = (today or datetime.now(UTC)).replace(tzinfo=None)
    future = (last_time - today).days > FUTURE_DAYS
    span = (last_time - first_time).days / 365.25 > MAX_SPAN_YEARS
    if not (future or span):
        return None
    why = (
        f"visits dated up to {last_time.date()}, after today"
        if future
        else (f"visits spanning {first_time.date()} to {last_time.date()}")
    )
    return (
        f"dates look shifted per patient ({why}): the test window, the most recent visits by "
        "prediction_time, is then no later in real time than training; compare candidates "
        "on a patient split (`ehr-ssl run`) or un-shift the dates first"
    )


def trained_until(manifest: dict) -> str | None:
    """The latest prediction time among the train and val visits (what a model trained on)."""
    ends = [split["prediction_time_range"][1] for name, split in manifest["splits"].items()
            if name != "test" and split.get("prediction_time_range")]  # fmt: skip
    return max(ends, key=datetime.fromisoformat) if ends else None


def check_window_after_production(manifest: dict, registry: Registry, version: int | None) -> None:
    """The test window must come after every visit the production model trained on: the
    warm start inherits its weights, and the gate scores it on the window. A window reaching
    back into its training (a larger retrain.test_fraction, back-filled data) would grade
    both on visits whose labels they learned from.

    Raises:
        InputError: naming retrain.test_fraction, the window's start and production's end.
    """
    if version is None:
        return
    end = (registry.record(version).get("data") or {}).get("trained_until")
    if end is None:  # recorded before trained_until: arrival times would not decide it
        log.warning("retrain: production version %d has no trained_until (an older record): "
                    "the test window is not checked against its training", version)  # fmt: skip
        return
    start = manifest["splits"]["test"]["prediction_time_range"][0]  # as the window is drawn
    if datetime.fromisoformat(start) <= datetime.fromisoformat(end):
        raise InputError(
            f"the test window starts at {start}, within what production version {version} "
            f"trained on (up to {end}): a warm start from it, and its own scores, would be "
            "graded on visits whose labels they learned; keep the window after that (a "
            "smaller retrain.test_fraction, or newer data)",
            setting="retrain.test_fraction",
        )


def _pretrain(
    work: _Work,
    config: PipelineConfig,
    registry: Registry,
    production: _Production,
    *,
    tokens_rerun: bool,
) -> str:
    """Continued pretraining from the production encoder (warm), or pretraining from scratch;
    a killed one resumes from its last checkpoint. Returns the hash of the encoder's weights."""
    pretrain_config = config.pretrain_config()
    init_encoder = None
    if production.version is not None:  # (a copy: the caller's config keeps its epochs)
        train = replace(config.train, epochs=config.retrain.pretrain_epochs)
        pretrain_config = replace(pretrain_config, train=train)
        init_encoder = registry.version_path(production.version) / ENCODER_DIR
    return pretrain_stage(work.layout, work.stages, pretrain_config, work.fp_tokens,
                          tokens_rerun=tokens_rerun, init_encoder=init_encoder)  # fmt: skip


def _draw_budget(
    layout: RunLayout, config: PipelineConfig, ft_config: FinetuneConfig
) -> LabelBudget:
    """The candidate's label budget among the labeled train and val visits (the test window is
    not read); a budget the labels cannot meet stops the retrain here, before pretraining."""
    from ehr_ssl.evaluation.scoring import draw_label_budget, read_labeled

    train, val = read_labeled(layout.tokens, "train"), read_labeled(layout.tokens, "val")
    return draw_label_budget(
        train, val, config.retrain.label_budget, seed=ft_config.seed, config=ft_config,
        setting="retrain.label_budget",
    )  # fmt: skip


def _finetune_candidate(
    work: _Work, budget: LabelBudget, ft_config: FinetuneConfig, fp_encoder: str
) -> dict:
    """Fine-tune the candidate on its label budget (or find the one a killed retrain
    finished). Returns the fine-tuning summary, as written."""
    from ehr_ssl.training.finetune import finetune

    out = work.layout.root / CANDIDATE_DIR
    fingerprint = stage_hash(["finetune", work.key, fp_encoder, stage_settings(ft_config)])
    if not work.stages.is_done("finetune", fingerprint, out / FINETUNE_SUMMARY_FILE):
        shutil.rmtree(out, ignore_errors=True)  # a killed fine-tuning's
        finetune(work.layout.tokens, work.layout.encoder, out, ft_config,
                 train_ids=budget.train_ids, val_ids=budget.val_ids)  # fmt: skip
        work.stages.mark("finetune", fingerprint)
    return json.loads((out / FINETUNE_SUMMARY_FILE).read_text())


def _compare_on_test_window(
    work: _Work,
    budget: LabelBudget,
    production: _Production,
    config: PipelineConfig,
    ft_config: FinetuneConfig,
    fp_encoder: str,
) -> dict:
    """The test window, read once (a killed retrain's comparison is kept, never redone):
    candidate, production and the counts and tabular baselines (for the model card's
    comparison, on the same labels) on the same visits. Returns the report, as written."""
    layout = work.layout
    summary = layout.root / CANDIDATE_DIR / FINETUNE_SUMMARY_FILE
    fingerprint = stage_hash(["compare", work.key, fp_encoder, sha256_file(summary)])
    if work.stages.is_done("compare", fingerprint, layout.report):
        log.info("retrain: the test window's comparison of the interrupted retrain kept")
    else:
        report = _score_test_window(work.data_dir, layout, budget, production, config, ft_config)
        atomic_write_text(layout.report, json.dumps(report, indent=2) + "\n")
        work.stages.mark("compare", fingerprint)
    return json.loads(layout.report.read_text())  # tuples read back as lists either way


def _score_test_window(
    data_dir: Path,
    layout: RunLayout,
    budget: LabelBudget,
    production: _Production,
    config: PipelineConfig,
    ft_config: FinetuneConfig,
) -> dict:
    """The comparison's report (see `_compare_on_test_window`)."""
    from ehr_ssl.evaluation.report import build_report
    from ehr_ssl.evaluation.scoring import read_test_split, score_models
    from ehr_ssl.training.device import resolve_device

    test = read_test_split(
        layout.tokens,
        shortage="the test window needs labeled visits of both classes, has {n} "
        "(raise retrain.test_fraction)",
        file=data_dir,
    )
    device = resolve_device(config.finetune.device)
    row_scorers = {} if production.model is None else {"production": production.model.score_tokens}
    if production.anchor_model is not None:
        row_scorers["anchor"] = production.anchor_model.score_tokens
    predictions, _ = score_models(
        test,
        budget,
        ["candidate", *row_scorers, *COUNTS, *TABULAR],
        finetuned={"candidate": layout.root / CANDIDATE_DIR},
        encoder_dir=layout.encoder,
        device=device,
        row_scorers=row_scorers,
    )
    return build_report(
        predictions,
        main_budget=config.retrain.label_budget,
        reference="candidate",
        oracle=read_oracle(data_dir),
        n_boot=config.evaluate.n_boot,
        seed=0,
        settings={"retrain": to_dict(config.retrain), "finetune": to_dict(ft_config)},
    )


def _drift(tokens_dir: Path, manifest: dict, production: _Production) -> dict | None:
    """The new data against what the production model was trained on (None without one)."""
    from ehr_ssl.deploy.drift import compare_profiles, data_profile
    from ehr_ssl.tokens.shards import read_split

    everything = pl.concat([read_split(tokens_dir, s) for s in ("train", "val", "test")])
    new_profile = data_profile(everything, manifest["vocab_size"])
    model = production.model
    if model is None or model.profile is None:
        return None
    return compare_profiles(model.profile, new_profile, model.tokenizer.vocab)


def _history_record(
    report: dict,
    reasons: list,
    production_version: int | None,
    config: PipelineConfig,
    manifest: dict,
    counts: dict,
    summary: dict,
    drift: dict | None,
) -> dict:
    """The registry history's record of this retrain (the version is added on commit)."""
    from ehr_ssl.evaluation.report import model_metrics

    production = report["models"].get("production")
    return {
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reasons": reasons,
        "warm_start_from": production_version,
        "production_version": production_version,
        "candidate": model_metrics(report, "candidate"),
        "production": model_metrics(report, "production"),
        "candidate_minus_production": None
        if production is None
        else production["reference_minus_this"],
        "gate": to_dict(config.retrain),
        "data": {
            "splits": counts,
            "test_window_from": manifest["splits"]["test"]["arrival_time_range"][0],
            "trained_until": trained_until(manifest),
            "dates_warning": shifted_dates_warning(*manifest["arrival_time_range"]),
        },
        # the test window's sample-size warnings and the candidate's measured calibration
        "caveats": (report.get("caveats") or {}).get("warnings", []),
        "calibration": (report.get("calibration") or {}).get("statement"),
        "finetune": {"train_labels": summary["train_labeled"],
                     "val_labels": summary["val_labeled"], "val_auroc": summary["val_auroc"]},
        "drift": None if drift is None else {
            "code_frequency_jsd": drift["code_frequency_jsd"],
            **{k: drift[k] for k in ("unknown_code_share", "prevalence", "events_per_visit")},
        },
    }  # fmt: skip


def _save_bundle(
    layout: RunLayout,
    config: PipelineConfig,
    ft_config: FinetuneConfig,
    production_version: int | None,
    report: dict,
    documents: dict[str, str],
) -> Path:
    """The candidate as a bundle in the work directory, ready to commit, with `documents` (the
    retrain report) among its files and checksums."""
    from ehr_ssl.deploy.bundle import make_bundle
    from ehr_ssl.evaluation.report import model_metrics

    bundle = make_bundle(
        layout.tokens,
        layout.encoder,
        layout.root / CANDIDATE_DIR,
        info={
            "model": "ssl",
            "mode": "full",
            "label_budget": config.retrain.label_budget,
            "seed": ft_config.seed,
            "preset": config.preset,
            "warm_start": None
            if production_version is None
            else f"registry version {production_version}",
            "test_metrics": model_metrics(report, "candidate"),
        },
        report=report,
    )
    return bundle.save(layout.bundle, overwrite=True, documents=documents)  # a killed commit's


def _retrain_report_documents(record: dict, promote: bool, drift: dict | None) -> dict[str, str]:
    """The retrain report the version's bundle ships: file name -> text (Markdown and JSON)."""
    from ehr_ssl.deploy.bundle import day_of
    from ehr_ssl.deploy.drift import format_drift_markdown

    # A bundle is shared: its documents date the window, the history keeps the exact times.
    data = record["data"]
    dated = {key: day_of(data.get(key)) for key in ("test_window_from", "trained_until")}
    record = record | {"data": data | dated}
    report_md = format_retrain_report(record, promote)
    step = next_step(promote, record["production_version"], "this report")
    if step:
        report_md += f"\n**Next:** {step}.\n"
    if drift is not None:
        report_md += "\n" + format_drift_markdown(drift)
    report_json = json.dumps({**record, "drift": drift}, indent=2) + "\n"
    return {RETRAIN_REPORT_MD: report_md, RETRAIN_REPORT_JSON: report_json}


def anchor_version(promote: bool, models: dict, production: _Production) -> int | None:
    """The gate's anchor of the version being committed: None (itself) when it is promoted
    without falling below production's AUROC on the window nor the anchor's, else
    production's anchor (production itself when that is its own)."""
    candidate = models["candidate"]["auroc"]
    below = [m for m in (models.get("production"), models.get("anchor")) if m is not None]
    if promote and all(candidate >= m["auroc"] for m in below):
        return None
    return production.anchor or production.version


def gate(
    candidate: dict,
    production: dict | None,
    config: PipelineConfig,
    *,
    anchor: dict | None = None,
    anchor_version: int | None = None,
) -> tuple[bool, list]:
    """The promotion decision: (promote, reasons). Every check is listed, failed ones first.
    `anchor`: the window's figures of `anchor_version`, the last version production has not
    fallen below (`_Production.anchor`): the tolerance counts from it as well, so that
    promotions each within it of the one before cannot add up to a worse model."""
    g = config.retrain
    checks = [
        (candidate["auroc"] >= g.min_auroc,
         f"candidate AUROC {candidate['auroc']:.3f} vs minimum {g.min_auroc:.3f}"),
    ]  # fmt: skip
    if production is not None:
        floor = production["auroc"] - g.max_auroc_drop
        checks.append(
            (
                candidate["auroc"] >= floor,
                f"candidate AUROC {candidate['auroc']:.3f} vs production "
                f"{production['auroc']:.3f} - {g.max_auroc_drop:.3f} tolerance",
            )
        )
    if anchor is not None:
        floor = anchor["auroc"] - g.max_auroc_drop
        checks.append(
            (
                candidate["auroc"] >= floor,
                f"candidate AUROC {candidate['auroc']:.3f} vs version {anchor_version} "
                f"{anchor['auroc']:.3f} (the last production did not fall below) - "
                f"{g.max_auroc_drop:.3f} tolerance",
            )
        )
    slope, intercept = candidate["calibration_slope"], candidate["calibration_intercept"]
    checks.append(
        (
            slope is not None and g.calibration_slope_min <= slope <= g.calibration_slope_max,
            f"calibration slope {_fmt(slope)} in [{g.calibration_slope_min:g}, "
            f"{g.calibration_slope_max:g}]",
        )
    )
    checks.append(
        (
            intercept is not None and abs(intercept) <= g.max_abs_calibration_intercept,
            f"|calibration intercept| {_fmt(intercept)} <= {g.max_abs_calibration_intercept:g}",
        )
    )
    failed = [f"FAILED {text}" for ok, text in checks if not ok]
    passed = [f"passed {text}" for ok, text in checks if ok]
    return not failed, failed + passed


def _window_counts(record: dict) -> str:
    """The test window's size: visits, patients, labeled visits and positives."""
    test = record["data"]["splits"]["test"]
    return (f"{test['visits']} visits of {test.get('patients', '?')} patients, "
            f"{test['labeled']} labeled ({test['positives']} admitted)")  # fmt: skip


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def format_retrain_report(record: dict, promote: bool) -> str:
    """The retrain report's decision and comparison, as Markdown."""
    lines = [
        f"# Retrain: {'PROMOTED' if promote else 'NOT PROMOTED'}",
        "",
        f"{record['time']}; warm start from "
        f"{record['warm_start_from'] if record['warm_start_from'] is not None else 'nothing'}; "
        f"test window from {record['data']['test_window_from']}: {_window_counts(record)}.",
        "",
        *(
            [f"**Warning:** {record['data']['dates_warning']}.", ""]
            if record["data"].get("dates_warning")
            else []
        ),  # fmt: skip
        *[f"**Warning:** {w}." for w in record.get("caveats") or []],
        *([""] if record.get("caveats") else []),
        "## Gate",
        "",
        *[f"- {reason}" for reason in record["reasons"]],
        "",
        "## Test window",
        "",
        "| model | AUROC (95% CI) | AUPRC | Brier | cal. slope | cal. intercept | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("candidate", "production"):
        m = record[name]
        if m is None:
            continue
        low, high = m["auroc_ci95"]
        lines.append(
            f"| {name} | {m['auroc']:.3f} ({low:.3f}–{high:.3f}) | {m['auprc']:.3f} | "
            f"{m['brier']:.3f} | {_fmt(m['calibration_slope'])} | "
            f"{_fmt(m['calibration_intercept'])} | {m['n']} |"
        )
    if record.get("calibration"):
        lines += ["", f"Candidate calibration on the test window: {record['calibration']}."]
    diff = record.get("candidate_minus_production")
    if diff:
        low, high = diff["ci95"]
        lines += [
            "",
            f"Candidate minus production (paired patient bootstrap): {diff['difference']:+.3f} "
            f"({low:+.3f} to {high:+.3f}), p={diff['p_value']:.3f}.",
        ]
    return "\n".join(lines) + "\n"
