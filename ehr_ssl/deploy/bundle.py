"""The model bundle: one directory with everything needed to score new visits, and the loaded model
that scores them (`ehr_ssl.load`).

Layout of a bundle:

    bundle.json         format, what the model is, its label and prediction time, training data
                        counts and date range, its test metrics
    encoder/            the encoder (save_pretrained: config.json + model.safetensors)
    head.safetensors    the classification head: weight (D,), bias () -> logit of admission
    tokenizer.json      the fitted tokenizer (vocabulary, bin edges, settings)
    data_profile.json   token counts of the training visits, for drift checks
    report.json         the evaluation report the model came with
    MODEL_CARD.md       the model card

Every model kind (full fine-tuning, linear probe, scratch) becomes an encoder plus a linear head on
its pooled vector, so a bundle scores and embeds the same way whatever made it. Nothing is
pickled; loading reads JSON and safetensors only. Bundles hold no patient or visit identifier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from ehr_ssl import __version__
from ehr_ssl.atomic import atomic_directory, atomic_write_text
from ehr_ssl.deploy.drift import data_profile
from ehr_ssl.deploy.model_card import model_card
from ehr_ssl.errors import InputError
from ehr_ssl.evaluation.report import model_metrics
from ehr_ssl.layout import (
    BUNDLE_FILE,
    CLASSIFIER_DIR,
    ENCODER_DIR,
    FINETUNE_SUMMARY_FILE,
    HEAD_FILE,
    MODEL_CARD_FILE,
    PROBE_FILE,
    PROFILE_FILE,
    REPORT_JSON,
    RunLayout,
)
from ehr_ssl.model.encoder import EHREncoder
from ehr_ssl.model.pretraining import ENCODER_INPUTS
from ehr_ssl.tokens.batching import collate
from ehr_ssl.tokens.shards import flat_tokens
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import TOKEN_COLUMNS

BUNDLE_FORMAT = "ehr-ssl-bundle"
BUNDLE_VERSION = 1
LABEL_DEFINITION = (
    "hospital admission within 7 days of the ED visit (the `label` of labels.parquet: true = "
    "admitted)"
)


@dataclass
class AdmissionModel:
    """A loaded bundle: tokenizer, encoder and head. `predict` and `embed` take the input
    contract's visits and events tables (polars or pandas) and return the same kind."""

    tokenizer: Tokenizer
    encoder: EHREncoder
    head_weight: torch.Tensor  # (D,)
    head_bias: torch.Tensor  # ()
    info: dict[str, Any]
    report: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.encoder.eval()

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    def to(self, device: str | torch.device) -> AdmissionModel:
        """Move the model to a device ("cpu", "cuda", "auto"); returns self."""
        from ehr_ssl.training.device import resolve_device

        self.device = resolve_device(device) if isinstance(device, str) else device
        self.encoder.to(self.device)
        self.head_weight = self.head_weight.to(self.device)
        self.head_bias = self.head_bias.to(self.device)
        return self

    # --- scoring --------------------------------------------------------------------------

    def predict(self, visits: Any, events: Any) -> Any:
        """P(admission within 7 days) per visit: a frame of `visit_id`, `score` in the visits'
        order, of the kind given (polars or pandas)."""
        visits_pl, events_pl, as_pandas = _polars_inputs(visits, events)
        tokens = self.tokenizer.encode(visits_pl, events_pl)
        out = tokens.select("visit_id").with_columns(
            score=pl.Series(self.score_tokens(tokens), dtype=pl.Float64)
        )
        return out.to_pandas() if as_pandas else out

    def embed(self, visits: Any, events: Any) -> Any:
        """The pooled visit vector per visit: a frame of `visit_id`, `embedding` (a fixed-size
        list of D float32) in the visits' order, of the kind given (polars or pandas)."""
        visits_pl, events_pl, as_pandas = _polars_inputs(visits, events)
        tokens = self.tokenizer.encode(visits_pl, events_pl)
        out = tokens.select("visit_id").with_columns(embedding=pl.Series(self.embed_tokens(tokens)))
        return out.to_pandas() if as_pandas else out

    def score_tokens(self, tokens: pl.DataFrame, batch_size: int = 256) -> np.ndarray:
        """Scores of tokenized visits (rows of `Tokenizer.encode`). Shape: (N,) float64."""
        pooled = self.embed_tokens(tokens, batch_size)
        return self.score_pooled(pooled)

    def score_pooled(self, pooled: np.ndarray) -> np.ndarray:
        """Scores from pooled vectors. Shape: (N, D) -> (N,) float64."""
        with torch.no_grad():
            x = torch.from_numpy(pooled).to(self.device)
            logits = torch.nn.functional.linear(x, self.head_weight[None], self.head_bias[None])
            return torch.sigmoid(logits[:, 0]).double().cpu().numpy()

    @torch.no_grad()
    def embed_tokens(self, tokens: pl.DataFrame, batch_size: int = 256) -> np.ndarray:
        """Pooled vectors of tokenized visits, in row order. Shape: (N, D) float32.

        Visits are batched by length (less padding); the padding mask makes each visit's vector
        independent of its batch mates."""
        out = np.empty((tokens.height, self.hidden_size), dtype=np.float32)
        table = tokens.select(TOKEN_COLUMNS).to_arrow()
        flat = {c: flat_tokens(table, c) for c in TOKEN_COLUMNS}
        offsets = flat["input_ids"][1]
        order = np.argsort(np.diff(offsets), kind="stable")
        for start in range(0, tokens.height, batch_size):
            rows = order[start : start + batch_size]
            visits = [
                {name: values[offs[r] : offs[r + 1]] for name, (values, offs) in flat.items()}
                for r in rows
            ]
            batch = collate(visits)
            inputs = {k: batch[k].to(self.device) for k in ENCODER_INPUTS}
            out[rows] = self.encoder(**inputs).pooler_output.float().cpu().numpy()
        return out

    # --- persistence ----------------------------------------------------------------------

    def save(self, directory: Path, *, overwrite: bool = False) -> Path:
        """Write the bundle to `directory` atomically (a complete bundle or nothing)."""
        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise InputError("output directory already exists", file=str(directory))
        with atomic_directory(directory, overwrite=overwrite) as tmp:
            self.encoder.cpu().save_pretrained(tmp / ENCODER_DIR)
            self.encoder.to(self.device)
            save_file(
                {
                    "weight": self.head_weight.detach().float().cpu().contiguous(),
                    "bias": self.head_bias.detach().float().cpu().reshape(()).contiguous(),
                },
                str(tmp / HEAD_FILE),
            )
            self.tokenizer.save(tmp)
            atomic_write_text(tmp / BUNDLE_FILE, json.dumps(self.info, indent=2) + "\n")
            if self.report is not None:
                atomic_write_text(tmp / REPORT_JSON, json.dumps(self.report, indent=2) + "\n")
            if self.profile is not None:
                atomic_write_text(tmp / PROFILE_FILE, json.dumps(self.profile) + "\n")
            atomic_write_text(tmp / MODEL_CARD_FILE, model_card(self.info, self.report))
        return directory


