"""Patient-level splits: deterministic, disjoint, stable across versions, by patient only."""

import numpy as np
import polars as pl
import pytest

from ehr_ssl.config import SplitConfig
from ehr_ssl.data.splits import assign_splits, label_budget_subset, patient_hash, visit_splits
from ehr_ssl.errors import InputError


def test_deterministic_and_independent_of_row_order():
    ids = pl.Series(np.arange(5000))
    first = assign_splits(ids, SplitConfig(seed=3))
    again = assign_splits(ids, SplitConfig(seed=3))
    assert first.equals(again)
    order = np.random.default_rng(0).permutation(5000)
    shuffled = assign_splits(ids.gather(order), SplitConfig(seed=3))
    assert shuffled.equals(first.gather(order))


def test_every_visit_of_a_patient_in_one_split():
    ids = pl.Series(np.repeat(np.arange(2000), 3))  # three visits per patient
    frame = pl.DataFrame({"patient_id": ids, "split": assign_splits(ids, SplitConfig())})
    assert frame.group_by("patient_id").agg(pl.col("split").n_unique())["split"].max() == 1


@pytest.mark.parametrize("dtype", [pl.Int64, pl.String])
def test_fractions_and_seed(dtype):
    ids = pl.Series(np.arange(50_000)).cast(dtype)
    split = assign_splits(ids, SplitConfig(val_fraction=0.15, test_fraction=0.1))
    shares = split.value_counts(normalize=True).sort("split")["proportion"].to_list()
    assert shares == pytest.approx([0.75, 0.15, 0.10], abs=0.01)
    other = assign_splits(ids, SplitConfig(seed=1, val_fraction=0.15, test_fraction=0.1))
    assert (split != other).mean() > 0.2


def test_growing_val_keeps_test_patients():
    ids = pl.Series(np.arange(20_000))
    small = assign_splits(ids, SplitConfig(val_fraction=0.1))
    large = assign_splits(ids, SplitConfig(val_fraction=0.2))
    assert ((small == "test") == (large == "test")).all()
    assert ((small == "val") & (large != "val")).sum() == 0


def test_hash_is_pinned():
    """Split assignment must not change between versions: these values are the contract."""
    ints = patient_hash(pl.Series([0, 1, 123456789]), seed=0)
    strings = patient_hash(pl.Series(["0", "patient-1", "é"]), seed=0)
    assert np.all((ints >= 0) & (ints < 1)) and np.all((strings >= 0) & (strings < 1))
    assert ints.round(6).tolist() == PINNED_INT
    assert strings.round(6).tolist() == PINNED_STR
    assert patient_hash(pl.Series(["patient-1"]), seed=1)[0] != strings[1]
    # The same id as an integer or as text lands in the same split.
    assert patient_hash(pl.Series(["0", "1", "123456789"]), seed=0).tolist() == ints.tolist()


PINNED_INT = [0.952672, 0.569415, 0.611572]
PINNED_STR = [0.952672, 0.950109, 0.205006]

M64 = (1 << 64) - 1


