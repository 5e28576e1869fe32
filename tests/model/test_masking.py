"""Masked-event corruption: only events are chosen, at the asked rate and 80/10/10 split, with
labels exactly at the chosen positions; seeded, and the input batch is left alone."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from ehr_ssl.config import ObjectiveConfig
from ehr_ssl.model.masking import ENCOUNTER_TIMES, event_tokens, mask_events
from ehr_ssl.tokens.vocab import (
    CLS_ID,
    HIST_ID,
    MASK_ID,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    SEGMENT_STATIC,
    SPECIAL_TOKENS,
    UNK_ID,
    VISIT_ID,
)

N_SPECIAL = len(SPECIAL_TOKENS)
VOCAB = 60
N_BINS = 5


def make_batch(
    n_visits: int = 16,
    *,
    seed: int = 0,
    vocab_size: int = VOCAB,
    max_static: int = 3,
    max_history: int = 8,
    max_current: int = 6,
    extra_padding: int = 2,
) -> dict[str, torch.Tensor]:
    """Random right-padded visits `[CLS] static... [HIST] history... [VISIT] current...`.

    Event ids are non-special (one in ten [UNK]), half the events and statics carry a value bin;
    history times run oldest first from the window start, current times from arrival to 0.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_visits):
        n_static, n_history, n_current = (
            int(rng.integers(0, high + 1)) for high in (max_static, max_history, max_current)
        )

        def codes(n: int) -> list[int]:
            ids = rng.integers(N_SPECIAL, vocab_size, n)
            return np.where(rng.random(n) < 0.1, UNK_ID, ids).tolist()

        def bins(n: int) -> list[int]:
            return np.where(rng.random(n) < 0.5, rng.integers(1, N_BINS + 1, n), 0).tolist()

        history_times = np.sort(rng.uniform(-720.0, -2.0, n_history)).tolist()
        current_times = np.sort(rng.uniform(-1.0, 0.0, n_current)).tolist()
        if n_current and rng.random() < 0.3:
            current_times[-1] = 0.0  # an event at the prediction time itself
        ids = [CLS_ID, *codes(n_static), HIST_ID, *codes(n_history), VISIT_ID, *codes(n_current)]
        rows.append(
            (
                ids,
                [0, *bins(n_static), 0, *bins(n_history), 0, *bins(n_current)],
                [0.0] * (1 + n_static) + [-720.0, *history_times, -1.0, *current_times],
                [SEGMENT_STATIC] * (1 + n_static)
                + [SEGMENT_HISTORY] * (1 + n_history)
                + [SEGMENT_CURRENT] * (1 + n_current),
            )
        )
    width = max(len(row[0]) for row in rows) + extra_padding
    batch = {
        name: torch.zeros(n_visits, width, dtype=dtype)
        for name, dtype in (
            ("input_ids", torch.long),
            ("value_bins", torch.long),
            ("time_deltas", torch.float32),
            ("segment_ids", torch.long),
            ("attention_mask", torch.bool),
        )
    }
    for i, (ids, value_bins, times, segments) in enumerate(rows):
        n = len(ids)
        batch["input_ids"][i, :n] = torch.tensor(ids)
        batch["value_bins"][i, :n] = torch.tensor(value_bins)
        batch["time_deltas"][i, :n] = torch.tensor(times)
        batch["segment_ids"][i, :n] = torch.tensor(segments)
        batch["attention_mask"][i, :n] = True
    return batch


