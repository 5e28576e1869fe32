"""Data drift between the visits a model was trained on and new visits, measured on their tokens:
code frequency shift, the share of codes the vocabulary has never seen, label prevalence and
events per visit. A profile holds counts only (per vocabulary code, never per patient or visit).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ehr_ssl.tokens.shards import flat_tokens
from ehr_ssl.tokens.vocab import HIST_ID, SEGMENT_STATIC, SPECIAL_TOKENS, UNK_ID, VISIT_ID

TOP_SHIFTED = 10  # codes listed by how much their share moved


def data_profile(tokens: pl.DataFrame, vocab_size: int) -> dict:
    """Counts that describe tokenized visits, for a later drift comparison.

    `tokens` has one row per visit with `input_ids` and `segment_ids` (and optionally `labeled`,
    `label`). Event tokens are those outside the static segment other than the separators; an
    unknown code is an event token mapped to [UNK].
    """
    table = tokens.select("input_ids", "segment_ids").to_arrow()
    ids, _ = flat_tokens(table, "input_ids")
    segments, _ = flat_tokens(table, "segment_ids")
    is_event = (segments != SEGMENT_STATIC) & (ids != HIST_ID) & (ids != VISIT_ID)
    counts = np.bincount(ids[is_event], minlength=vocab_size)
    profile = {
        "visits": tokens.height,
        "event_tokens": int(is_event.sum()),
        "events_per_visit": float(is_event.sum() / max(tokens.height, 1)),
        "unknown_code_share": float(counts[UNK_ID] / max(is_event.sum(), 1)),
        "labeled": None,
        "prevalence": None,
        "code_counts": counts.tolist(),
    }
    if "labeled" in tokens.columns:
        labeled = tokens.filter(pl.col("labeled"))
        profile["labeled"] = labeled.height
        profile["prevalence"] = float(labeled["label"].mean()) if labeled.height else None
    return profile


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two count vectors' distributions."""
    p = p / max(p.sum(), 1)
    q = q / max(q.sum(), 1)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return max(0.0, (kl(p) + kl(q)) / 2)


def compare_profiles(reference: dict, current: dict, vocab: list[str]) -> dict:
    """The drift of `current` (new data) against `reference` (the model's training data).

    Code shares are over known codes (the special tokens, [UNK] included, are left out), so a
    rise in unknown codes shows in `unknown_code_share`, not twice.
    """
    first = len(SPECIAL_TOKENS)
    ref = np.asarray(reference["code_counts"], dtype=np.float64)[first:]
    cur = np.asarray(current["code_counts"], dtype=np.float64)[first:]
    ref_share, cur_share = ref / max(ref.sum(), 1), cur / max(cur.sum(), 1)
    moved = np.argsort(-np.abs(cur_share - ref_share), kind="stable")[:TOP_SHIFTED]
    return {
        "code_frequency_jsd": jensen_shannon(ref, cur),
        "most_shifted_codes": [
            {
                "code": vocab[first + i],
                "reference_share": float(ref_share[i]),
                "current_share": float(cur_share[i]),
            }
            for i in moved
            if ref_share[i] != cur_share[i]
        ],
        **{
            key: {"reference": reference[key], "current": current[key]}
            for key in ("unknown_code_share", "prevalence", "events_per_visit", "visits")
        },
    }


def format_drift_markdown(drift: dict) -> str:
    """The drift section of a retrain report, as Markdown."""

    def number(value: float | None, digits: int = 3) -> str:
        return "–" if value is None else f"{value:,.{digits}f}"

    lines = [
        "## Drift: new data vs the production model's training data",
        "",
        "| measure | production's training data | new data |",
        "|---|---|---|",
    ]
    for key, label, digits in (
        ("visits", "visits", 0),
        ("events_per_visit", "events per visit", 1),
        ("unknown_code_share", "share of unseen codes", 4),
        ("prevalence", "label prevalence", 3),
    ):
        pair = drift[key]
        lines.append(
            f"| {label} | {number(pair['reference'], digits)} | {number(pair['current'], digits)} |"
        )
    lines += [
        "",
        f"Code frequency shift (Jensen-Shannon divergence, 0 = same, 1 = disjoint): "
        f"{drift['code_frequency_jsd']:.4f}",
    ]
    if drift["most_shifted_codes"]:
        lines += ["", "| most shifted codes | share before | share now |", "|---|---|---|"]
        lines += [
            f"| {c['code']} | {c['reference_share']:.4f} | {c['current_share']:.4f} |"
            for c in drift["most_shifted_codes"]
        ]
    return "\n".join(lines) + "\n"