def _splitmix64_reference(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _hash_reference(patient_id: int | str, seed: int) -> float:
    """Pure-Python transcription of the documented hash, one id at a time."""
    base = 0xCBF29CE484222325
    for byte in str(patient_id).encode():
        base = ((base ^ byte) * 0x100000001B3) & M64
    mixed = _splitmix64_reference(_splitmix64_reference(base ^ _splitmix64_reference(seed)))
    return (mixed >> 11) / (1 << 53)


@pytest.mark.parametrize("seed", [0, 7])
def test_vectorized_hash_matches_reference(seed):
    ints = [0, 1, -5, 2**40 + 3, 987654321]
    strings = ["", "a", "patient-00042", "漢字-é", "x" * 70]
    assert patient_hash(pl.Series(ints), seed).tolist() == [_hash_reference(i, seed) for i in ints]
    assert patient_hash(pl.Series(strings), seed).tolist() == [
        _hash_reference(s, seed) for s in strings
    ]


def test_temporal_splits_hold_out_the_latest_visits_and_keep_patients_apart():
    from datetime import datetime, timedelta

    from ehr_ssl.config import SplitConfig
    from ehr_ssl.data.splits import temporal_splits

    rng = np.random.default_rng(0)
    patients = pl.Series(rng.integers(0, 300, 2000))
    times = pl.Series(
        [datetime(2024, 1, 1) + timedelta(hours=int(h)) for h in rng.permutation(2000)]
    )
    split = temporal_splits(patients, times, SplitConfig(val_fraction=0.1, test_fraction=0.2))
    test_times = times.filter(split == "test")
    kept = split.is_not_null()
    assert test_times.min() > times.filter(kept & (split != "test")).max()
    assert test_times.len() == 400  # the latest 20% of visits
    frame = pl.DataFrame({"p": patients, "s": split}).drop_nulls()
    assert frame.group_by("p").agg(pl.col("s").n_unique())["s"].max() == 1
    # a left-out visit is an earlier visit of a test-window patient
    left_out = patients.filter(~kept).unique()
    assert left_out.is_in(patients.filter(split == "test").implode()).all()


# --- label budgets ---------------------------------------------------------------------------


def budget_frame(n: int = 200) -> pl.DataFrame:
    """Visits with ids in reverse order, every third unlabeled."""
    labeled = [i % 3 != 0 for i in range(n)]
    return pl.DataFrame(
        {
            "visit_id": list(range(n, 0, -1)),
            "labeled": labeled,
            "label": [(i % 2 == 0) if lab else None for i, lab in enumerate(labeled)],
        }
    )


def ids(frame: pl.DataFrame) -> set[int]:
    return set(frame["visit_id"].to_list())


def test_label_budget_subsets_are_nested_and_labeled():
    frame = budget_frame()
    available = int(frame["labeled"].sum())
    subsets = [label_budget_subset(frame, n, seed=3) for n in (1, 5, 20, 60, available)]
    for smaller, larger in zip(subsets, subsets[1:], strict=False):
        assert ids(smaller) < ids(larger)
    assert [s.height for s in subsets] == [1, 5, 20, 60, available]
    assert all(s["labeled"].all() for s in subsets)
    assert ids(subsets[-1]) == ids(label_budget_subset(frame, None, seed=3))
    assert ids(subsets[-1]) == ids(frame.filter("labeled"))
    # Rows come back in frame order.
    order = frame["visit_id"].to_list()
    kept = subsets[2]["visit_id"].to_list()
    assert kept == sorted(kept, key=order.index)


def test_label_budget_is_seeded_and_independent_of_row_order():
    frame = budget_frame()
    assert ids(label_budget_subset(frame, 20, seed=3)) == ids(
        label_budget_subset(frame, 20, seed=3)
    )
    assert ids(label_budget_subset(frame, 20, seed=3)) != ids(
        label_budget_subset(frame, 20, seed=4)
    )
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=0)
    assert ids(label_budget_subset(shuffled, 20, seed=3)) == ids(
        label_budget_subset(frame, 20, seed=3)
    )


def test_label_budget_fraction_matches_count():
    frame = budget_frame(150)  # 100 labeled
    for fraction, n in ((0.01, 1), (0.25, 25), (0.29, 29), (0.5, 50), (1.0, 100)):
        assert ids(label_budget_subset(frame, fraction, seed=7)) == ids(
            label_budget_subset(frame, n, seed=7)
        )


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (0, "less than one"),
        (-3, "less than one"),
        (101, "100 labeled"),
        (0.0, r"\(0, 1\]"),
        (1.5, r"\(0, 1\]"),
        (0.001, "less than one"),
        (True, "budget must be"),
        ("all", "budget must be"),
    ],
)
def test_label_budget_rejects_bad_budgets(budget, message: str):
    with pytest.raises(ValueError, match=message):
        label_budget_subset(budget_frame(150), budget, seed=0)


def test_a_datasets_own_split_is_kept_and_split_settings_beside_it_are_refused():
    visits = pl.DataFrame({"patient_id": [1, 2, 3], "split": ["train", "test", "val"]})
    assert visit_splits(visits, SplitConfig()).to_list() == ["train", "test", "val"]
    with pytest.raises(InputError, match="setting 'split': the visits carry their own split"):
        visit_splits(visits, SplitConfig(val_fraction=0.2))  # would be ignored
    assert visit_splits(visits.drop("split"), SplitConfig(val_fraction=0.2)).len() == 3