def load_bundle(directory: Path, device: str = "cpu") -> AdmissionModel:
    """Load a bundle written by `AdmissionModel.save` (JSON and safetensors only)."""
    directory = Path(directory)
    info_path = directory / BUNDLE_FILE
    if not info_path.is_file():
        raise InputError("not a model bundle (no bundle.json)", file=str(directory))
    info = _read_json(info_path)
    if info.get("format") != BUNDLE_FORMAT or info.get("format_version") != BUNDLE_VERSION:
        raise InputError(
            f"bundle format {info.get('format')!r} version {info.get('format_version')!r} is not "
            f"the supported {BUNDLE_FORMAT!r} version {BUNDLE_VERSION}",
            file=str(info_path),
        )
    tokenizer = Tokenizer.load(directory)
    try:
        encoder = EHREncoder.from_pretrained(directory / ENCODER_DIR, use_safetensors=True)
        head = load_file(str(directory / HEAD_FILE))
    except (OSError, ValueError) as e:
        raise InputError(
            f"damaged bundle ({str(e).splitlines()[0]})", file=str(directory)
        ) from None
    if encoder.config.vocab_size != tokenizer.vocab_size:
        raise InputError(
            f"encoder vocabulary {encoder.config.vocab_size} != tokenizer vocabulary "
            f"{tokenizer.vocab_size}",
            file=str(directory),
        )
    report_path = directory / REPORT_JSON
    report = _read_json(report_path) if report_path.exists() else None
    profile = _read_json(directory / PROFILE_FILE) if (directory / PROFILE_FILE).exists() else None
    model = AdmissionModel(tokenizer, encoder, head["weight"], head["bias"], info, report, profile)
    return model.to(device)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e})", file=str(path)) from None


def _polars_inputs(visits: Any, events: Any) -> tuple[pl.DataFrame, pl.DataFrame, bool]:
    """Both tables as polars frames, and whether the caller gave pandas (to answer in kind)."""
    frames = []
    for name, frame in (("visits", visits), ("events", events)):
        if isinstance(frame, pd.DataFrame):
            frame = pl.from_pandas(frame)
        if not isinstance(frame, pl.DataFrame):
            raise InputError(
                f"expected a polars or pandas DataFrame, got {type(frame).__name__}", file=name
            )
        frames.append(frame)
    return frames[0], frames[1], isinstance(visits, pd.DataFrame)


