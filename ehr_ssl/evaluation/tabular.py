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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from ehr_ssl.config import WINDOW_DAYS
from ehr_ssl.errors import InputError
from ehr_ssl.evaluation.baselines import _flat
from ehr_ssl.layout import CODES_FILE
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import (
    NOT_EVENT_IDS,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    SEGMENT_STATIC,
    SPECIAL_TOKENS,
)

# WINDOW_DAYS (config): a window as long as the tokenizer's lookback adds nothing
# (`history_windows`).
VALUE_STATS = ("last", "min", "max", "mean")
VOCAB_SEPARATOR = "//"  # MEDS codes are "VOCABULARY//CODE" (e.g. "DX//I50.9")
# ATC (WHO drug classes), 7 characters: its levels 2-4 are its prefixes of 3, 4 and 5.
_ATC = re.compile(r"^[A-Z]\d\d[A-Z][A-Z]\d\d$")
_ATC_LEVELS = (3, 4, 5)
_ICD_CATEGORY = 3  # ICD-9 and ICD-10 categories are the first 3 characters ("I50", "428")


def history_windows(lookback_days: float, windows: Sequence[float] = WINDOW_DAYS) -> tuple:
    """The windows shorter than the lookback (a longer one equals the whole history read)."""
    return tuple(float(w) for w in windows if 0 < w < lookback_days)


def scopes(windows: Sequence[float]) -> list[str]:
    """Names of the count scopes, in column order: statics, the current visit, the history
    within each window (days before the prediction time), and all the history read."""
    return ["static", "current", *(f"history_{w:g}d" for w in windows), "history"]


def code_ancestors(code: str) -> list[str]:
    """Ancestors of a code by a generic rule on its spelling, nearest first; [] if none.

    The code part is the text after the last "//" (MEDS "VOCABULARY//CODE"), kept with its prefix:
      - a dotted code rolls up to the part before the dot: "DX//I50.9" -> "DX//I50" (the ICD-9 and
        ICD-10 category, "428.0" -> "428");
      - a code of a vocabulary whose name says ICD, without a dot and longer than 3 characters,
        rolls up to its 3-character category ("DIAGNOSIS//ICD//10//I5030" -> ".../I50"; ICD-10-PCS
        "0DTJ4ZZ" -> "0DT": section, body system, operation);
      - an ATC-shaped code (N02BE01) rolls up to its levels 4, 3 and 2 (N02BE, N02B, N02).
    Any other code (labs, CPT, LOINC, free names) has no ancestor by rule: a character prefix of
    such codes is not a class. Hierarchies beyond these come from a parent table (`ancestor_map`).
    """
    prefix, separator, part = code.rpartition(VOCAB_SEPARATOR)
    head = prefix + separator
    if _ATC.match(part):
        return [head + part[:n] for n in reversed(_ATC_LEVELS)]
    if "." in part:
        stem = part.split(".", 1)[0]
        return [head + stem] if stem else []
    if "ICD" in prefix.upper() and len(part) > _ICD_CATEGORY:
        return [head + part[:_ICD_CATEGORY]]
    return []


def ancestor_map(
    codes: Sequence[str], parents: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[str]]:
    """Each code's ancestors: from `parents` (code -> parent codes, e.g. MEDS
    metadata/codes.parquet's parent_codes), followed transitively, when given; else by
    `code_ancestors`. A code absent from `parents` has no ancestor."""
    if parents is None:
        return {code: code_ancestors(code) for code in codes}
    out = {}
    for code in codes:
        seen, frontier = [], list(parents.get(code, ()))
        while frontier:  # breadth-first, cycle-safe: each ancestor once
            parent = frontier.pop(0)
            if parent != code and parent not in seen:
                seen.append(parent)
                frontier.extend(parents.get(parent, ()))
        out[code] = seen
    return out


def rollup_matrix(
    vocab: Sequence[str], parents: Mapping[str, Sequence[str]] | None = None
) -> tuple[sp.csr_matrix, list[str]]:
    """The code -> ancestor incidence over a (train-fitted) vocabulary, and the ancestors' names.

    Only ancestors of at least 2 vocabulary codes are kept: one with a single code would repeat
    that code's columns. Special tokens have none ([UNK] has lost its code).

    Shape: (V, A) float64 CSR, entry 1 where ancestor a is above code v; A names, sorted.
    """
    first = len(SPECIAL_TOKENS)
    lineage = ancestor_map(list(vocab[first:]), parents)
    below: dict[str, list[int]] = {}
    for offset, code in enumerate(vocab[first:]):
        for ancestor in lineage[code]:
            below.setdefault(ancestor, []).append(first + offset)
    names = sorted(a for a, ids in below.items() if len(ids) >= 2)
    rows = [i for a in names for i in below[a]]
    cols = [j for j, a in enumerate(names) for _ in below[a]]
    matrix = sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(vocab), len(names)), dtype=np.float64
    )
    return matrix, names


def read_parent_codes(tokens_dir: Path) -> dict[str, list[str]] | None:
    """The tokens directory's code hierarchy (`CODES_FILE`: code, parent_codes as MEDS
    metadata/codes.parquet holds them), as code -> parent codes; None when it has none: no
    file, or a file that names no parent at all (MEDS ETLs often write the column all null), so
    the roll-ups fall back to `code_ancestors` rather than vanish.

    Raises:
        InputError: The file lacks a column or holds a code twice.
    """
    path = Path(tokens_dir) / CODES_FILE
    if not path.exists():
        return None
    table = pl.read_parquet(path)
    missing = {"code", "parent_codes"} - set(table.columns)
    if missing:
        raise InputError(f"missing column(s) {sorted(missing)}", file=str(path))
    table = table.select("code", pl.col("parent_codes").fill_null([]))
    if table["code"].is_duplicated().any():
        raise InputError("a code is listed twice", file=str(path), column="code")
    if table["parent_codes"].list.len().sum() == 0:
        return None
    return dict(zip(table["code"].to_list(), table["parent_codes"].to_list(), strict=True))


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
