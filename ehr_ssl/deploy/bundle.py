"""The model bundle: one directory with everything needed to score new visits, and the loaded model
that scores them (`ehr_ssl.load`).

Layout of a bundle:

    bundle.json         format, what the model is, its label and prediction time, training data
                        counts and date range, its test metrics, the embedding's readout and
                        width ("embedding": {"readout", "dim"}), and the SHA-256 and size of
                        every other file of the bundle ("files")
    encoder/            the encoder (save_pretrained: config.json + model.safetensors; its
                        config's `readout` is the visit vector the head reads and embed returns)
    head.safetensors    the classification head: weight (R,), bias () -> logit of admission
    tokenizer.json      the fitted tokenizer (vocabulary, bin edges, settings)
    data_profile.json   token counts of the training visits, for drift checks
    report.json         the evaluation report the model came with
    MODEL_CARD.md       the model card

Every model kind (full fine-tuning, linear probe, scratch) becomes an encoder plus a linear head on
its readout (`EHREncoder.readout`: the pooled vector, D wide, the segment readout, 3 D + 2, or
the windows readout, 6 D + 5),
so a bundle scores and embeds the same way whatever made it. A bundle written before the readout
was recorded has none in its encoder config or bundle.json: it reads the pooled vector. Nothing is
pickled; loading reads JSON and safetensors only. Bundles hold no patient or visit identifier.

Loading checks every file against bundle.json's checksums before reading it and refuses a
bundle with a file damaged, edited or missing, or with weights it does not list: a model is
never scored from bytes other than those written. (The checksums guard against damage, not
against someone who rewrites bundle.json too.) Bundles of format version 1 have no checksums
and are refused: export them again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import torch
from scipy.special import expit

from ehr_ssl import __version__
from ehr_ssl.artifacts import (
    check_tensor_shapes,
    load_safetensors,
    read_json,
    save_safetensors,
    sha256_file,
)
from ehr_ssl.atomic import atomic_directory, atomic_write_text
from ehr_ssl.data.parquet import read_parquet
from ehr_ssl.deploy.drift import data_profile
from ehr_ssl.deploy.model_card import model_card
from ehr_ssl.errors import InputError
from ehr_ssl.evaluation.report import model_metrics, model_metrics_at
from ehr_ssl.layout import (
    BUNDLE_FILE,
    CLASSIFIER_DIR,
    ENCODER_DIR,
    FINETUNE_SUMMARY_FILE,
    HEAD_FILE,
    MODEL_CARD_FILE,
    MODEL_CONFIG_FILE,
    PREDICTIONS_FILE,
    PROFILE_FILE,
    REPORT_JSON,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    RunLayout,
)
from ehr_ssl.model.encoder import EHREncoder, readout_dim
from ehr_ssl.model.pretraining import ENCODER_INPUTS
from ehr_ssl.tokens.batching import collate
from ehr_ssl.tokens.shards import flat_tokens
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import TOKEN_COLUMNS

SCORING_BATCH_SIZE = 256  # visits per forward pass when scoring or embedding

BUNDLE_FORMAT = "ehr-ssl-bundle"
BUNDLE_VERSION = 2  # 2: bundle.json holds the checksums of the bundle's files
# The files `load_bundle` reads (besides bundle.json): each must be listed with its checksum;
# the first four must be there.
REQUIRED_FILES = (f"{ENCODER_DIR}/{MODEL_CONFIG_FILE}", f"{ENCODER_DIR}/{WEIGHTS_FILE}",
                  HEAD_FILE, TOKENIZER_FILE)  # fmt: skip
READ_FILES = (*REQUIRED_FILES, REPORT_JSON, PROFILE_FILE)
# Weights formats: one the checksums do not list is refused (a loader might take it for the
# model); other unlisted files (notes, .DS_Store) are ignored.
WEIGHT_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack",
     ".onnx", ".gguf"}
)  # fmt: skip
LABEL_DEFINITION = (
    "hospital admission within 7 days of the ED visit (the `label` of labels.parquet: true = "
    "admitted)"
)


@dataclass
class AdmissionModel:
    """A loaded bundle: tokenizer, encoder and head. `predict` and `embed` take the input
    contract's visits and events tables (polars or pandas) and return the same kind."""

    tokenizer: Tokenizer
    encoder: EHREncoder  # its config's readout: the visit vector the head reads, embed returns
    head_weight: torch.Tensor  # (R,)
    head_bias: torch.Tensor  # ()
    info: dict[str, Any]
    report: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.encoder.eval()

    def __repr__(self) -> str:
        """One line: what the model is (the dataclass's own repr prints the whole vocabulary)."""
        info, auroc = self.info, (self.info.get("test_metrics") or {}).get("auroc")
        return (
            f"AdmissionModel(model={info.get('model')!r}, mode={info.get('mode')!r}, "
            f"label_budget={info.get('label_budget')!r}, seed={info.get('seed')}, "
            f"test_auroc={'none' if auroc is None else f'{auroc:.3f}'}, "
            f"vocab_size={self.tokenizer.vocab_size}, readout={self.readout!r}, "
            f"embedding_dim={self.embedding_dim}, device={str(self.device)!r})"
        )

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def readout(self) -> str:
        """The visit vector the head reads and `embed` returns (`EHREncoder.readout`)."""
        return self.encoder.config.readout

    @property
    def embedding_dim(self) -> int:
        """Width of `embed`'s vectors (R): `readout_dim` of the bundle's readout."""
        return readout_dim(self.encoder.config, self.readout)

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
        """The visit vector per visit, under the bundle's readout: a frame of `visit_id`,
        `embedding` (a fixed-size list of `embedding_dim` float32, bundle.json's
        "embedding"."dim") in the visits' order, of the kind given (polars or pandas)."""
        visits_pl, events_pl, as_pandas = _polars_inputs(visits, events)
        tokens = self.tokenizer.encode(visits_pl, events_pl)
        out = tokens.select("visit_id").with_columns(embedding=pl.Series(self.embed_tokens(tokens)))
        return out.to_pandas() if as_pandas else out

    def score_tokens(
        self, tokens: pl.DataFrame, batch_size: int = SCORING_BATCH_SIZE
    ) -> np.ndarray:
        """Scores of tokenized visits (rows of `Tokenizer.encode`). Shape: (N,) float64."""
        pooled = self.embed_tokens(tokens, batch_size)
        return self.score_pooled(pooled)

    def score_pooled(self, pooled: np.ndarray) -> np.ndarray:
        """Scores from visit vectors (`embed_tokens`). Shape: (N, R) -> (N,) float64."""
        # In float64 numpy, row by row the same whatever the number of rows: torch's vectorized
        # sigmoid rounds the last elements of a tensor differently, so a visit's score would
        # depend on how many visits share its chunk.
        weight = self.head_weight.detach().double().cpu().numpy().reshape(-1)
        logits = (np.asarray(pooled, dtype=np.float64) * weight).sum(axis=1) + float(self.head_bias)
        return expit(logits)

    @torch.no_grad()
    def embed_tokens(
        self, tokens: pl.DataFrame, batch_size: int = SCORING_BATCH_SIZE
    ) -> np.ndarray:
        """Visit vectors (the bundle's readout) of tokenized visits, in row order. Shape: (N, R)
        float32.

        Visits are batched by length (less padding); the padding mask makes each visit's vector
        independent of its batch mates."""
        out = np.empty((tokens.height, self.embedding_dim), dtype=np.float32)
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
            vectors = self.encoder(**inputs, readout=self.readout).readout  # (B, R)
            out[rows] = vectors.float().cpu().numpy()
        return out

    # --- persistence ----------------------------------------------------------------------

    def save(
        self,
        directory: Path,
        *,
        overwrite: bool = False,
        documents: Mapping[str, str] | None = None,
    ) -> Path:
        """Write the bundle to `directory` atomically (a complete bundle or nothing).

        `documents` (file name -> text) adds files the bundle ships, such as a retrain's
        report; like every file, they are in bundle.json's checksums.
        """
        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise InputError("output directory already exists", file=str(directory))
        texts = {MODEL_CARD_FILE: model_card(self.info, self.report), **(documents or {})}
        if self.report is not None:
            texts[REPORT_JSON] = json.dumps(self.report, indent=2) + "\n"
        if self.profile is not None:
            texts[PROFILE_FILE] = json.dumps(self.profile) + "\n"
        with atomic_directory(directory, overwrite=overwrite) as tmp:
            self.encoder.cpu().save_checked(tmp / ENCODER_DIR)
            self.encoder.to(self.device)
            head = {
                "weight": self.head_weight.detach().float().cpu().contiguous(),
                "bias": self.head_bias.detach().float().cpu().reshape(()).contiguous(),
            }
            save_safetensors(head, tmp / HEAD_FILE)
            self.tokenizer.save(tmp)
            for name, text in texts.items():
                atomic_write_text(tmp / name, text)
            # Last, so that the checksums cover every file written above.
            info = {**self.info, "files": file_checksums(tmp)}
            atomic_write_text(tmp / BUNDLE_FILE, json.dumps(info, indent=2) + "\n")
        return directory