# ----------------------------------------------------------------------------------------------
# bundles from a pipeline run


def export_bundle(
    run_dir: Path,
    out_dir: Path,
    *,
    model: str = "ssl",
    budget: str | None = None,
    seed: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Package a fine-tuned model of a pipeline run as a bundle.

    Args:
        run_dir: A complete `ehr-ssl run` directory.
        out_dir: The bundle directory (written atomically).
        model: "ssl", "ssl_linear_probe" or "scratch" (the counts baselines are scikit-learn
            models, which only pickle can save: they are not bundled).
        budget: The label budget (default: the run's main budget).
        seed: The fine-tuning seed (default: the run's first).
    """
    from ehr_ssl.config import FINETUNED, read_run_config

    run_dir = Path(run_dir)
    if model not in FINETUNED:
        raise InputError(
            f"cannot bundle {model!r}: choose one of {', '.join(FINETUNED)} (the counts "
            "baselines are not saved)",
            column="model",
        )
    config = read_run_config(run_dir)
    budget = budget or config.evaluate.label_budget
    seed = config.evaluate.seeds[0] if seed is None else seed
    layout = RunLayout(run_dir)
    source = layout.model(budget, seed, model)
    if not (source / FINETUNE_SUMMARY_FILE).exists():
        raise InputError(
            f"no fine-tuned {model} at budget {budget}, seed {seed} in this run", file=str(run_dir)
        )
    report = _read_json(layout.report) if layout.report.exists() else None
    bundle = make_bundle(
        layout.tokens,
        layout.encoder,
        source,
        info={
            "model": model,
            "mode": FINETUNED[model],
            "label_budget": budget,
            "seed": seed,
            "preset": config.preset,
            "test_metrics": model_metrics(report, model),
        },
        report=report,
    )
    return bundle.save(out_dir, overwrite=overwrite)


def make_bundle(
    tokens_dir: Path,
    encoder_dir: Path,
    finetune_dir: Path,
    *,
    info: dict[str, Any],
    report: dict[str, Any] | None,
) -> AdmissionModel:
    """Assemble a bundle from a fine-tuning output (`ehr_ssl.training.finetune.finetune`), the
    pretrained encoder it used and its tokens directory. `info` adds to bundle.json (what the
    model is, its metrics); the training data's counts, dates and token profile come from the
    tokens directory's train split."""
    from ehr_ssl.model.classifier import AdmissionClassifier, fold_standardization
    from ehr_ssl.tokens.shards import read_manifest, read_split

    tokenizer = Tokenizer.load(tokens_dir)
    if (Path(finetune_dir) / CLASSIFIER_DIR).is_dir():  # full fine-tuning, scratch
        classifier = AdmissionClassifier.from_pretrained(
            Path(finetune_dir) / CLASSIFIER_DIR, use_safetensors=True
        )
        encoder = classifier.encoder
        weight, bias = (t.detach() for t in classifier.folded_head())
    else:  # the linear probe, folded into one linear layer
        probe = load_file(str(Path(finetune_dir) / PROBE_FILE))
        encoder = EHREncoder.from_pretrained(encoder_dir, use_safetensors=True)
        weight, bias = fold_standardization(
            probe["coef"], probe["intercept"][0], probe["mean"], probe["std"]
        )
    summary = _read_json(Path(finetune_dir) / FINETUNE_SUMMARY_FILE)
    manifest = read_manifest(tokens_dir)
    full_info = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "ehr_ssl_version": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "train_labels": summary["train_labeled"],
        "val_labels": summary["val_labeled"],
        "val_auroc": summary["val_auroc"],
        "label": LABEL_DEFINITION,
        "prediction_time": _prediction_time_rule(tokenizer),
        "encoder": {
            k: getattr(encoder.config, k)
            for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "pooling")
        },
        "training_data": {
            "arrival_time_range": manifest.get("arrival_time_range"),
            "vocab_size": manifest["vocab_size"],
            "splits": {
                name: {k: v for k, v in entry.items() if k != "shards"}
                for name, entry in manifest["splits"].items()
            },
        },
        **info,
    }
    return AdmissionModel(
        tokenizer,
        encoder,
        torch.as_tensor(weight, dtype=torch.float32),
        torch.as_tensor(bias, dtype=torch.float32),
        full_info,
        report,
        data_profile(read_split(tokens_dir, "train"), tokenizer.vocab_size),
    )


def _prediction_time_rule(tokenizer: Tokenizer) -> str:
    offset = tokenizer.data_config.prediction_offset_minutes
    return (
        f"the visits table's prediction_time, else arrival_time + {offset:g} minutes; the model "
        "reads only events at or before it (history from "
        f"{tokenizer.config.lookback_days:g} days before arrival)"
    )
