"""Scheduled retraining (`ehr-ssl retrain`): warm-start from the production model, continue
pretraining on the new data, fine-tune, compare candidate and production on the same fresh test
window, and promote the candidate only when it passes the gate.

The split is temporal (`ehr_ssl.data.splits.temporal_splits`): the most recent visits are the
test window, read once for the comparison; the other patients are split into train and val. With
a production model, its tokenizer is kept (the encoder's embeddings are tied to its vocabulary:
new codes read as [UNK], and the drift section says how many); a first retrain fits a tokenizer
on train and pretrains from scratch. Tokens are cached in the registry under the production
tokenizer, so a retrain on a dataset that grew tokenizes only the new and changed visits
(`ehr_ssl.tokens.incremental`). Everything else is built in the registry's tmp/ and committed
at the end (`ehr_ssl.deploy.registry.Registry.commit`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from ehr_ssl.atomic import atomic_write_text
from ehr_ssl.config import COUNTS, PipelineConfig, parse_budget, to_dict
from ehr_ssl.data.splits import temporal_splits
from ehr_ssl.deploy.registry import Registry
from ehr_ssl.errors import InputError

log = logging.getLogger("ehr_ssl")


def retrain(
    data_dir: Path, registry_dir: Path, config: PipelineConfig, *, wait: float = 0.0
) -> dict:
    """Retrain on the dataset at `data_dir` and record the outcome in the registry.

    Args:
        data_dir: The dataset directory (the input contract; labels needed).
        registry_dir: The registry (created on the first retrain).
        config: Pipeline settings; `config.retrain` holds the window, the warm start and gate.
        wait: Seconds to wait for another retrain's lock before giving up.

    Returns:
        The history record: version, promoted, reasons, figures of both models, drift.
    """
    from transformers.utils import logging as hf_logging

    from ehr_ssl.data.schema import ORACLE_FILENAME
    from ehr_ssl.deploy.bundle import load_bundle, make_bundle
    from ehr_ssl.deploy.drift import compare_profiles, data_profile, format_drift_markdown
    from ehr_ssl.evaluation.baselines import count_features, score_counts_baseline
    from ehr_ssl.evaluation.report import build_report, model_metrics
    from ehr_ssl.tokens.shards import read_split
    from ehr_ssl.tokens.tokenize import tokenize_dataset
    from ehr_ssl.tokens.tokenizer import Tokenizer
    from ehr_ssl.training.finetune import budget_ids, finetune, labeled_split, predict_finetuned
    from ehr_ssl.training.pretrain import pretrain, resolve_device

    hf_logging.disable_progress_bar()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError("dataset directory not found", file=str(data_dir))
    started = time.perf_counter()
    registry = Registry.open(registry_dir, create=True)
    settings = config.retrain
    with registry.lock(wait), registry.work_dir() as work:
        production_version = registry.production_version()
        production = None
        if production_version is not None:
            production = load_bundle(registry.version_path(production_version))
            log.info("retrain: warm start from production version %d", production_version)
        else:
            log.info("retrain: no production model yet, training from scratch")

        # tokenize with a temporal split (the test window: the most recent visits)
        split_config = replace(config.split, test_fraction=settings.test_fraction)
        tokens_dir = work / "tokens"
        manifest = tokenize_dataset(
            data_dir,
            tokens_dir,
            config.tokenize_config(),
            tokenizer=None if production is None else production.tokenizer,
            splits=lambda v: temporal_splits(v["patient_id"], v["prediction_time"], split_config),
            # a dataset that only grew since the last retrain: only what is new is tokenized
            cache_dir=None if production is None else registry.token_cache_dir,
        )
        counts = {k: {c: v[c] for c in ("visits", "labeled", "positives")}
                  for k, v in manifest["splits"].items()}  # fmt: skip
        log.info("retrain: tokenized %s", json.dumps(counts))

        # continued pretraining (warm) or pretraining from scratch
        pretrain_config = config.pretrain_config()
        if production is not None:
            pretrain_config.train.epochs = settings.pretrain_epochs
        pretrain(
            tokens_dir,
            work / "pretrain",
            pretrain_config,
            init_encoder=None
            if production is None
            else registry.version_path(production_version) / "encoder",
        )
        encoder_dir = work / "pretrain" / "encoder"

        # fine-tune the candidate (train and val only)
        budget = parse_budget(settings.label_budget)
        ft_config = config.finetune_config("full", config.evaluate.seeds[0])
        train_ids, val_ids = budget_ids(tokens_dir, budget, seed=ft_config.seed)
        finetune_dir = work / "finetune"
        summary = finetune(
            tokens_dir, encoder_dir, finetune_dir, ft_config, train_ids=train_ids, val_ids=val_ids
        )

        # the comparison on the test window: read once, both models on the same visits
        test_ds = labeled_split(tokens_dir, "test")
        test = read_split(tokens_dir, "test").filter(pl.col("labeled"))
        if test.height == 0 or test["label"].n_unique() < 2:
            raise InputError(
                f"the test window needs labeled visits of both classes, has {test.height} "
                "(raise retrain.test_fraction)",
                file=str(data_dir),
            )
        device = resolve_device(config.finetune.device)
        scores = {"candidate": predict_finetuned(finetune_dir, encoder_dir, test_ds, device)}
        if production is not None:
            scores["production"] = production.score_tokens(test)
        # the counts baselines on the same labels, for the model card's comparison
        columns = ["visit_id", "patient_id", "label", "input_ids", "value_bins", "segment_ids"]
        tokenizer = Tokenizer.load(tokens_dir)
        sizes = {"vocab_size": tokenizer.vocab_size, "n_bins": tokenizer.config.n_bins}
        train, val = (
            read_split(tokens_dir, split).filter(pl.col("visit_id").is_in(ids.implode()))
            for split, ids in (("train", train_ids), ("val", val_ids))
        )
        x_test = count_features(test, **sizes)
        for name, kind in COUNTS.items():
            scores[name], _ = score_counts_baseline(
                kind, train.select(columns), val.select(columns), x_test, **sizes,
                seed=ft_config.seed,
            )  # fmt: skip
        base = test.select("visit_id", "patient_id", pl.lit("test").alias("split"), "label")
        predictions = pl.concat(
            base.with_columns(model=pl.lit(name), score=pl.Series(score, dtype=pl.Float64),
                              budget=pl.lit(settings.label_budget), seed=pl.lit(ft_config.seed),
                              train_labels=pl.lit(summary["train_labeled"]))
            for name, score in scores.items()
        )  # fmt: skip
        oracle_path = data_dir / ORACLE_FILENAME
        report = build_report(
            predictions,
            main_budget=settings.label_budget,
            reference="candidate",
            oracle=pl.read_parquet(oracle_path) if oracle_path.exists() else None,
            n_boot=config.evaluate.n_boot,
            seed=0,
            settings={"retrain": to_dict(settings), "finetune": to_dict(ft_config)},
        )
        candidate = report["models"]["candidate"]
        current = report["models"].get("production")
        difference = None if current is None else current["reference_minus_this"]
        promote, reasons = gate(candidate, current, config)

        # drift: the new data against what the production model was trained on
        everything = pl.concat([read_split(tokens_dir, s) for s in ("train", "val", "test")])
        new_profile = data_profile(everything, manifest["vocab_size"])
        drift = None
        if production is not None and production.profile is not None:
            drift = compare_profiles(production.profile, new_profile, production.tokenizer.vocab)

        record = {
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reasons": reasons,
            "warm_start_from": production_version,
            "production_version": production_version,
            "candidate": model_metrics(report, "candidate"),
            "production": model_metrics(report, "production"),
            "candidate_minus_production": difference,
            "gate": to_dict(settings),
            "data": {
                "splits": counts,
                "test_window_from": manifest["splits"]["test"]["arrival_time_range"][0],
            },
            "finetune": {"train_labels": summary["train_labeled"],
                         "val_labels": summary["val_labeled"], "val_auroc": summary["val_auroc"]},
            "drift": None if drift is None else {
                "code_frequency_jsd": drift["code_frequency_jsd"],
                **{k: drift[k] for k in ("unknown_code_share", "prevalence", "events_per_visit")},
            },
        }  # fmt: skip
        bundle = make_bundle(
            tokens_dir,
            encoder_dir,
            finetune_dir,
            info={
                "model": "ssl",
                "mode": "full",
                "label_budget": settings.label_budget,
                "seed": ft_config.seed,
                "preset": config.preset,
                "warm_start": None
                if production_version is None
                else f"registry version {production_version}",
                "test_metrics": model_metrics(report, "candidate"),
            },
            report=report,
        )
        bundle_dir = bundle.save(work / "bundle")
        report_md = format_retrain_report(record, promote)
        if drift is not None:
            report_md += "\n" + format_drift_markdown(drift)
        atomic_write_text(bundle_dir / "retrain_report.md", report_md)
        atomic_write_text(bundle_dir / "retrain_report.json", json.dumps(
            {**record, "drift": drift}, indent=2) + "\n")  # fmt: skip
        version = registry.commit(bundle_dir, record, promote=promote)
    log.info(
        "retrain: version %d %s (%s) in %.0f s",
        version,
        "promoted to production" if promote else "not promoted",
        "; ".join(reasons),
        time.perf_counter() - started,
    )
    return {"version": version, "promoted": promote, **record}


def gate(candidate: dict, production: dict | None, config: PipelineConfig) -> tuple[bool, list]:
    """The promotion decision: (promote, reasons). Every check is listed, failed ones first."""
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


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def format_retrain_report(record: dict, promote: bool) -> str:
    """The retrain report's decision and comparison, as Markdown."""
    lines = [
        f"# Retrain: {'PROMOTED' if promote else 'NOT PROMOTED'}",
        "",
        f"{record['time']}; warm start from "
        f"{record['warm_start_from'] if record['warm_start_from'] is not None else 'nothing'}; "
        f"test window from {record['data']['test_window_from']}.",
        "",
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
    diff = record.get("candidate_minus_production")
    if diff:
        low, high = diff["ci95"]
        lines += [
            "",
            f"Candidate minus production (paired patient bootstrap): {diff['difference']:+.3f} "
            f"({low:+.3f} to {high:+.3f}), p={diff['p_value']:.3f}.",
        ]
    return "\n".join(lines) + "\n"
