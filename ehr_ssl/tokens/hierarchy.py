"""The code hierarchy: each code's ancestors (ICD categories and ATC levels by the code's
spelling, or a MEDS `metadata/codes.parquet` parent table), the roll-ups a tabular model counts
and the ancestor embeddings an encoder adds to a code's own (`model.code_hierarchy`).

Only ancestors of at least two vocabulary codes count: one above a single code repeats it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from ehr_ssl.data.parquet import read_parquet
from ehr_ssl.errors import InputError
from ehr_ssl.layout import CODES_FILE
from ehr_ssl.tokens.vocab import SPECIAL_TOKENS

VOCAB_SEPARATOR = "//"  # MEDS codes are "VOCABULARY//CODE" (e.g. "DX//I50.9")
# ATC (WHO drug classes), 7 characters: its levels 2-4 are its prefixes of 3, 4 and 5.
_ATC = re.compile(r"^[A-Z]\d\d[A-Z][A-Z]\d\d$")
_ATC_LEVELS = (3, 4, 5)
_ICD_CATEGORY = 3  # ICD-9 and ICD-10 categories are the first 3 characters ("I50", "428")
# A dotted ICD code: its category, a dot, the rest ("I50.9", "428.0", "E880.9", "S72.001A",
# ICD-9 procedures "88.72"); not free text with a decimal ("Sodium Chloride 0.9% Flush").
_DOTTED_ICD = re.compile(r"^([A-Za-z0-9]{2,4})\.[A-Za-z0-9]{1,4}$")


def code_ancestors(code: str) -> list[str]:
    """Ancestors of a code by a generic rule on its spelling, nearest first; [] if none.

    The code part is the text after the last "//" (MEDS "VOCABULARY//CODE"), kept with its prefix:
      - a dotted code shaped like ICD (2-4 characters, a dot, 1-4 characters) rolls up to the
        part before the dot: "DX//I50.9" -> "DX//I50" (the ICD-9 and ICD-10 category, "428.0"
        -> "428"); a name with a decimal in it ("Sodium Chloride 0.9% Flush") is no class;
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
    dotted = _DOTTED_ICD.match(part)
    if dotted:
        return [head + dotted.group(1)]
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


def ancestor_index(
    vocab: Sequence[str],
    parents: Mapping[str, Sequence[str]] | None = None,
    max_per_code: int | None = None,
) -> tuple[list[str], np.ndarray]:
    """The ancestors above at least 2 codes of a (train-fitted) vocabulary, and each code's.

    Special tokens have none ([UNK] has lost its code); a code that is an ancestor of others
    counts as its own nearest. A code keeps its `max_per_code` nearest ancestors (all when None;
    a deep parent table such as SNOMED's can hold dozens), and only kept ancestors count
    towards the 2 codes.

    Returns: the ancestors' names, sorted, and ids, shape (V, K) int64: ids[v] holds code v's
    ancestors as 1 + their index in the names, nearest first, then 0 (none); K >= 1.
    """
    first = len(SPECIAL_TOKENS)
    full = ancestor_map(list(vocab[first:]), parents)
    # A code that is itself a class of other codes ("I50" beside "I50.9"; the class a rare code
    # backs off to, `ehr_ssl.tokens.backoff`) shares that class's vector with them.
    classes = {a for ancestors in full.values() for a in ancestors}
    full = {code: [code] * (code in classes) + ancestors for code, ancestors in full.items()}
    lineage = {code: ancestors[:max_per_code] for code, ancestors in full.items()}  # cap first
    below: dict[str, int] = {}
    for code in vocab[first:]:
        for ancestor in lineage[code]:
            below[ancestor] = below.get(ancestor, 0) + 1
    names = sorted(a for a, n in below.items() if n >= 2)
    number = {name: i + 1 for i, name in enumerate(names)}
    kept = [[number[a] for a in lineage[code] if a in number] for code in vocab[first:]]
    ids = np.zeros((len(vocab), max([1, *map(len, kept)])), dtype=np.int64)
    for offset, row in enumerate(kept):
        ids[first + offset, : len(row)] = row
    return names, ids


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
    table = read_parquet(path)  # checked: a damaged file is an InputError
    missing = {"code", "parent_codes"} - set(table.columns)
    if missing:
        raise InputError(f"missing column(s) {sorted(missing)}", file=str(path))
    table = table.select("code", pl.col("parent_codes").fill_null([]))
    if table["code"].is_duplicated().any():
        raise InputError("a code is listed twice", file=str(path), column="code")
    if table["parent_codes"].list.len().sum() == 0:
        return None
    return dict(zip(table["code"].to_list(), table["parent_codes"].to_list(), strict=True))