def load_bundle(directory: Path, device: str = "cpu") -> AdmissionModel:
    """Load a bundle written by `AdmissionModel.save` (JSON and safetensors only), every file
    checked against bundle.json's checksums first.

    Raises:
        InputError: one line naming the file at fault: not a bundle, an unsupported format, a
            file damaged, edited, missing or unexpected, weights that do not fit the encoder's
            configuration or the tokenizer.
    """
    directory = Path(directory)
    info_path = directory / BUNDLE_FILE
    if not info_path.is_file():
        raise InputError("not a model bundle (no bundle.json)", file=str(directory))
    info = read_json(info_path, what="bundle record")
    _check_format(info, info_path)
    verify_bundle_files(directory, info)
    tokenizer = Tokenizer.load(directory)
    encoder = EHREncoder.load_checked(directory / ENCODER_DIR)
    head_path = directory / HEAD_FILE
    _check_embedding(info, encoder, info_path)
    head = load_safetensors(head_path, what="classification head")
    shapes = {"weight": (readout_dim(encoder.config),),
              "bias": ()}  # fmt: skip
    check_tensor_shapes(head, shapes, path=head_path, what="classification head")
    if encoder.config.vocab_size != tokenizer.vocab_size:
        raise InputError(
            f"encoder vocabulary {encoder.config.vocab_size} != tokenizer vocabulary "
            f"{tokenizer.vocab_size}",
            file=str(directory),
        )
    listed = info["files"]
    report = read_json(directory / REPORT_JSON, what="report") if REPORT_JSON in listed else None
    profile = (
        read_json(directory / PROFILE_FILE, what="data profile") if PROFILE_FILE in listed else None
    )
    model = AdmissionModel(tokenizer, encoder, head["weight"], head["bias"], info, report, profile)
    return model.to(device)