def events_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The event positions, written out independently of the library: real tokens after [HIST]
    that are not separators. Shape (B, T) bool."""
    ids = batch["input_ids"]
    after_hist = (ids == HIST_ID).long().cumsum(dim=1) > 0
    return batch["attention_mask"] & after_hist & (ids != HIST_ID) & (ids != VISIT_ID)


def _mask(batch, seed=0, **kwargs):
    """`mask_events` with the objective's default rate and unit unless given."""
    defaults = ObjectiveConfig()
    kwargs = {"vocab_size": VOCAB, "rate": defaults.mask_rate, "unit": defaults.mask_unit} | kwargs
    return mask_events(batch, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_helper_batch_has_what_the_tests_need():
    batch = make_batch(64)
    events = events_of(batch)
    assert torch.equal(event_tokens(batch), events)
    assert (batch["input_ids"][events] == UNK_ID).any()
    assert (batch["value_bins"][events] > 0).any() and (batch["value_bins"][events] == 0).any()
    assert (batch["value_bins"][~events & batch["attention_mask"]] > 0).any()  # valued statics
    assert (~batch["attention_mask"]).any()


@pytest.mark.parametrize(
    "rate,mask_fraction,random_fraction", [(0.15, 0.8, 0.1), (0.5, 0.6, 0.3), (0.3, 0.0, 0.5)]
)
def test_rate_and_split_hold_statistically(rate, mask_fraction, random_fraction):
    # A big vocabulary so that a random replacement almost never equals the original.
    batch = make_batch(400, vocab_size=100_000, max_history=30, max_current=20)
    corrupted, code_labels, _ = _mask(
        batch,
        vocab_size=100_000,
        rate=rate,
        mask_fraction=mask_fraction,
        random_fraction=random_fraction,
    )
    events = events_of(batch)
    chosen = code_labels != -100
    n_events, n_chosen = int(events.sum()), int(chosen.sum())
    assert n_events > 5000

    def close(count: int, total: int, p: float) -> bool:  # within 5 standard deviations
        return abs(count / total - p) <= 5 * math.sqrt(p * (1 - p) / total) + 1e-12

    assert close(n_chosen, n_events, rate)
    new_ids, old_ids = corrupted["input_ids"][chosen], batch["input_ids"][chosen]
    n_masked = int((new_ids == MASK_ID).sum())
    n_kept = int((new_ids == old_ids).sum())
    n_random = n_chosen - n_masked - n_kept
    assert close(n_masked, n_chosen, mask_fraction)
    assert close(n_random, n_chosen, random_fraction)
    assert close(n_kept, n_chosen, 1 - mask_fraction - random_fraction)


def test_only_events_are_chosen_or_changed():
    batch = make_batch(64)
    events = events_of(batch)
    corrupted, code_labels, bin_labels = _mask(batch, rate=1.0)
    # At rate 1 every event is chosen, [UNK] events included, and nothing else.
    assert torch.equal(code_labels != -100, events)
    assert (code_labels[batch["input_ids"] == UNK_ID] == UNK_ID).any()
    for name in ("input_ids", "value_bins"):
        assert torch.equal(corrupted[name][~events], batch[name][~events])
    assert torch.equal(bin_labels[~events], torch.full_like(bin_labels[~events], -100))
    for name in ("time_deltas", "segment_ids", "attention_mask"):
        assert torch.equal(corrupted[name], batch[name])


def test_labels_sit_exactly_at_the_chosen_positions():
    batch = make_batch(64)
    corrupted, code_labels, bin_labels = _mask(batch, rate=0.5)
    chosen = code_labels != -100
    assert code_labels.dtype == bin_labels.dtype == torch.long
    assert code_labels.shape == bin_labels.shape == batch["input_ids"].shape
    assert 0 < int(chosen.sum()) < int(events_of(batch).sum())
    assert torch.equal(code_labels[chosen], batch["input_ids"][chosen])
    valued = chosen & (batch["value_bins"] > 0)
    assert valued.any() and (chosen & ~valued).any()
    assert torch.equal(bin_labels[valued], batch["value_bins"][valued])
    assert (bin_labels[~valued] == -100).all()
    # Positions not chosen keep their input.
    for name in ("input_ids", "value_bins"):
        assert torch.equal(corrupted[name][~chosen], batch[name][~chosen])


def test_masked_positions_lose_their_value_bin():
    batch = make_batch(64)
    corrupted, code_labels, bin_labels = _mask(
        batch, rate=1.0, mask_fraction=1.0, random_fraction=0
    )
    events = events_of(batch)
    assert (corrupted["input_ids"][events] == MASK_ID).all()
    assert (corrupted["value_bins"][events] == 0).all()
    assert (bin_labels[events & (batch["value_bins"] > 0)] > 0).all()


def test_kept_positions_keep_token_and_bin_but_are_labelled():
    batch = make_batch(64)
    corrupted, code_labels, _ = _mask(batch, rate=1.0, mask_fraction=0, random_fraction=0)
    assert torch.equal(corrupted["input_ids"], batch["input_ids"])
    assert torch.equal(corrupted["value_bins"], batch["value_bins"])
    assert torch.equal(code_labels != -100, events_of(batch))


def test_random_replacements_are_uniform_non_special_ids():
    vocab_size = N_SPECIAL + 4
    batch = make_batch(200, vocab_size=vocab_size)
    corrupted, _, _ = _mask(
        batch, vocab_size=vocab_size, rate=1.0, mask_fraction=0, random_fraction=1.0
    )
    events = events_of(batch)
    replaced = corrupted["input_ids"][events]
    assert ((replaced >= N_SPECIAL) & (replaced < vocab_size)).all()
    assert (corrupted["value_bins"][events] == 0).all()
    counts = torch.bincount(replaced - N_SPECIAL, minlength=4).double()
    n = replaced.numel()
    assert (counts / n - 0.25).abs().max() <= 5 * math.sqrt(0.25 * 0.75 / n)


def test_seeded_and_different_across_seeds():
    batch = make_batch(32)
    first, second, other = _mask(batch, seed=7), _mask(batch, seed=7), _mask(batch, seed=8)
    for a, b in zip(first[1:], second[1:], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first[0]["input_ids"], second[0]["input_ids"])
    assert not torch.equal(first[1], other[1])


def test_input_batch_is_not_modified():
    batch = make_batch(32)
    before = {name: tensor.clone() for name, tensor in batch.items()}
    corrupted, _, _ = _mask(batch, rate=1.0)
    assert corrupted is not batch and set(corrupted) == set(batch)
    assert not torch.equal(corrupted["input_ids"], batch["input_ids"])
    for name, tensor in batch.items():
        assert torch.equal(tensor, before[name])


def test_rate_zero_chooses_nothing():
    batch = make_batch(32)
    corrupted, code_labels, bin_labels = _mask(batch, rate=0.0)
    assert (code_labels == -100).all() and (bin_labels == -100).all()
    for name in batch:
        assert torch.equal(corrupted[name], batch[name])


@pytest.mark.parametrize(
    "kwargs,offending",
    [
        ({"rate": 1.5}, "1.5"),
        ({"rate": -0.1}, "-0.1"),
        ({"rate": float("nan")}, "nan"),
        ({"mask_fraction": 2.0}, "2.0"),
        ({"random_fraction": -1.0}, "-1.0"),
        ({"mask_fraction": 0.7, "random_fraction": 0.4}, "0.7 + 0.4"),
        ({"vocab_size": N_SPECIAL}, str(N_SPECIAL)),
        ({"vocab_size": 10.5}, "10.5"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs, offending):
    with pytest.raises(ValueError, match=re.escape(offending)):
        _mask(make_batch(2), **kwargs)


def test_a_batch_without_required_keys_is_rejected():
    batch = make_batch(2)
    del batch["segment_ids"]
    with pytest.raises(ValueError, match="segment_ids"):
        _mask(batch)


# ---- unit="encounter" (issue 19): whole history days are targets, all or none ----


def day_batch(n_visits: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    """`make_batch` visits whose history events fall on at most 4 days (several events a day)."""
    batch = make_batch(n_visits, seed=seed, max_history=30, max_current=20)
    times, history = batch["time_deltas"], history_events(batch)
    days = torch.floor(times / 180.0)  # the 30-day window in 4 blocks: days -4 .. -1
    batch["time_deltas"] = torch.where(history, days * 24.0 + 0.5, times)
    return batch


def history_events(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return events_of(batch) & (batch["segment_ids"] == SEGMENT_HISTORY)


def encounters_of(batch: dict[str, torch.Tensor]) -> list[list[tuple[int, int]]]:
    """Each history encounter's positions, written out independently: (row, day) groups."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for row, col in history_events(batch).nonzero().tolist():
        day = math.floor(float(batch["time_deltas"][row, col]) / 24.0)
        groups.setdefault((row, day), []).append((row, col))
    return list(groups.values())


def test_encounter_unit_chooses_whole_encounters_or_none():
    batch = day_batch(64)
    encounters = encounters_of(batch)
    assert sum(len(e) > 1 for e in encounters) > 50  # the test has multi-event days
    for seed in range(5):
        _, code_labels, _ = _mask(batch, seed=seed, rate=0.3, unit="encounter")
        chosen = (code_labels != -100).tolist()
        whole = [{chosen[r][c] for r, c in encounter} for encounter in encounters]
        assert all(len(states) == 1 for states in whole)
        assert any(states == {True} for states in whole)


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_encounter_unit_keeps_the_rate_for_history_and_current(rate):
    history_chosen = history_total = current_chosen = current_total = 0
    sum_sq = 0  # the chosen-token count's variance is rate (1 - rate) sum(encounter size^2)
    for seed in range(10):
        batch = day_batch(200, seed=seed)
        _, code_labels, _ = _mask(batch, seed=seed, rate=rate, unit="encounter")
        chosen, history = code_labels != -100, history_events(batch)
        current = events_of(batch) & ~history
        history_chosen += int((chosen & history).sum())
        history_total += int(history.sum())
        current_chosen += int((chosen & current).sum())
        current_total += int(current.sum())
        sum_sq += sum(len(e) ** 2 for e in encounters_of(batch))
    sd = math.sqrt(rate * (1 - rate) * sum_sq) / history_total
    assert abs(history_chosen / history_total - rate) <= 5 * sd
    sd_current = math.sqrt(rate * (1 - rate) / current_total)
    assert abs(current_chosen / current_total - rate) <= 5 * sd_current


def test_encounter_unit_never_targets_statics_or_structure_and_keeps_the_split():
    batch = day_batch(400)
    events = events_of(batch)
    corrupted, code_labels, bin_labels = _mask(batch, rate=1.0, unit="encounter")
    assert torch.equal(code_labels != -100, events)  # rate 1: every event, nothing else
    assert (bin_labels[~events] == -100).all()
    for name in ("input_ids", "value_bins"):
        assert torch.equal(corrupted[name][~events], batch[name][~events])
    _, code_labels, _ = _mask(batch, rate=0.5, unit="encounter")
    assert not ((code_labels != -100) & ~events).any()
    new = corrupted["input_ids"][events]
    share = float((new == MASK_ID).double().mean())
    assert abs(share - 0.8) <= 5 * math.sqrt(0.8 * 0.2 / int(events.sum()))


def test_encounter_unit_groups_by_encounter_times_when_given():
    # An augmented view's per-token time jitter would move same-day events to different days.
    batch = day_batch(64)
    encounters = encounters_of(batch)
    noise = torch.exp(0.3 * torch.randn(batch["time_deltas"].shape, generator=torch.Generator()))
    jittered = {**batch, "time_deltas": batch["time_deltas"] * noise}
    jittered[ENCOUNTER_TIMES] = batch["time_deltas"]
    for seed in range(5):
        _, code_labels, _ = _mask(jittered, seed=seed, rate=0.3, unit="encounter")
        chosen = (code_labels != -100).tolist()
        assert all(len({chosen[r][c] for r, c in e}) == 1 for e in encounters)


def test_encounter_unit_is_seeded():
    batch = day_batch(32)
    first, second, other = (_mask(batch, seed=s, unit="encounter") for s in (7, 7, 8))
    for a, b in zip(first[1:], second[1:], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first[0]["input_ids"], second[0]["input_ids"])
    assert not torch.equal(first[1], other[1])


def test_encounter_unit_needs_time_deltas_and_unknown_units_are_rejected():
    batch = make_batch(2)
    with pytest.raises(ValueError, match="'day'"):
        _mask(batch, unit="day")
    del batch["time_deltas"]
    _mask(batch)  # the token unit does not read the times
    with pytest.raises(ValueError, match="time_deltas"):
        _mask(batch, unit="encounter")


def test_pretraining_steps_with_encounter_masking(cohort_tokens, monkeypatch):
    import polars as pl

    import ehr_ssl.model.pretraining as module
    from ehr_ssl.tokens.batching import TokenDataset, collate

    units = []
    original = module.mask_events

    def spy(batch, **kwargs):
        units.append(kwargs.get("unit"))
        out = original(batch, **kwargs)
        # View A is time-jittered; its encounters are still whole, by the un-jittered times.
        groups = {}
        history = event_tokens(batch) & (batch["segment_ids"] == SEGMENT_HISTORY)
        days = torch.floor(batch[ENCOUNTER_TIMES] / 24.0)
        for (row, col), chosen in zip(
            history.nonzero().tolist(), (out[1] != -100)[history].tolist(), strict=True
        ):
            groups.setdefault((row, float(days[row, col])), set()).add(chosen)
        assert groups and all(len(states) == 1 for states in groups.values())
        return out

    monkeypatch.setattr(module, "mask_events", spy)
    from tests.model.test_pretraining import _model

    model = _model(cohort_tokens, mask_unit="encounter")
    dataset = TokenDataset(cohort_tokens, pl.col("split") == "train", splits=["train"])
    batch = collate([dataset[i] for i in range(24)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        losses = model(batch, generator)
        assert all(torch.isfinite(losses[k]) for k in ("loss", "masked_code", "contrastive"))
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    assert units == ["encounter"] * 3
