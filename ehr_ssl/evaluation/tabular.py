"""Tabular features, the strongest non-neural baseline (issue 21, after MEDS-TAB and EHRSHOT):
per code, counts in time windows and value aggregations, plus counts rolled up the code
hierarchy, built from the token shards so they read exactly the events the transformer reads.

Built with polars/numpy from the tokens, not with meds-tab: meds-tab reads a MEDS root, with its
own cutoff and no truncation to max_length, so it would see events the transformer does not.
Numeric values exist in the tokens only as per-code quantile bins (1..n_bins, edges fitted on
train): a bin index is a monotone transform of the value, so last / min / max / mean of the bin
index is the value aggregation the tokens hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from ehr_ssl.config import WINDOW_DAYS
from ehr_ssl.evaluation.baselines import _flat
from ehr_ssl.tokens.hierarchy import ancestor_index, read_parent_codes
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import (
    NOT_EVENT_IDS,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    SEGMENT_STATIC,
)

# WINDOW_DAYS (config): a window as long as the tokenizer's lookback adds nothing
# (`history_windows`).
VALUE_STATS = ("last", "min", "max", "mean")


def history_windows(lookback_days: float, windows: Sequence[float] = WINDOW_DAYS) -> tuple:
    """The windows shorter than the lookback (a longer one equals the whole history read)."""
    return tuple(float(w) for w in windows if 0 < w < lookback_days)


def scopes(windows: Sequence[float]) -> list[str]:
    """Names of the count scopes, in column order: statics, the current visit, the history
    within each window (days before the prediction time), and all the history read."""
    return ["static", "current", *(f"history_{w:g}d" for w in windows), "history"]


def rollup_matrix(
    vocab: Sequence[str], parents: Mapping[str, Sequence[str]] | None = None
) -> tuple[sp.csr_matrix, list[str]]:
    """The code -> ancestor incidence over a (train-fitted) vocabulary, and the ancestors' names.

    Only ancestors of at least 2 vocabulary codes are kept: one with a single code would repeat
    that code's columns. Special tokens have none ([UNK] has lost its code).

    Shape: (V, A) float64 CSR, entry 1 where ancestor a is above code v; A names, sorted.
    """
    names, ids = ancestor_index(vocab, parents)
    rows, slots = ids.nonzero()
    matrix = sp.csr_matrix(
        (np.ones(len(rows)), (rows, ids[rows, slots] - 1)),
        shape=(len(vocab), len(names)),
        dtype=np.float64,
    )
    return matrix, names


@dataclass(frozen=True)
class TabularSpec:
    """What `tabular_features` needs of a tokens directory, fitted on train only: the vocabulary
    size and bins (the tokenizer's), the roll-up of its codes, and the history windows.
    Shape: rollup (V, A)."""

    vocab_size: int
    n_bins: int
    rollup: sp.csr_matrix
    ancestors: tuple[str, ...]
    windows: tuple[float, ...]

    @classmethod
    def from_tokens(cls, tokens_dir: Path) -> TabularSpec:
        """The spec of a tokens directory: its tokenizer's vocabulary and lookback, and its
        `CODES_FILE` hierarchy when it has one (else the `code_ancestors` rule)."""
        tokenizer = Tokenizer.load(tokens_dir)
        rollup, ancestors = rollup_matrix(tokenizer.vocab, read_parent_codes(tokens_dir))
        windows = history_windows(tokenizer.config.lookback_days)
        return cls(tokenizer.vocab_size, tokenizer.config.n_bins, rollup, tuple(ancestors),
                   windows)  # fmt: skip

    def features(self, frame: pl.DataFrame) -> sp.csr_matrix:
        """`tabular_features` of `frame`'s visits. Shape: (B, F)."""
        return tabular_features(frame, vocab_size=self.vocab_size, n_bins=self.n_bins,
                                rollup=self.rollup, windows=self.windows)  # fmt: skip


def n_tabular_features(vocab_size: int, n_ancestors: int, windows: Sequence[float]) -> int:
    """Width of `tabular_features`: a (V + A) block per scope, then a V block per value stat."""
    return len(scopes(windows)) * (vocab_size + n_ancestors) + len(VALUE_STATS) * vocab_size


def tabular_column_names(
    vocab: Sequence[str], ancestors: Sequence[str], windows: Sequence[float]
) -> list[str]:
    """A name per `tabular_features` column, e.g. "history_7d:LAB//HGB", "max:LAB//HGB",
    "current:^DX//I50" (^ marks a roll-up)."""
    names = [
        f"{scope}:{code}"
        for scope in scopes(windows)
        for code in [*vocab, *(f"^{a}" for a in ancestors)]
    ]
    return names + [f"{stat}:{code}" for stat in VALUE_STATS for code in vocab]


def tabular_features(
    frame: pl.DataFrame,
    *,
    vocab_size: int,
    n_bins: int,
    rollup: sp.csr_matrix | None = None,
    windows: Sequence[float] = WINDOW_DAYS,
) -> sp.csr_matrix:
    """The tabular features of each visit, from its tokens (no other visit is read).

    Column layout (V = vocab_size, A = rollup's columns, S = len(scopes(windows))):

        [s * (V + A), s * (V + A) + V)     log1p(count) of each code in scope s (`scopes`):
                                           static, current (segment_ids == 2), history within
                                           w days before the prediction time (segment 1,
                                           time_deltas >= -24 w), all history (segment 1)
        [s * (V + A) + V, (s + 1) * (V + A))  log1p(count) of each ancestor in scope s (the
                                           scope's raw code counts times `rollup`)
        [S * (V + A) + k * V, ... + V)     value stat k (`VALUE_STATS`) of each code's value
                                           bins (1..n_bins) over all its tokens with a value:
                                           last (the latest time_delta, ties: the later token),
                                           min, max, mean; 0 where the code has no value

    Special tokens are not counted ([UNK] is, like any code). Roll-ups count only vocabulary
    codes, so the columns come from the train-fitted vocabulary alone.

    Shape: frame (B rows) -> (B, n_tabular_features(V, A, windows)) float64 CSR.

    Raises:
        ValueError: If a token id is outside [0, vocab_size), a value bin outside [0, n_bins],
            the list columns of a visit differ in length, or rollup has not V rows.
    """
    tokens = _tokens(frame, vocab_size, n_bins)
    rollup = sp.csr_matrix((vocab_size, 0)) if rollup is None else sp.csr_matrix(rollup)
    if rollup.shape[0] != vocab_size:
        raise ValueError(f"rollup has {rollup.shape[0]} rows, the vocabulary {vocab_size}")
    rows, ids, bins, deltas, segments = tokens
    masks = [segments == SEGMENT_STATIC, segments == SEGMENT_CURRENT]
    history = segments == SEGMENT_HISTORY
    masks += [history & (deltas >= -24.0 * w) for w in windows] + [history]
    blocks = []
    for mask in masks:
        counts = _matrix(rows[mask], ids[mask], np.ones(int(mask.sum())), frame.height, vocab_size)
        blocks += [counts, counts @ rollup]
    for block in blocks:
        np.log1p(block.data, out=block.data)
    valued = bins > 0
    stats = _value_stats(rows[valued], ids[valued], bins[valued], deltas[valued])
    blocks += [_matrix(stats[0], stats[1], v, frame.height, vocab_size) for v in stats[2:]]
    return sp.hstack(blocks, format="csr", dtype=np.float64)


def _tokens(frame: pl.DataFrame, vocab_size: int, n_bins: int) -> tuple[np.ndarray, ...]:
    """The event tokens of every visit, flat: (rows, ids, bins, time_deltas, segments), special
    tokens dropped. Shape: each (N_events,)."""
    if vocab_size < 1 or n_bins < 1:
        raise ValueError(f"vocab_size and n_bins must be >= 1, got {vocab_size}, {n_bins}")
    columns = ("input_ids", "value_bins", "time_deltas", "segment_ids")
    flat = [_flat(frame, column) for column in columns]
    if any(not np.array_equal(flat[0][1], lengths) for _, lengths in flat[1:]):
        raise ValueError(f"{', '.join(columns)} differ in length for some visit")
    ids, bins = flat[0][0].astype(np.int64), flat[1][0].astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]")
    if bins.size and (bins.min() < 0 or bins.max() > n_bins):
        raise ValueError(f"value bins must be in [0, {n_bins}], got [{bins.min()}, {bins.max()}]")
    rows = np.repeat(np.arange(frame.height, dtype=np.int64), flat[0][1])
    is_event = np.ones(vocab_size, dtype=bool)
    is_event[[i for i in NOT_EVENT_IDS if i < vocab_size]] = False
    keep = is_event[ids]
    deltas = flat[2][0].astype(np.float64)
    return rows[keep], ids[keep], bins[keep], deltas[keep], flat[3][0][keep]


def _matrix(rows, cols, values, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """(rows, cols, values) summed into a CSR matrix. Shape: (n_rows, n_cols)."""
    matrix = sp.coo_matrix((values, (rows, cols)), shape=(n_rows, n_cols), dtype=np.float64)
    return matrix.tocsr()  # duplicates summed


def _value_stats(rows, ids, bins, deltas) -> list[np.ndarray]:
    """Per (visit, code) with a value: rows, ids, and its bins' last, min, max and mean.
    Shape: each (N_pairs,)."""
    if rows.size == 0:
        return [np.zeros(0)] * 6
    position = np.arange(rows.size)
    order = np.lexsort((position, deltas, ids, rows))  # by pair, then time, then token order
    rows, ids, bins = rows[order], ids[order], bins[order].astype(np.float64)
    start = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (ids[1:] != ids[:-1])])
    end = np.r_[start[1:], rows.size]
    size = end - start
    total = np.add.reduceat(bins, start)
    return [rows[start], ids[start], bins[end - 1], np.minimum.reduceat(bins, start),
            np.maximum.reduceat(bins, start), total / size]  # fmt: skip