def _check_format(info: dict, info_path: Path) -> None:
    """A bundle record of this format and version (version 1 had no checksums)."""
    if info.get("format") != BUNDLE_FORMAT:
        raise InputError(
            f"format {info.get('format')!r} is not {BUNDLE_FORMAT!r}: not a model bundle",
            file=str(info_path),
        )
    version = info.get("format_version")
    if version == 1:
        raise InputError(
            "bundle format version 1 has no checksums of its files, so its weights cannot be "
            "checked: export it again (`ehr-ssl bundle RUN --out DIR`)",
            file=str(info_path),
        )
    if version != BUNDLE_VERSION:
        raise InputError(
            f"bundle format version {version!r} is not the supported version {BUNDLE_VERSION} "
            "(written by another ehr-ssl version?)",
            file=str(info_path),
        )


def embedding_info(encoder: EHREncoder) -> dict[str, Any]:
    """bundle.json's "embedding": the readout `embed` returns (and the head reads), its width."""
    readout = encoder.config.readout
    return {"readout": readout, "dim": readout_dim(encoder.config, readout)}


def _check_embedding(info: dict, encoder: EHREncoder, info_path: Path) -> None:
    """bundle.json's "embedding", where it has one (bundles before it read "pooled"), agrees
    with the encoder's configuration."""
    if "embedding" in info and info["embedding"] != embedding_info(encoder):
        raise InputError(
            f"'embedding' {info['embedding']!r} does not match the encoder's "
            f"{embedding_info(encoder)!r} (encoder/config.json): export the bundle again",
            file=str(info_path),
        )


