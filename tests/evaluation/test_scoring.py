"""Scoring every model on the test split: the check of the labeled test split, the same visits
for every model, the predictions frame's columns and dtypes, counts and tabular baselines blind to
test labels and to events after the prediction time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ehr_ssl.config import COUNTS, TABULAR, load_pipeline_config
from ehr_ssl.data import schema
from ehr_ssl.data.synthetic import generate_cohort, write_cohort
from ehr_ssl.errors import InputError
from ehr_ssl.evaluation.baselines import GRIDS, count_features
from ehr_ssl.evaluation.predictions import PARQUET_COLUMN_ORDER
from ehr_ssl.evaluation.scoring import (
    LabeledTestSplit,
    draw_label_budget,
    read_labeled,
    read_test_split,
    score_counts,
    score_models,
    score_tabular,
)
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenize import tokenize_dataset
from ehr_ssl.training.finetune import finetune
from ehr_ssl.training.pretrain import pretrain

CONFIG = load_pipeline_config(
    None,
    {
        "preset": "tiny",
        "train.max_steps": 2,
        "tokenizer.max_length": 64,
        "finetune.max_epochs": 1,
        "finetune.patience": 1,
        "finetune.cv_folds": 3,
        "finetune.cv_repeats": 1,
    },
)
SHORTAGE = "the test split needs labeled visits of both classes, has {n}"


@pytest.fixture(autouse=True)
def _small_grids(monkeypatch):
    """Two points per grid: these tests check which visits and labels each model reads, not
    the grids (tests/evaluation/test_baselines.py does)."""
    monkeypatch.setitem(GRIDS, "hybrid", {"C": [0.01, 1.0], "vector_weight": [1.0]})
    monkeypatch.setitem(GRIDS, "lightgbm", {"num_leaves": [7], "min_child_samples": [5, 20]})


CPU = torch.device("cpu")


def _tokenize(data_dir: Path, tokens_dir: Path) -> Path:
    tokenize_dataset(data_dir, tokens_dir, CONFIG.tokenize_config(), overwrite=True)
    return tokens_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scoring")
    write_cohort(generate_cohort(800, labeled_frac=0.5, seed=5), root / "data")
    return root / "data"


@pytest.fixture(scope="module")
def tokens_dir(data_dir) -> Path:
    return _tokenize(data_dir, data_dir.parent / "tokens")


@pytest.fixture(scope="module")
def test_split(tokens_dir) -> LabeledTestSplit:
    return read_test_split(tokens_dir, shortage=SHORTAGE, file=tokens_dir)


@pytest.fixture(scope="module")
def budget(tokens_dir):
    train, val = read_labeled(tokens_dir, "train"), read_labeled(tokens_dir, "val")
    return draw_label_budget(train, val, "60", seed=0, config=CONFIG.finetune)


@pytest.fixture(scope="module")
def probe_dir(tokens_dir, budget) -> tuple[Path, Path]:
    """A (2-step) pretrained encoder and a linear probe over it: (encoder_dir, finetune_dir)."""
    out = tokens_dir.parent
    pretrain(tokens_dir, out / "pretrain", CONFIG.pretrain_config())
    ft_config = CONFIG.finetune_config("linear-probe", 0)
    finetune(out / "tokens", out / "pretrain" / "encoder", out / "probe", ft_config,
             train_ids=budget.train_ids, val_ids=budget.val_ids)  # fmt: skip
    return out / "pretrain" / "encoder", out / "probe"


def _relabel_test_visits(data_dir: Path, tokens_dir: Path, out_dir: Path, label) -> Path:
    """A copy of the dataset whose test visits are all labeled `label` (None: unlabeled). The
    split hashes patients, so the same visits land in the test split."""
    test_ids = read_split(tokens_dir, "test")["visit_id"].implode()
    labels = pl.read_parquet(data_dir / schema.LABELS.filename)
    if label is None:
        labels = labels.filter(~pl.col("visit_id").is_in(test_ids))
    else:
        in_test = pl.col("visit_id").is_in(test_ids)
        labels = labels.with_columns(label=pl.when(in_test).then(label).otherwise(pl.col("label")))
    out_dir.mkdir()
    for path in data_dir.iterdir():
        (out_dir / path.name).write_bytes(path.read_bytes())
    labels.write_parquet(out_dir / schema.LABELS.filename)
    return _tokenize(out_dir, out_dir.parent / f"{out_dir.name}-tokens")


@pytest.mark.parametrize("label", [False, True, None], ids=["negatives", "positives", "none"])
def test_a_test_split_without_both_classes_is_refused_with_the_callers_message(
    data_dir, tokens_dir, tmp_path, label
):
    relabeled = _relabel_test_visits(data_dir, tokens_dir, tmp_path / "data", label)
    labeled = read_split(relabeled, "test").filter(pl.col("labeled"))
    assert labeled["label"].n_unique() <= 1  # the premise: one class or none
    for shortage in (SHORTAGE, "the test window lacks a class ({n} labels), raise it"):
        with pytest.raises(InputError) as caught:
            read_test_split(relabeled, shortage=shortage, file=tmp_path / "where")
        assert caught.value.problem == shortage.format(n=labeled.height)
        assert caught.value.file == str(tmp_path / "where")


def test_the_test_split_is_its_labeled_visits_in_one_order(tokens_dir, test_split):
    labeled = read_split(tokens_dir, "test").filter(pl.col("labeled"))
    assert test_split.rows["visit_id"].equals(labeled["visit_id"])
    assert test_split.dataset.meta["visit_id"].equals(labeled["visit_id"])
    assert test_split.counts.shape[0] == labeled.height
    assert test_split.rows["label"].n_unique() == 2


def test_every_model_gets_the_same_visits(test_split, budget, probe_dir):
    encoder_dir, finetune_dir = probe_dir
    models = ["counts_gbm", "probe", "constant", "counts_logistic", "ssl_plus_counts"]
    predictions, chosen = score_models(
        test_split,
        budget,
        models,
        finetuned={"probe": finetune_dir},
        encoder_dir=encoder_dir,
        device=CPU,
        row_scorers={"constant": lambda rows: np.full(rows.height, 0.5)},
    )
    assert predictions.columns == list(PARQUET_COLUMN_ORDER)
    assert predictions["model"].unique(maintain_order=True).to_list() == models
    expected = test_split.rows.select("visit_id", "patient_id", "label")
    for model, group in predictions.group_by("model", maintain_order=True):
        assert group.select("visit_id", "patient_id", "label").equals(expected), model
        assert group["score"].is_between(0, 1).all() and group["score"].is_finite().all()
    assert set(chosen) == {"counts_gbm", "probe", "counts_logistic", "ssl_plus_counts"}
    for choice in chosen.values():  # every model chose on the budget's labels, in cv folds
        assert choice["val_auroc"] is not None
        assert choice["selection"] == {"protocol": "cv", "folds": 3, "repeats": 1, "rule": "best",
                                       "metric": budget.config.cv_metric,
                                       "penalty": budget.config.penalty_selection}  # fmt: skip
    assert set(chosen["ssl_plus_counts"]["chosen"]) == {"C", "vector_weight"}


def test_the_fine_tuned_models_and_the_baselines_select_in_the_same_folds(tokens_dir, budget):
    from ehr_ssl.training.finetune import _folds, labeled_split

    dataset = labeled_split(tokens_dir, "train", budget.train_ids)
    theirs = _folds(dataset.labels, dataset.meta, budget.config, repeats=1)
    ours = budget.folds()

    def as_ids(folds, visit_ids):
        return sorted(tuple(sorted(visit_ids[val].tolist())) for _, val in folds.splits)

    assert as_ids(theirs, dataset.meta["visit_id"].to_numpy()) == as_ids(
        ours, budget.train["visit_id"].to_numpy()
    )


def test_a_holdout_budget_selects_every_baseline_on_val(tokens_dir, test_split):
    train, val = read_labeled(tokens_dir, "train"), read_labeled(tokens_dir, "val")
    config = dataclasses.replace(CONFIG.finetune, selection="holdout")
    budget = draw_label_budget(train, val, "60", seed=0, config=config)
    assert len(budget.train_ids) + len(budget.val_ids) == 60 and len(budget.val_ids) >= 20
    _, chosen = score_counts("counts_logistic", test_split, budget)
    assert chosen["selection"] == {"protocol": "holdout"}


def test_the_predictions_frame_has_the_run_dtypes(test_split, budget, caplog):
    with caplog.at_level("INFO", logger="ehr_ssl"):
        predictions, _ = score_models(
            test_split, budget, ["counts_logistic"], finetuned={}, encoder_dir=Path("-"),
            device=CPU,
        )  # fmt: skip
    # each baseline fitted here says so (the stage's long part), with counts, no identifier
    assert "counts_logistic 60-seed0: fitted on 60 labels (" in caplog.text
    assert predictions.schema["score"] == pl.Float64
    assert predictions.schema["seed"] == pl.Int64
    assert predictions.schema["train_labels"] == pl.Int64
    assert predictions["budget"].unique().to_list() == ["60"]
    assert predictions["split"].unique().to_list() == ["test"]
    assert predictions["train_labels"].unique().to_list() == [len(budget.train_ids)] == [60]


def test_an_unknown_model_is_refused(test_split, budget):
    with pytest.raises(ValueError, match="no way to score model 'mystery'"):
        score_models(test_split, budget, ["mystery"], finetuned={}, encoder_dir=Path("-"),
                     device=CPU)  # fmt: skip


@pytest.mark.parametrize("name", list(COUNTS))
def test_the_counts_baselines_never_read_test_labels(test_split, budget, name):
    flipped_rows = test_split.rows.with_columns(label=~pl.col("label"))
    sizes = {"vocab_size": test_split.vocab_size, "n_bins": test_split.n_bins}
    flipped = dataclasses.replace(
        test_split, rows=flipped_rows, counts=count_features(flipped_rows, **sizes)
    )
    scores, chosen = score_counts(name, test_split, budget)
    flipped_scores, flipped_chosen = score_counts(name, flipped, budget)
    np.testing.assert_array_equal(scores, flipped_scores)
    assert chosen == flipped_chosen


@pytest.mark.parametrize("name", list(TABULAR))
def test_the_tabular_baselines_select_in_the_budgets_folds_blind_to_test_labels(
    test_split, budget, name
):
    flipped_rows = test_split.rows.with_columns(label=~pl.col("label"))
    features = test_split.tabular_spec.features(flipped_rows)
    flipped = dataclasses.replace(test_split, rows=flipped_rows, tabular=features)
    scores, chosen = score_tabular(name, test_split, budget)
    assert scores.shape == (test_split.rows.height,) and ((scores >= 0) & (scores <= 1)).all()
    assert chosen["selection"] == {"protocol": "cv", "folds": 3, "repeats": 1, "rule": "best",
                                   "metric": budget.config.cv_metric,
                                   "penalty": budget.config.penalty_selection}  # fmt: skip
    assert set(chosen["chosen"]) == set(GRIDS[TABULAR[name]])
    flipped_scores, flipped_chosen = score_tabular(name, flipped, budget)
    np.testing.assert_array_equal(scores, flipped_scores)
    assert chosen == flipped_chosen


def test_events_after_the_prediction_time_change_no_tabular_prediction(
    data_dir, tokens_dir, test_split, budget, tmp_path
):
    from tests.test_pipeline import _perturb_future_events

    _perturb_future_events(data_dir, tmp_path / "data")
    perturbed = _tokenize(tmp_path / "data", tmp_path / "tokens")
    test = read_test_split(perturbed, shortage=SHORTAGE, file=perturbed)
    train, val = read_labeled(perturbed, "train"), read_labeled(perturbed, "val")
    moved = draw_label_budget(train, val, "60", seed=0, config=CONFIG.finetune)
    assert moved.train_ids.equals(budget.train_ids)
    for name in TABULAR:
        np.testing.assert_array_equal(score_tabular(name, test, moved)[0],
                                      score_tabular(name, test_split, budget)[0])  # fmt: skip
