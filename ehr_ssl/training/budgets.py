"""Label budgets: which labeled visits a model may learn from and select with.

A budget counts every label used, training and selection together (issue 19). Under cv
selection (`ehr_ssl.training.selection`) they all come from the train split and the K folds
are drawn within them; under holdout they are split between the train split (to fit) and the
val split (to select), in the ratio of the two splits' labels. Subsets are nested in the
budget for a seed: a smaller budget's visits are inside a larger one's.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from ehr_ssl.config import FinetuneConfig
from ehr_ssl.data.splits import label_budget_subset
from ehr_ssl.errors import InputError
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.training.selection import resolve_selection

MIN_VAL = 20  # holdout: the fewest val labels a budget selects with (or all there are)


def budget_ids(
    tokens_dir: Path, config: FinetuneConfig, *, setting: str = "finetune.label_budget"
) -> tuple[pl.Series, pl.Series]:
    """Visit ids of `config`'s label budget, seed and selection, read from the token shards
    (see `budget_split`)."""
    train = read_split(tokens_dir, "train").filter(pl.col("labeled"))
    val = read_split(tokens_dir, "val").filter(pl.col("labeled"))
    return budget_split(
        train, val, config.label_budget, seed=config.seed, selection=config.selection,
        cv_max_labels=config.cv_max_labels, setting=setting,
    )  # fmt: skip


def budget_split(
    train: pl.DataFrame,
    val: pl.DataFrame,
    budget: int | float | None,
    *,
    seed: int,
    selection: str,
    cv_max_labels: int,
    setting: str = "label_budget",
) -> tuple[pl.Series, pl.Series]:
    """Visit ids (train, val) of a label budget. `train` and `val` are the labeled visits of
    each split (`visit_id`, `labeled` and, to check that each subset holds both classes,
    `label` columns); `budget` is a count, a fraction or None (all).

    cv (see `resolve_selection` for "auto"): the budget's labels all from the train split (a
    fraction is of its labels); the val ids are empty, selection folds within the train ids.
    holdout: a count N is N - n_val train labels and n_val val labels, n_val the val split's
    share of the labels (at least MIN_VAL, at most all); a fraction or None takes that part
    of each split.

    Raises:
        InputError: naming `setting` (where the budget was set) and the counts, for a budget
            the labels cannot meet: fine-tuning would fail on it.
    """
    # a fraction's count as `label_budget_subset` draws it (rounded half up)
    n_labels = budget if isinstance(budget, int) else math.floor((budget or 1) * train.height + 0.5)
    if resolve_selection(selection, budget, n_labels, cv_max_labels) == "cv":
        train_ids = _subset(train, budget, seed, split="train", setting=setting)
        val_ids = val["visit_id"].clear()
    else:
        train_budget, val_budget = _holdout_shares(train, val, budget, setting)
        shares = f" (its holdout share: {train_budget} train + {val_budget} val labels)"
        shares = shares if isinstance(budget, int) else ""
        train_ids = _subset(train, train_budget, seed, split="train", setting=setting, note=shares)
        val_ids = _subset(val, val_budget, seed, split="val", setting=setting, note=shares)
    for split, frame, ids in (("train", train, train_ids), ("val", val, val_ids)):
        if len(ids):
            _check_both_classes(frame, ids, budget, split=split, setting=setting)
    return train_ids, val_ids


def _holdout_shares(
    train: pl.DataFrame, val: pl.DataFrame, budget: int | float | None, setting: str
) -> tuple[int | float | None, int | float | None]:
    """The train and val parts of a holdout budget (a count split in the ratio of the two
    splits' labels; a fraction or None taken of each)."""
    if val.height == 0:
        raise InputError("no labeled visits in the val split to select on", setting=setting)
    if not isinstance(budget, int):
        return budget, budget
    if budget > train.height + val.height:
        raise InputError(
            f"budget {budget} exceeds the {train.height + val.height} labeled visits available "
            f"in the train and val splits ({train.height} + {val.height})",
            setting=setting,
        )
    n_val = min(max(round(budget * val.height / (train.height + val.height)), MIN_VAL), val.height)
    if budget - n_val < 1:
        raise InputError(
            f"budget {budget} leaves no train labels once {n_val} are kept to select on "
            "(holdout selection): raise it or use cv selection",
            setting=setting,
        )
    return budget - n_val, n_val


def _subset(
    labeled: pl.DataFrame,
    budget: int | float | None,
    seed: int,
    *,
    split: str,
    setting: str,
    note: str = "",
) -> pl.Series:
    """The visit ids of `budget` of a split's labeled visits (`label_budget_subset`); `note`
    ends an error's message (the budget the user set, where this is its share)."""
    try:
        return label_budget_subset(labeled, budget, seed=seed)["visit_id"]
    except ValueError as e:  # a budget the split cannot meet is a bad setting
        raise InputError(f"{e} in the {split} split{note}", setting=setting) from None


def _check_both_classes(
    labeled: pl.DataFrame, ids: pl.Series, budget: int | float | None, *, split: str, setting: str
) -> None:
    """The visits `ids` of `labeled` hold both classes (fine-tuning and its selection need
    them); a frame without a `label` column is not checked."""
    if "label" not in labeled.columns:
        return
    labels = labeled.filter(pl.col("visit_id").is_in(ids.implode()))["label"]
    positives = int(labels.sum())
    if positives in (0, labels.len()):
        shown = "all" if budget is None else budget
        raise InputError(
            f"budget {shown!r} leaves {labels.len()} labeled {split} visits, {positives} of them "
            "positive: fine-tuning needs both classes",
            setting=setting,
        )
