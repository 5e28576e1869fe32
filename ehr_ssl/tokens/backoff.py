"""Rare codes read as their class (`tokenizer.rare_codes = "ancestor"`).

A code held by fewer than min_count training patients cannot enter the vocabulary (the privacy
guard), and as [UNK] it says nothing. Real diagnosis and drug codes are specific ("E11.65",
"N02BE01") and most of them are rare at one hospital, while their classes ("E11", "N02BE") are
common: the chronic state of a patient often lives in families of rare codes. Here a code
outside the vocabulary is read as its nearest ancestor by the code's spelling
(`hierarchy.code_ancestors`: ICD category, ATC levels) that is in the vocabulary.

The fit adds to the vocabulary the classes that at least min_count distinct training patients
hold through the rare codes that back off to them, the same privacy rule as for codes. Only the
spelling rule is used, never a parent table, so that any tokenizer.json encodes new data as it
did its training data without carrying a list of rare codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import polars as pl

from ehr_ssl.tokens.hierarchy import code_ancestors


def backoff_target(code: str, known: Mapping[str, object] | set[str]) -> str | None:
    """The nearest ancestor of `code` by spelling that is in `known`; None if none is."""
    return _nearest(code_ancestors(code), known)


def _nearest(ancestors: list[str], known: Mapping[str, object] | set[str]) -> str | None:
    return next((a for a in ancestors if a in known), None)


def rare_code_pairs(rows: pl.DataFrame, min_count: int) -> pl.DataFrame:
    """The distinct (patient_id, code) pairs of `rows` (patient_id, code) whose code fewer than
    `min_count` of these patients hold: every pair of a code rare over all patients, when
    `rows` is one chunk of a partition by patient. Columns patient_id, code."""
    pairs = rows.select("patient_id", "code").unique()
    rare = pairs.group_by("code").agg(pl.len().alias("patients"))
    rare = rare.filter(pl.col("patients") < min_count).select("code")
    return pairs.join(rare, on="code", how="semi")


def fit_backoff_classes(
    pairs: pl.DataFrame, vocabulary: Iterable[str], min_count: int
) -> dict[str, int]:
    """The classes that rare codes back off to, each with its distinct training patients.

    `pairs` (patient_id, code) are the rare codes' distinct pairs; `vocabulary` the codes that
    entered on their own. A rare code backs off to its nearest ancestor in the vocabulary or
    among the candidate classes (or stays itself, when it is a candidate class by its name).
    Candidates that fewer than min_count patients (but some) reach are dropped until none is;
    every class returned is then reached, under `backoff_target`'s rule, by min_count patients.
    """
    vocabulary = set(vocabulary)
    lineage = {code: code_ancestors(code) for code in pairs["code"].unique().to_list()}
    candidates = {a for ancestors in lineage.values() for a in ancestors} - vocabulary
    while True:
        known = vocabulary | candidates
        target = {  # backoff_target's rule, each code's lineage parsed once
            code: code if code in candidates else _nearest(up, known)
            for code, up in lineage.items()
        }
        reached = _patients_per_class(pairs, target, candidates)
        too_few = {name for name, n in reached.items() if n < min_count}
        if not too_few:  # those no code reaches are left out: no token would read them
            return dict(sorted(reached.items()))
        candidates -= too_few  # their codes move up a level, or to [UNK], and are recounted


def _patients_per_class(
    pairs: pl.DataFrame, target: dict[str, str | None], candidates: set[str]
) -> dict[str, int]:
    """Distinct patients per candidate class, each rare code counted at its target."""
    mapping = pl.DataFrame(
        {"code": list(target), "target": list(target.values())},
        schema={"code": pl.String, "target": pl.String},
    ).filter(pl.col("target").is_in(pl.Series(sorted(candidates), dtype=pl.String).implode()))
    reached = (
        pairs.join(mapping, on="code")
        .group_by("target")
        .agg(pl.col("patient_id").n_unique().alias("patients"))
    )
    return dict(zip(reached["target"].to_list(), reached["patients"].to_list(), strict=True))


def with_backoff_classes(counts: pl.DataFrame, pairs: pl.DataFrame, min_count: int) -> pl.DataFrame:
    """`counts` (code, patients: distinct training patients per code) with the backoff classes
    added (a class spelled like a rare code takes its place), for `fit_vocabulary`.

    `pairs` (patient_id, code) hold every distinct pair of the rare codes (`counts` below
    min_count), and may hold pairs of other codes too (`rare_code_pairs` of each chunk)."""
    rare = counts.filter(pl.col("patients") < min_count).select("code")
    frequent = counts.filter(pl.col("patients") >= min_count)["code"]
    classes = fit_backoff_classes(pairs.join(rare, on="code", how="semi"), frequent, min_count)
    added = pl.DataFrame(
        {"code": list(classes), "patients": list(classes.values())}, schema=counts.schema
    )
    is_class = pl.col("code").is_in(pl.Series(list(classes), dtype=pl.String).implode())
    return pl.concat([counts.filter(~is_class), added])