def file_checksums(directory: Path) -> dict[str, dict[str, Any]]:
    """Every file of a bundle directory but bundle.json: its path relative to the directory
    (POSIX) -> {"sha256": hex digest, "bytes": size}."""
    directory = Path(directory)
    return {
        path.relative_to(directory).as_posix(): {
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
        }
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.relative_to(directory).as_posix() != BUNDLE_FILE
    }


def verify_bundle_files(directory: Path, info: dict) -> None:
    """Every file bundle.json lists is there with its size and SHA-256, the files the loader
    reads are listed, and no unlisted weights lie in the bundle.

    Raises:
        InputError: naming the first file at fault.
    """
    directory = Path(directory)
    listed = _listed_files(info, directory / BUNDLE_FILE)
    for name, entry in sorted(listed.items()):
        path = directory / name
        if not path.is_file():
            raise InputError("missing (bundle.json lists it)", file=str(path))
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise InputError(
                "does not match its checksum in bundle.json: the file was damaged or edited "
                "after the bundle was written (export the bundle again)",
                file=str(path),
            )
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        unlisted = path.is_file() and name != BUNDLE_FILE and name not in listed
        if unlisted and (path.suffix in WEIGHT_SUFFIXES or name in READ_FILES):
            raise InputError(
                "unexpected file: bundle.json has no checksum for it (remove it, or export "
                "the bundle again)",
                file=str(path),
            )


def _listed_files(info: dict, info_path: Path) -> dict[str, dict[str, Any]]:
    """bundle.json's "files", checked: relative paths inside the bundle, each with a SHA-256
    and a size, the files the loader needs among them."""
    files = info.get("files")
    if not isinstance(files, dict):
        raise InputError("no 'files' object with the checksums of the bundle", file=str(info_path))
    for name, entry in files.items():
        parts = Path(name).parts
        inside = not Path(name).is_absolute() and ".." not in parts and name != BUNDLE_FILE
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("bytes") if isinstance(entry, dict) else None
        well_formed = (
            isinstance(digest, str)
            and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)
            and isinstance(size, int)
            and not isinstance(size, bool)
        )
        if not (inside and well_formed):
            raise InputError(
                f"'files' entry {name!r} is not a file of the bundle with a sha256 and a size",
                file=str(info_path),
            )
    unlisted = [name for name in REQUIRED_FILES if name not in files]
    if unlisted:
        raise InputError(f"'files' does not list {unlisted[0]}", file=str(info_path))
    return files


def _polars_inputs(visits: Any, events: Any) -> tuple[pl.DataFrame, pl.DataFrame, bool]:
    """Both tables as polars frames, and whether the caller gave pandas (to answer in kind)."""
    frames = []
    for name, frame in (("visits", visits), ("events", events)):
        if isinstance(frame, pd.DataFrame):
            frame = _from_pandas(frame, name)
        if not isinstance(frame, pl.DataFrame):
            raise InputError(
                f"expected a polars or pandas DataFrame, got {type(frame).__name__}", file=name
            )
        frames.append(frame)
    return frames[0], frames[1], isinstance(visits, pd.DataFrame)


