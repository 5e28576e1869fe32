"""Label budgets: a budget counts every label used (all train labels under cv; train plus val
under holdout), subsets are nested for a seed, and budgets the labels cannot meet are refused
naming the setting."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ehr_ssl.errors import InputError
from ehr_ssl.training.budgets import MIN_VAL, budget_split

N_TRAIN, N_VAL = 300, 100


def labeled(n: int, *, first_id: int, seed: int, positive_rate: float = 0.4) -> pl.DataFrame:
    """`n` labeled visits (ids unsorted, non-consecutive), both classes."""
    rng = np.random.default_rng(seed)
    label = rng.random(n) < positive_rate
    label[:2] = (False, True)
    return pl.DataFrame(
        {
            "visit_id": first_id + 3 * rng.permutation(n),
            "labeled": np.ones(n, dtype=bool),
            "label": label,
        }
    )


@pytest.fixture(scope="module")
def splits() -> tuple[pl.DataFrame, pl.DataFrame]:
    return labeled(N_TRAIN, first_id=10, seed=0), labeled(N_VAL, first_id=5000, seed=1)


def split(frames, budget, *, selection: str, seed: int = 0, cv_max_labels: int = 1000, **kw):
    train, val = frames
    return budget_split(
        train, val, budget, seed=seed, selection=selection, cv_max_labels=cv_max_labels, **kw
    )


def expected_val_share(budget: int, n_val: int = N_VAL) -> int:
    """The val labels of a holdout count, from the docstring: the val split's share of the
    labels, at least MIN_VAL, at most all of them."""
    return min(max(round(budget * n_val / (N_TRAIN + n_val)), MIN_VAL), n_val)


@pytest.mark.parametrize("budget", [10, 20, 100, 250, N_TRAIN])
def test_cv_takes_every_label_from_the_train_split(splits, budget: int):
    train, val = splits
    train_ids, val_ids = split(splits, budget, selection="cv")
    assert len(train_ids) == train_ids.n_unique() == budget
    assert set(train_ids) <= set(train["visit_id"])
    assert len(val_ids) == 0 and val_ids.dtype == val["visit_id"].dtype


@pytest.mark.parametrize("budget", [30, 40, 100, 200, 333, N_TRAIN + N_VAL])
def test_holdout_splits_a_count_between_train_and_val(splits, budget: int):
    train, val = splits
    train_ids, val_ids = split(splits, budget, selection="holdout")
    assert len(train_ids) + len(val_ids) == budget  # the budget counts every label used
    assert len(val_ids) == expected_val_share(budget)
    assert MIN_VAL <= len(val_ids) <= N_VAL
    assert set(train_ids) <= set(train["visit_id"]) and set(val_ids) <= set(val["visit_id"])
    if budget >= 200:  # large budgets: in the ratio of the splits' labels (1:3 here)
        assert abs(len(val_ids) - budget / 4) <= 1


def test_holdout_keeps_every_val_label_when_the_val_split_is_small(splits):
    train, _ = splits
    small_val = labeled(12, first_id=9000, seed=2)
    train_ids, val_ids = split((train, small_val), 50, selection="holdout")
    assert (len(train_ids), len(val_ids)) == (50 - 12, 12)  # fewer than MIN_VAL: all of them


@pytest.mark.parametrize("selection", ["cv", "holdout"])
def test_budgets_are_nested_for_a_seed(splits, selection: str):
    budgets = [40, 45, 80, 150, 260]
    drawn = [split(splits, b, selection=selection, seed=4) for b in budgets]
    for (small_train, small_val), (big_train, big_val) in zip(drawn[:-1], drawn[1:], strict=True):
        assert set(small_train) < set(big_train)
        assert set(small_val) <= set(big_val)
    again = split(splits, 80, selection=selection, seed=4)
    assert [s.to_list() for s in again] == [s.to_list() for s in drawn[2]]  # deterministic
    other = split(splits, 80, selection=selection, seed=5)
    assert set(other[0]) != set(drawn[2][0])


def test_the_draw_does_not_depend_on_row_order(splits):
    train, val = splits
    shuffled = (train.sample(fraction=1.0, shuffle=True, seed=3), val.reverse())
    for selection in ("cv", "holdout"):
        a = split(splits, 120, selection=selection, seed=2)
        b = split(shuffled, 120, selection=selection, seed=2)
        assert [set(s) for s in a] == [set(s) for s in b]


@pytest.mark.parametrize(
    ("budget", "cv_max_labels", "protocol"),
    [
        (100, 100, "cv"),  # at the threshold
        (101, 100, "holdout"),
        (250, 1000, "cv"),
        (0.25, 100, "cv"),  # 75 of the 300 train labels
        (0.5, 100, "holdout"),  # 150
        (None, 1000, "holdout"),  # "all": holdout however few the labels
    ],
)
def test_auto_is_cv_up_to_cv_max_labels(splits, budget, cv_max_labels: int, protocol: str):
    auto = split(splits, budget, selection="auto", cv_max_labels=cv_max_labels)
    assert (len(auto[1]) == 0) == (protocol == "cv")
    explicit = split(splits, budget, selection=protocol)
    assert [s.to_list() for s in auto] == [s.to_list() for s in explicit]
    if protocol == "cv":
        assert len(auto[0]) <= cv_max_labels


def test_auto_never_selects_more_than_cv_max_labels_by_cv():
    """A fraction whose count of labels is x.5: the count `auto` compares with cv_max_labels
    must be the count the subset draws (rounded half up)."""
    frames = (labeled(201, first_id=10, seed=0), labeled(60, first_id=5000, seed=1))
    train_ids, val_ids = split(frames, 0.5, selection="auto", cv_max_labels=100)
    assert len(val_ids) > 0 or len(train_ids) <= 100, (len(train_ids), len(val_ids))


def test_fractions_and_all(splits):
    train, val = splits
    train_ids, val_ids = split(splits, 0.25, selection="cv")
    assert (len(train_ids), len(val_ids)) == (75, 0)  # a fraction of the train labels
    train_ids, val_ids = split(splits, 0.25, selection="holdout")
    assert (len(train_ids), len(val_ids)) == (75, 25)  # that part of each split
    train_ids, val_ids = split(splits, None, selection="holdout")
    assert set(train_ids) == set(train["visit_id"]) and set(val_ids) == set(val["visit_id"])
    train_ids, val_ids = split(splits, None, selection="cv")
    assert set(train_ids) == set(train["visit_id"]) and len(val_ids) == 0


@pytest.mark.parametrize(
    ("budget", "selection", "problem"),
    [
        (N_TRAIN + 1, "cv", f"exceeds the {N_TRAIN} labeled visits available in the train split"),
        (
            N_TRAIN + N_VAL + 1,
            "holdout",
            f"exceeds the {N_TRAIN + N_VAL} labeled visits available in the train and val splits",
        ),
        (1, "cv", "leaves 1 labeled train visits"),
        (MIN_VAL, "holdout", "leaves no train labels"),
        (15, "holdout", "leaves no train labels"),
        (0, "cv", "less than one visit"),
        (1.5, "cv", "fractional budget"),
    ],
)
def test_budgets_the_labels_cannot_meet_name_the_setting(splits, budget, selection, problem):
    with pytest.raises(InputError, match=problem) as error:
        split(splits, budget, selection=selection, setting="evaluate.label_budgets")
    assert error.value.setting == "evaluate.label_budgets"
    assert str(error.value).startswith("setting 'evaluate.label_budgets': ")


def test_a_subset_of_one_class_is_refused(splits):
    train, val = splits
    # The val split's labels are all negative: holdout cannot select on it, cv never reads it.
    negative_val = val.with_columns(label=pl.lit(False))
    with pytest.raises(InputError, match="labeled val visits, 0 of them positive") as error:
        split((train, negative_val), 100, selection="holdout")
    assert error.value.setting == "label_budget"  # the default setting
    assert len(split((train, negative_val), 100, selection="cv")[0]) == 100
    # Train labels of one class: no budget of them will do, under either selection.
    for value, positives in ((False, "0"), (True, "50")):
        one_class = train.with_columns(label=pl.lit(value))
        for selection in ("cv", "holdout"):
            with pytest.raises(InputError, match=f"train visits, {positives} of them positive"):
                split((one_class, val), 50 + MIN_VAL * (selection == "holdout"),
                      selection=selection)  # fmt: skip
    # Without a label column nothing is checked.
    train_ids, _ = split((train.drop("label"), val.drop("label")), 1, selection="cv")
    assert len(train_ids) == 1


def test_holdout_needs_val_labels(splits):
    train, val = splits
    with pytest.raises(InputError, match="no labeled visits in the val split") as error:
        split((train, val.clear()), 100, selection="holdout", setting="finetune.label_budget")
    assert error.value.setting == "finetune.label_budget"
    assert len(split((train, val.clear()), 100, selection="cv")[0]) == 100


def test_budget_ids_reads_the_labeled_visits_of_the_shards(cohort_tokens):
    from ehr_ssl.config import FinetuneConfig
    from ehr_ssl.tokens.shards import read_split
    from ehr_ssl.training.budgets import budget_ids

    train, val = (read_split(cohort_tokens, s).filter(pl.col("labeled")) for s in ("train", "val"))
    for selection in ("cv", "holdout"):
        config = FinetuneConfig(label_budget=50, seed=3, selection=selection)
        expected = budget_split(train, val, 50, seed=3, selection=selection, cv_max_labels=1000)
        assert [s.to_list() for s in budget_ids(cohort_tokens, config)] == [
            s.to_list() for s in expected
        ]
    too_many = FinetuneConfig(label_budget=train.height + 1, selection="cv")
    with pytest.raises(InputError, match="exceeds") as error:
        budget_ids(cohort_tokens, too_many)
    assert error.value.setting == "finetune.label_budget"  # where fine-tuning sets it
