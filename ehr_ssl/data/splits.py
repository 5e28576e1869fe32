"""Patient-level train/val/test splits from a stable hash of patient_id and a seed.

A patient's split depends only on their id and the seed, never on the rest of the data, the row
order or the library versions (polars' own hash is not stable across versions, so the hash is
written out here: FNV-1a over the UTF-8 bytes of the id, integer ids as their decimal text,
then the splitmix64 finalizer).
Every visit of a patient lands in the same split. Label budgets draw nested subsets of the
labeled visits of a split.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import polars as pl
import pyarrow as pa

from ehr_ssl.config import SplitConfig
from ehr_ssl.errors import InputError

SPLITS = ("train", "val", "test")
# A visits table's split column may use the MEDS names (meds.train_split, tuning_split,
# held_out_split) for these.
SPLIT_NAMES = {"train": "train", "val": "val", "test": "test", "tuning": "val", "held_out": "test"}
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijective mix of uint64 values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _fnv1a64(ids: pl.Series) -> np.ndarray:
    """FNV-1a 64-bit hash of each string's UTF-8 bytes, vectorized over byte positions."""
    arrow = ids.to_arrow().cast(pa.large_string())
    _, offsets_buf, data_buf = arrow.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arrow.offset : arrow.offset + len(ids) + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    )
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(ids), 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max(initial=0))):
            live = lengths > j
            byte = data[np.where(live, starts + j, 0)].astype(np.uint64)
            h = np.where(live, (h ^ byte) * prime, h)
    return h


def patient_hash(patient_ids: pl.Series, seed: int) -> np.ndarray:
    """A uniform value in [0, 1) per id, stable across runs, machines and library versions."""
    # Integer ids hash as their decimal text, so an export that turns 123 into "123" keeps
    # every patient in the same split.
    base = _fnv1a64(patient_ids.cast(pl.String))
    seeded = _splitmix64(base ^ _splitmix64(np.array([seed], dtype=np.uint64) & _MASK64))
    mixed = _splitmix64(seeded)
    # The top 53 bits give an exactly representable double in [0, 1).
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_splits(patient_ids: pl.Series, config: SplitConfig) -> pl.Series:
    """The split ("train", "val" or "test") of each patient id, as an Enum series.

    A patient falls in test when its hash is below test_fraction, in val when below
    test_fraction + val_fraction, else in train. Raising val_fraction moves patients from train to
    val only; the test patients stay the same.
    """
    u = patient_hash(patient_ids, config.seed)
    codes = np.where(
        u < config.test_fraction, 2, np.where(u < config.test_fraction + config.val_fraction, 1, 0)
    )
    return pl.Series("split", np.asarray(SPLITS)[codes], dtype=pl.Enum(SPLITS))


def visit_splits(visits: pl.DataFrame, config: SplitConfig) -> pl.Series:
    """The split of each checked visit: the visits table's own `split` column when it has one
    (a MEDS dataset's subject_splits.parquet, `readers.check_visits` checked it), else
    `assign_splits` by patient. With an own split, `config` must be the default (InputError
    otherwise: its settings would be ignored)."""
    if "split" in visits.columns:
        if config != SplitConfig():  # they would be ignored without a word
            raise InputError(
                "the visits carry their own split (a split column, or a MEDS "
                "subject_splits.parquet), so these settings would be ignored: leave them at "
                "their defaults",
                setting="split",
            )
        return visits["split"].cast(pl.Enum(SPLITS))
    return assign_splits(visits["patient_id"], config)


def temporal_splits(
    patient_ids: pl.Series, prediction_times: pl.Series, config: SplitConfig
) -> pl.Series:
    """A temporal split for retraining: the most recent `config.test_fraction` of visits (by
    prediction_time) form the test window; every other patient is split into train and val by
    hash, as in `assign_splits`. A patient is in one split only: visits of test-window patients
    from before the window are left out (null), so nothing of a test patient is trained on.

    Shape: patient_ids, prediction_times (V,) -> (V,) Enum series, null = left out.
    """
    if not 0 < config.test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {config.test_fraction}")
    cutoff = prediction_times.quantile(1 - config.test_fraction, "lower")
    in_window = (prediction_times > cutoff).to_numpy()
    if not in_window.any():  # every visit at one time: the window is the latest instant
        in_window = (prediction_times >= cutoff).to_numpy()
    test_patients = patient_ids.filter(pl.Series(in_window)).unique().implode()
    of_test_patient = patient_ids.is_in(test_patients).to_numpy()
    u = patient_hash(patient_ids, config.seed)
    val_share = config.val_fraction / (1 - config.test_fraction)
    codes = np.where(u < val_share, 1, 0)
    split = np.asarray(SPLITS, dtype=object)[codes]
    split[of_test_patient] = None
    split[in_window] = "test"
    return pl.Series("split", split.tolist(), dtype=pl.Enum(SPLITS))


def label_budget_subset(
    frame: pl.DataFrame, budget: int | float | None, *, seed: int
) -> pl.DataFrame:
    """The labeled visits of `frame`, limited to a label budget drawn as nested subsets.

    Labeled visits are sorted by visit_id (so the draw does not depend on row order) and ranked
    once by a permutation seeded with `seed`; a budget of N keeps the first N in that ranking.
    Hence for one seed the subset of a smaller budget is always inside that of a larger one.
    Rows come back in frame order.

    Args:
        frame: Visits with `visit_id` and `labeled` columns (e.g. one split from read_split).
        budget: An int N (1 <= N <= labeled visits), a float fraction in (0, 1] (N = fraction *
            labeled visits, rounded half up), or None for every labeled visit.
        seed: Seed of the ranking.

    Raises:
        ValueError: For a budget below one visit, above the labeled visits available (the
            message says how many), a fraction outside (0, 1], or another type.
    """
    for column in ("visit_id", "labeled"):
        if column not in frame.columns:
            raise ValueError(f"frame has no column {column!r} (columns: {frame.columns})")
    is_labeled = frame.get_column("labeled").fill_null(False).to_numpy().astype(bool)
    available = int(is_labeled.sum())
    if budget is None:
        return frame.filter(pl.Series(is_labeled))
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise ValueError(f"budget must be an int, a float in (0, 1] or None, got {budget!r}")
    if isinstance(budget, numbers.Integral):
        n = int(budget)
    else:
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"a fractional budget must be in (0, 1], got {budget!r}")
        n = math.floor(budget * available + 0.5)
    if n < 1:
        raise ValueError(
            f"budget {budget!r} is less than one visit ({available} labeled available)"
        )
    if n > available:
        raise ValueError(f"budget {budget!r} exceeds the {available} labeled visits available")

    rows = np.flatnonzero(is_labeled)
    by_id = frame.get_column("visit_id").gather(rows).arg_sort().to_numpy()
    ranking = rows[by_id][np.random.default_rng(seed).permutation(available)]
    keep = np.zeros(frame.height, dtype=bool)
    keep[ranking[:n]] = True
    return frame.filter(pl.Series(keep))