def _from_pandas(frame: pd.DataFrame, name: str) -> pl.DataFrame:
    """A pandas table as polars; a column that cannot convert (mixed types in an object column,
    common in pandas) is an InputError naming it, never the converter's message, which quotes
    the offending value (an id, possibly)."""
    names = [str(column) for column in frame.columns]
    for column in names:
        if names.count(column) > 1:
            raise InputError(f"appears {names.count(column)} times", file=name, column=column)
    try:
        return pl.from_pandas(frame)
    except Exception:
        for column in frame.columns:
            try:
                pl.from_pandas(frame[[column]])
            except Exception:
                raise InputError(
                    f"cannot be read as one type (mixed values, dtype {frame[column].dtype}?)",
                    file=name,
                    column=str(column),
                ) from None
        raise InputError("cannot be read as a polars table", file=name) from None


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
        seed: The fine-tuning seed (default: the run's smallest, its report's main table's).
    """
    from ehr_ssl.config import FINETUNED, read_run_config

    run_dir = Path(run_dir)
    if model not in FINETUNED:
        raise InputError(
            f"cannot bundle {model!r}: choose one of {', '.join(FINETUNED)} (the counts "
            "baselines are not saved)",
            setting="model",
        )
    config = read_run_config(run_dir)
    budget = budget or config.evaluate.label_budget
    seed = config.evaluate.main_seed if seed is None else seed
    layout = RunLayout(run_dir)
    source = layout.model(budget, seed, model)
    if not (source / FINETUNE_SUMMARY_FILE).exists():
        raise InputError(
            f"no fine-tuned {model} at budget {budget}, seed {seed} in this run", file=str(run_dir)
        )
    report = read_json(layout.report, what="report") if layout.report.exists() else None
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
            "test_metrics": _bundled_model_metrics(layout, report, model, budget, seed),
        },
        report=report,
    )
    return bundle.save(out_dir, overwrite=overwrite)


def _bundled_model_metrics(
    layout: RunLayout, report: dict | None, model: str, budget: str, seed: int
) -> dict[str, Any] | None:
    """The bundled model's own test metrics: the report's main table at its main budget and
    seed, else computed from the run's predictions at this budget and seed (same bootstrap)."""
    if report is None:
        return None
    if (budget, seed) == (report["label_budget"], report["seed"]):
        return model_metrics(report, model)
    predictions = layout.root / PREDICTIONS_FILE
    if not predictions.exists():
        return None
    return model_metrics_at(
        read_parquet(predictions), model, budget, seed,
        n_boot=report["n_boot"], boot_seed=report["bootstrap_seed"],
    )  # fmt: skip


# The encoder settings bundle.json summarizes (encoder/config.json holds them all).
BUNDLE_ENCODER_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "pooling",
    "pool_width",
    "value_embedding",
    "code_hierarchy",
)


def _training_data(manifest: dict) -> dict:
    """The tokens' manifest as a bundle records it: its dates, vocabulary and split counts."""
    splits = {
        name: {k: _days(v) if k.endswith("_time_range") else v
               for k, v in entry.items() if k != "shards"}
        for name, entry in manifest["splits"].items()
    }  # fmt: skip
    return {
        "arrival_time_range": _days(manifest.get("arrival_time_range")),
        "vocab_size": manifest["vocab_size"],
        "splits": splits,
    }


def _days(time_range: list[str | None] | None) -> list[str | None] | None:
    """A [first, last] range of timestamps as dates (`day_of`)."""
    return None if time_range is None else [day_of(t) for t in time_range]


def day_of(timestamp: str | None) -> str | None:
    """A timestamp's date ("2024-06-01 08:30:00" -> "2024-06-01"): what a shared document (a
    bundle, its reports) says of a visit's time, whose time of day is a detail of that visit
    (the tokens' manifest and the registry history, kept with the ids, keep it exact)."""
    return None if timestamp is None else str(timestamp)[:10]


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
    from ehr_ssl.training.probe import load_probe

    tokenizer = Tokenizer.load(tokens_dir)
    if (Path(finetune_dir) / CLASSIFIER_DIR).is_dir():  # full fine-tuning, scratch
        classifier = AdmissionClassifier.load_checked(Path(finetune_dir) / CLASSIFIER_DIR)
        encoder = classifier.encoder  # its config is the classifier's: the readout included
        weight, bias = (t.detach() for t in classifier.folded_head())
    else:  # the linear probe, folded into one linear layer
        encoder = EHREncoder.load_checked(encoder_dir)
        probe, readout = load_probe(finetune_dir, encoder.config)
        encoder.config.readout = readout  # the bundle's encoder/config.json records it
        weight, bias = fold_standardization(
            probe["coef"], probe["intercept"][0], probe["mean"], probe["std"]
        )
    summary = read_json(Path(finetune_dir) / FINETUNE_SUMMARY_FILE, what="fine-tuning summary")
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
        "encoder": {k: getattr(encoder.config, k) for k in BUNDLE_ENCODER_KEYS},
        "embedding": embedding_info(encoder),
        "training_data": _training_data(manifest),
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
