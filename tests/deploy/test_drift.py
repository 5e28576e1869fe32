"""Drift measures: profiles count what they should, and the comparison against closed forms."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from ehr_ssl.deploy.drift import compare_profiles, data_profile, jensen_shannon
from ehr_ssl.tokens.vocab import CLS_ID, HIST_ID, SPECIAL_TOKENS, UNK_ID, VISIT_ID

VOCAB = [*SPECIAL_TOKENS, "A", "B"]
A, B = len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + 1


def _tokens(rows: list[list[int]], labels: list[bool | None]) -> pl.DataFrame:
    # segment 0 for [CLS], 1 for the rest: only the event tokens may be counted
    return pl.DataFrame(
        {
            "input_ids": rows,
            "segment_ids": [[0] + [1] * (len(r) - 1) for r in rows],
            "labeled": [v is not None for v in labels],
            "label": labels,
        }
    )


def test_a_profile_counts_event_tokens_only():
    tokens = _tokens(
        [[CLS_ID, HIST_ID, A, A, VISIT_ID, B], [CLS_ID, HIST_ID, UNK_ID, VISIT_ID, A]],
        [True, None],
    )
    profile = data_profile(tokens, len(VOCAB))
    assert profile["event_tokens"] == 5 and profile["events_per_visit"] == 2.5
    assert profile["code_counts"][A] == 3 and profile["code_counts"][B] == 1
    assert profile["unknown_code_share"] == 1 / 5
    assert profile["labeled"] == 1 and profile["prevalence"] == 1.0


def test_jensen_shannon_matches_closed_forms():
    assert jensen_shannon(np.array([5.0, 5.0]), np.array([1.0, 1.0])) == 0.0
    assert math.isclose(jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 1.0])), 1.0)
    # p = (1, 0), q = (1/2, 1/2), m = (3/4, 1/4):
    # JS = (log2(4/3) + (1/2) log2(2/3) + (1/2) log2(2)) / 2
    expected = (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5) / 2
    assert math.isclose(jensen_shannon(np.array([2.0, 0.0]), np.array([1.0, 1.0])), expected)


def test_compare_profiles_reports_the_shift():
    before = data_profile(_tokens([[CLS_ID, A, A, B, B]], [False]), len(VOCAB))
    after = data_profile(_tokens([[CLS_ID, A, B, B, B, UNK_ID]], [True]), len(VOCAB))
    drift = compare_profiles(before, after, VOCAB)
    assert drift["unknown_code_share"] == {"reference": 0.0, "current": 0.2}
    assert drift["prevalence"] == {"reference": 0.0, "current": 1.0}
    assert drift["most_shifted_codes"][0]["code"] in ("A", "B")
    assert drift["code_frequency_jsd"] > 0
