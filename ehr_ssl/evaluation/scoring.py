"""Scoring every model on the test split: the labeled test visits read once, a label budget's
train and val visits, the counts baselines fit on them, the fine-tuned models, and the
predictions frame (one row per model and test visit) that the report is built from."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from ehr_ssl.artifacts import read_json
from ehr_ssl.config import COUNTS, HYBRID, TABULAR, FinetuneConfig, parse_budget
from ehr_ssl.errors import InputError
from ehr_ssl.evaluation.baselines import (
    count_features,
    fit_counts_baseline,
    fit_counts_baseline_cv,
    predict_proba,
)
from ehr_ssl.evaluation.predictions import PARQUET_COLUMN_ORDER
from ehr_ssl.evaluation.tabular import TabularSpec
from ehr_ssl.layout import FINETUNE_SUMMARY_FILE
from ehr_ssl.model.encoder import EHREncoder
from ehr_ssl.tokens.batching import TokenDataset
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.training.budgets import budget_split
from ehr_ssl.training.finetune import labeled_split, predict_finetuned
from ehr_ssl.training.probe import pooled_vectors
from ehr_ssl.training.selection import Folds, cv_folds

log = logging.getLogger(__name__)

# What the counts baselines read of a labeled train or val visit.
LABELED_COLUMNS = ["visit_id", "patient_id", "labeled", "label", "input_ids", "value_bins",
                   "time_deltas", "segment_ids"]  # fmt: skip
# What the fine-tuning summary says about the choices made on val, copied into the report.
FINETUNE_SELECTION_KEYS = ("val_auroc", "selected_epoch", "selected_C", "selected", "selection")

# A model scored from the test visits' token rows (e.g. a deployed bundle's `score_tokens`).
RowScorer = Callable[[pl.DataFrame], np.ndarray]


@dataclass(frozen=True)
class LabeledTestSplit:
    """The labeled visits of a tokens directory's test split, read once for every model.

    `rows` (every token column, shard order), `dataset` (the same visits for the transformer
    models), `counts` (their `count_features`, row i = rows[i]) and `tabular` (their
    `tabular_features` under `tabular_spec`) list the visits in one order.
    """

    rows: pl.DataFrame
    dataset: TokenDataset
    counts: sp.csr_matrix
    vocab_size: int
    n_bins: int
    tabular_spec: TabularSpec | None = None
    tabular: sp.csr_matrix | None = None


@dataclass(frozen=True)
class LabelBudget:
    """The labeled train and val visits of one label budget and seed: all a model learns from.

    `name` is the budget as the settings spell it ("all", "1000", "0.25"); `train` and `val` are
    the rows of `train_ids` and `val_ids`, in split order. Empty `val_ids`: cv selection over
    the train visits, in `config`'s folds (`ehr_ssl.training.selection`).
    """

    name: str
    seed: int
    train_ids: pl.Series
    val_ids: pl.Series
    train: pl.DataFrame
    val: pl.DataFrame
    config: FinetuneConfig

    @property
    def protocol(self) -> str:
        return "cv" if len(self.val_ids) == 0 else "holdout"

    def folds(self) -> Folds:
        """The cv folds of the train visits: the folds every model of the budget selects in
        (the fine-tuned ones draw them from the same visits, labels and seed)."""
        return cv_folds(
            self.train["label"].to_numpy(), self.train["patient_id"].to_numpy(),
            self.train["visit_id"].to_numpy(), folds=self.config.cv_folds,
            repeats=self.config.cv_repeats, seed=self.seed, setting="finetune.label_budget",
            rule=self.config.cv_rule, metric=self.config.cv_metric,
            penalty=self.config.penalty_selection,
        )  # fmt: skip


def read_test_split(tokens_dir: Path, *, shortage: str, file: Path) -> LabeledTestSplit:
    """The labeled visits of the test split, checked to hold both classes.

    Args:
        tokens_dir: A tokens directory.
        shortage: The error message when the split lacks a class; "{n}" is replaced by the
            number of labeled visits it has (each caller names its split its own way).
        file: The file or directory the error names.

    Raises:
        InputError: No labeled test visit, or labels of one class only (AUROC undefined).
    """
    tokenizer = Tokenizer.load(tokens_dir)
    dataset = labeled_split(tokens_dir, "test")
    rows = read_split(tokens_dir, "test").filter(pl.col("labeled"))
    if rows.height == 0 or rows["label"].n_unique() < 2:
        raise InputError(shortage.format(n=rows.height), file=str(file))
    assert dataset.meta["visit_id"].equals(rows["visit_id"])
    sizes = {"vocab_size": tokenizer.vocab_size, "n_bins": tokenizer.config.n_bins}
    spec = TabularSpec.from_tokens(tokens_dir)
    counts = count_features(rows, **sizes)
    return LabeledTestSplit(rows, dataset, counts, **sizes, tabular_spec=spec,
                            tabular=spec.features(rows))  # fmt: skip


def read_labeled(tokens_dir: Path, split: str) -> pl.DataFrame:
    """The labeled visits of a train or val split, with the columns the baselines read."""
    return read_split(tokens_dir, split).filter(pl.col("labeled")).select(LABELED_COLUMNS)


def draw_label_budget(
    train: pl.DataFrame,
    val: pl.DataFrame,
    budget: str,
    *,
    seed: int,
    config: FinetuneConfig,
    setting: str = "label_budget",
) -> LabelBudget:
    """The visits of a label budget (`ehr_ssl.training.budgets.budget_split`, under `config`'s
    selection) among the labeled `train` and `val` visits (`read_labeled`); an error names
    `setting`."""
    train_ids, val_ids = budget_split(
        train, val, parse_budget(budget), seed=seed, selection=config.selection,
        cv_max_labels=config.cv_max_labels, setting=setting,
    )  # fmt: skip
    return LabelBudget(
        name=budget,
        seed=seed,
        train_ids=train_ids,
        val_ids=val_ids,
        train=train.filter(pl.col("visit_id").is_in(train_ids.implode())),
        val=val.filter(pl.col("visit_id").is_in(val_ids.implode())),
        config=config,
    )


def score_counts(name: str, test: LabeledTestSplit, budget: LabelBudget) -> tuple[np.ndarray, dict]:
    """A counts baseline (a `COUNTS` name) fit on the budget's labels and chosen under its
    selection protocol, and its test scores; the test labels play no part. Shape: (N,) test
    visits. Returns the scores and the choice made (val_auroc, chosen, selection)."""
    sizes = {"vocab_size": test.vocab_size, "n_bins": test.n_bins}
    features = [count_features(frame, **sizes) for frame in (budget.train, budget.val)]
    return _fit_and_score(COUNTS[name], features, test.counts, budget)


def score_tabular(
    name: str, test: LabeledTestSplit, budget: LabelBudget
) -> tuple[np.ndarray, dict]:
    """A tabular baseline (a `TABULAR` name) fit on the budget's labels and chosen under its
    selection protocol like the counts baselines, and its test scores. Shape: (N,) test visits."""
    spec = test.tabular_spec or TabularSpec.from_tokens(test.dataset.tokens_dir)
    x_test = test.tabular if test.tabular is not None else spec.features(test.rows)
    features = [spec.features(frame) for frame in (budget.train, budget.val)]
    return _fit_and_score(TABULAR[name], features, x_test, budget)


def score_hybrid(
    test: LabeledTestSplit, budget: LabelBudget, encoder_dir: Path, device: torch.device
) -> tuple[np.ndarray, dict]:
    """`ssl_plus_counts`: one L2 logistic regression on the counts features and the frozen
    pretrained encoder's visit vectors together (`HybridScaler`), chosen like the counts
    baselines. Its difference with counts_logistic says what pretraining adds to a bag of
    codes. Shape: (N,) test visits."""
    encoder = EHREncoder.load_checked(encoder_dir).to(device)
    readout = budget.config.readout  # the SSL models' readout
    sizes = {"vocab_size": test.vocab_size, "n_bins": test.n_bins}
    tokens_dir = test.dataset.tokens_dir
    features = [
        sp.hstack([count_features(frame, **sizes),
                   _vectors(encoder, tokens_dir, split, frame, device, readout)], format="csr")
        for split, frame in (("train", budget.train), ("val", budget.val))
    ]  # fmt: skip
    test_vectors = pooled_vectors(encoder, test.dataset, device, readout=readout)
    x_test = sp.hstack([test.counts, test_vectors], format="csr")
    return _fit_and_score("hybrid", features, x_test, budget, n_counts=test.counts.shape[1])


def _vectors(
    encoder: EHREncoder,
    tokens_dir: Path,
    split: str,
    frame: pl.DataFrame,
    device: torch.device,
    readout: str,
) -> np.ndarray:
    """The encoder's visit vectors under `readout` of `frame`'s visits, in its row order.
    Shape: (N, R)."""
    dataset = labeled_split(tokens_dir, split, frame["visit_id"])
    vectors = pooled_vectors(encoder, dataset, device, readout=readout)
    position = {visit: i for i, visit in enumerate(dataset.meta["visit_id"].to_list())}
    return vectors[[position[visit] for visit in frame["visit_id"].to_list()]]


def _fit_and_score(
    kind: str,
    features: list[sp.csr_matrix],
    x_test: sp.csr_matrix,
    budget: LabelBudget,
    n_counts: int = 0,
) -> tuple[np.ndarray, dict]:
    """Fit a baseline kind on the budget's (train, val) `features` under its protocol and
    score `x_test`. Returns the scores and the choice made."""
    y_train = budget.train["label"].to_numpy()
    if budget.protocol == "cv":
        folds = budget.folds()
        fitted, record = fit_counts_baseline_cv(
            kind, features[0], y_train, folds, seed=budget.seed, n_counts=n_counts
        )
        selection = folds.describe()
    else:
        fitted, record = fit_counts_baseline(
            kind, features[0], y_train, features[1], budget.val["label"].to_numpy(),
            seed=budget.seed, n_counts=n_counts,
        )  # fmt: skip
        selection = {"protocol": "holdout"}
    choice = {"val_auroc": record["val_auroc"], "chosen": record["chosen"], "selection": selection}
    return predict_proba(fitted, x_test), choice


def score_finetuned(
    finetune_dir: Path, encoder_dir: Path, test: LabeledTestSplit, device: torch.device
) -> tuple[np.ndarray, dict]:
    """A fine-tuned model's test scores, and the choices its fine-tuning made on val (from its
    summary). Shape: (N,) test visits."""
    summary = read_json(Path(finetune_dir) / FINETUNE_SUMMARY_FILE, what="fine-tuning summary")
    selection = {key: summary.get(key) for key in FINETUNE_SELECTION_KEYS}
    return predict_finetuned(finetune_dir, encoder_dir, test.dataset, device), selection


def predictions_frame(
    test: LabeledTestSplit, scores: Mapping[str, np.ndarray], budget: LabelBudget
) -> pl.DataFrame:
    """One row per model (in `scores` order) and test visit: `PARQUET_COLUMN_ORDER`, with score
    Float64, seed and train_labels Int64 (the number of train labels of the budget)."""
    base = test.rows.select("visit_id", "patient_id", "label")
    frames = [
        _as_predictions(
            base.with_columns(score=pl.Series(score, dtype=pl.Float64)), "test", model, budget
        )
        for model, score in scores.items()
    ]
    return pl.concat(frames)


def _as_predictions(
    rows: pl.DataFrame, split: str, model: str, budget: LabelBudget
) -> pl.DataFrame:
    """Scored visits (visit_id, patient_id, label, score) as predictions-contract rows of one
    split, model and budget, in `PARQUET_COLUMN_ORDER`."""
    return rows.with_columns(
        split=pl.lit(split),
        model=pl.lit(model),
        budget=pl.lit(budget.name),
        seed=pl.lit(budget.seed, dtype=pl.Int64),
        # every label the model learned and selected from (train and val together)
        train_labels=pl.lit(len(budget.train_ids) + len(budget.val_ids), dtype=pl.Int64),
    ).select(PARQUET_COLUMN_ORDER)


def score_models(
    test: LabeledTestSplit,
    budget: LabelBudget,
    models: Sequence[str],
    *,
    finetuned: Mapping[str, Path],
    encoder_dir: Path,
    device: torch.device,
    row_scorers: Mapping[str, RowScorer] | None = None,
) -> tuple[pl.DataFrame, dict[str, dict]]:
    """Score every model on the same test visits, for one label budget and seed.

    A model is a fine-tuned one (a name in `finetuned`), a counts or tabular baseline (a
    `COUNTS` or `TABULAR` name, fit here on the budget's train and val visits) or a
    `row_scorers` entry.

    Args:
        test: The labeled test split (`read_test_split`).
        budget: The label budget the models learned from (`draw_label_budget`).
        models: The models to score, in the order of the predictions frame.
        finetuned: Model name -> its fine-tuning directory.
        encoder_dir: The pretrained encoder (a linear probe's features).
        device: Where the fine-tuned models run.
        row_scorers: Model name -> a function of the test visits' token rows.

    Returns:
        The predictions frame (`predictions_frame`) and, per fine-tuned model and counts
        baseline, the choices made on val.
    """
    row_scorers = row_scorers or {}
    scores, selection = {}, {}
    for model in models:
        if model in finetuned:
            scores[model], selection[model] = score_finetuned(
                finetuned[model], encoder_dir, test, device
            )
        elif model in COUNTS or model in TABULAR or model == HYBRID:
            started = time.perf_counter()  # fitted here: the stage's long part (a progress line)
            if model == HYBRID:
                scores[model], selection[model] = score_hybrid(test, budget, encoder_dir, device)
            else:
                score = score_counts if model in COUNTS else score_tabular
                scores[model], selection[model] = score(model, test, budget)
            log.info("%s %s-seed%d: fitted on %d labels (%.0f s)", model, budget.name,
                     budget.seed, len(budget.train) + len(budget.val),
                     time.perf_counter() - started)  # fmt: skip
        elif model in row_scorers:
            scores[model] = row_scorers[model](test.rows)
        else:
            raise ValueError(f"no way to score model {model!r}")
    return predictions_frame(test, scores, budget), selection


def score_validation(
    budget: LabelBudget,
    val: pl.DataFrame,
    model: str,
    *,
    finetune_dir: Path,
    encoder_dir: Path,
    tokens_dir: Path,
    device: torch.device,
) -> tuple[pl.DataFrame, str]:
    """A fine-tuned model's scores on the visits its operating thresholds are fixed on, never the
    test split: under holdout the budget's val visits (those it was selected on); under cv, whose
    budget takes no val visit, every labeled visit of the val split (`val`, `read_labeled`).

    Returns predictions-contract rows (split "val", `PARQUET_COLUMN_ORDER`) and which visits
    they are, in words. Shape: one row per visit.
    """
    if budget.protocol == "holdout":
        visits = budget.val
        source = f"the val-split visits that selected the model (label budget {budget.name})"
    else:
        visits = val
        source = (
            f"the val split's labeled visits, outside label budget {budget.name} (cv selection "
            "took the budget's labels from the train split only)"
        )
    dataset = labeled_split(tokens_dir, "val", visits["visit_id"])
    scores = predict_finetuned(finetune_dir, encoder_dir, dataset, device)
    scored = pl.DataFrame({"visit_id": dataset.meta["visit_id"], "score": scores})
    rows = visits.select("visit_id", "patient_id", "label").join(
        scored.with_columns(pl.col("score").cast(pl.Float64)), on="visit_id", maintain_order="left"
    )
    return _as_predictions(rows, "val", model, budget), source
