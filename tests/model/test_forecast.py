"""The forecast view: the prefix is the visit's own tokens before an event, the target is what
follows in that event's encounter and nothing else, the cut is uniform over events, seeded."""

from __future__ import annotations

import math

import pytest
import torch

from ehr_ssl.model.forecast import forecast_view
from ehr_ssl.model.losses import IGNORE_INDEX
from ehr_ssl.tokens.vocab import SEGMENT_CURRENT, SEGMENT_HISTORY, UNK_ID, VISIT_ID
from tests.model.test_masking import events_of, make_batch


def _forecast(batch, seed=0, target="encounter", current_share=0.0, frame="visit", days=365.0):
    generator = torch.Generator().manual_seed(seed)
    return forecast_view(
        batch,
        generator=generator,
        target=target,
        current_share=current_share,
        frame=frame,
        horizon_days=days,
    )


def _groups(batch, row):
    """Each event position's encounter, written out independently: a history event's is the
    (day, run) it belongs to, a current event's the current visit."""
    events = events_of(batch)[row].tolist()
    groups, previous = {}, None
    for t, is_event in enumerate(events):
        if not is_event:
            previous = None if batch["segment_ids"][row, t] != SEGMENT_CURRENT else previous
            continue
        if batch["segment_ids"][row, t] == SEGMENT_CURRENT:
            groups[t] = "current"
            continue
        day = math.floor(float(batch["time_deltas"][row, t]) / 24.0)
        if previous is None or previous[1] != day:
            previous = (t, day)
        groups[t] = previous
    return groups


def test_prefix_is_the_visit_before_an_event_and_targets_the_rest_of_its_encounter():
    batch = make_batch(64, max_history=12)
    for seed in range(5):
        prefix, targets = _forecast(batch, seed)
        for row in range(batch["input_ids"].shape[0]):
            groups = _groups(batch, row)
            kept = int(prefix["attention_mask"][row].sum())
            if not groups:  # no event: the whole visit, no target
                assert kept == int(batch["attention_mask"][row].sum())
                assert (targets[row] == IGNORE_INDEX).all()
                continue
            assert kept in groups, "the cut is at an event"
            for name in ("input_ids", "value_bins", "time_deltas", "segment_ids"):
                assert torch.equal(prefix[name][row, :kept], batch[name][row, :kept])
            assert not prefix["attention_mask"][row, kept:].any()
            expected = {
                t
                for t, group in groups.items()
                if t >= kept and group == groups[kept] and batch["input_ids"][row, t] != UNK_ID
            }
            got = set(torch.nonzero(targets[row] != IGNORE_INDEX).flatten().tolist())
            assert got == expected
            assert all(targets[row, t] == batch["input_ids"][row, t] for t in got)


def test_cut_is_uniform_over_a_visits_events():
    many = make_batch(16, max_history=12, max_current=6)
    row = int(events_of(many).sum(dim=1).argmax())  # the visit with the most events
    batch = {k: v[row : row + 1] for k, v in many.items()}
    events = torch.nonzero(events_of(batch)[0]).flatten().tolist()
    assert len(events) >= 8
    counts = dict.fromkeys(events, 0)
    draws = 2000
    for seed in range(draws):
        prefix, _ = _forecast(batch, seed)
        counts[int(prefix["attention_mask"][0].sum())] += 1
    expected = draws / len(events)
    assert all(abs(n - expected) < 5 * math.sqrt(expected) for n in counts.values())


def test_seeded_and_leaves_the_batch_alone():
    batch = make_batch(16)
    before = {k: v.clone() for k, v in batch.items()}
    a, b = _forecast(batch, 7), _forecast(batch, 7)
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and torch.equal(a[1], b[1])
    assert all(torch.equal(batch[k], before[k]) for k in batch)
    prefix, _ = a
    assert prefix["input_ids"].shape[1] == int(prefix["attention_mask"].sum(dim=1).max())


def test_next_day_targets_every_event_within_a_day_of_the_cut():
    batch = make_batch(64, max_history=12)
    times, ids = batch["time_deltas"], batch["input_ids"]
    for seed in range(3):
        prefix, targets = _forecast(batch, seed, target="next_day")
        encounter_prefix, _ = _forecast(batch, seed)
        assert torch.equal(prefix["attention_mask"], encounter_prefix["attention_mask"])
        for row in range(ids.shape[0]):
            events = torch.nonzero(events_of(batch)[row]).flatten().tolist()
            if not events:
                continue
            cut = int(prefix["attention_mask"][row].sum())
            expected = {
                t
                for t in events
                if t >= cut and times[row, t] - times[row, cut] <= 24.0 and ids[row, t] != UNK_ID
            }
            assert set(torch.nonzero(targets[row] != IGNORE_INDEX).flatten().tolist()) == expected


@pytest.mark.parametrize("days", [1.0, 7.0, 30.0, 365.0])
def test_horizon_targets_each_code_once_within_the_window(days):
    batch = make_batch(64, max_history=12, max_current=6)
    times, ids = batch["time_deltas"], batch["input_ids"]
    repeats = truncated = 0
    for seed in range(3):
        prefix, targets = _forecast(batch, seed, target="horizon", days=days)
        for row in range(ids.shape[0]):
            events = torch.nonzero(events_of(batch)[row]).flatten().tolist()
            if not events:
                assert (targets[row] == IGNORE_INDEX).all()
                continue
            cut = int(prefix["attention_mask"][row].sum())
            window = [
                t
                for t in events
                if t >= cut
                and times[row, t] - times[row, cut] <= 24.0 * days
                and ids[row, t] != UNK_ID
            ]
            truncated += len([t for t in events if t >= cut and ids[row, t] != UNK_ID]) > len(
                window
            )
            first = {}
            for t in window:
                first.setdefault(int(ids[row, t]), t)
            repeats += len(window) - len(first)
            assert set(torch.nonzero(targets[row] != IGNORE_INDEX).flatten().tolist()) == set(
                first.values()
            )
    # a day's window holds no repeat in this batch; the longer ones must, to tell once from each
    assert repeats > 0 or days == 1.0
    assert truncated > 0 or days >= 30.0, "a short window must cut some rows' events off"


def test_an_unknown_target_is_refused():
    with pytest.raises(ValueError, match="next_day"):
        _forecast(make_batch(2), target="tomorrow")


def test_a_current_share_cuts_that_often_within_the_current_visit():
    """With share s a visit with current events is cut within them with probability
    s + (1 - s) * (its share of current events); share 0 is the uniform cut."""
    many = make_batch(16, max_history=12, max_current=6)
    events = events_of(many)
    current = events & (many["segment_ids"] == SEGMENT_CURRENT)
    row = int(((events.sum(dim=1) >= 8) & (current.sum(dim=1) >= 2)).long().argmax())
    assert events[row].sum() >= 8 and current[row].sum() >= 2
    batch = {k: v[row : row + 1] for k, v in many.items()}
    first_current = int(torch.nonzero(current[row]).min())
    uniform_share = float(current[row].sum() / events[row].sum())
    draws = 2000
    for share in (0.0, 0.5, 1.0):
        inside = sum(
            int(_forecast(batch, seed, current_share=share)[0]["attention_mask"].sum())
            >= first_current
            for seed in range(draws)
        )
        expected = share + (1 - share) * uniform_share
        assert (
            abs(inside / draws - expected) < 5 * math.sqrt(expected * (1 - expected) / draws) + 1e-9
        )


def test_cut_frame_reads_the_prefix_as_a_visit_predicted_at_the_cut():
    batch = make_batch(64, max_history=12)
    for seed in range(3):
        framed, targets = _forecast(batch, seed, frame="cut")
        for row in range(batch["input_ids"].shape[0]):
            groups = _groups(batch, row)
            history = [t for t, g in groups.items() if g != "current"]
            kept = int(framed["attention_mask"][row].sum())
            if not history:  # nothing to cut: the whole visit, no target
                for name in ("input_ids", "time_deltas", "segment_ids"):
                    assert torch.equal(framed[name][row, :kept], batch[name][row, :kept])
                assert (targets[row] == IGNORE_INDEX).all()
                continue
            cut = kept - 1  # one [VISIT] more than the positions before the cut
            assert cut in history, "the cut is at a history event"
            start = min(t for t in history if groups[t] == groups[cut])
            expected = [*range(start), None, *range(start, cut)]  # None: the [VISIT]
            cut_time = float(batch["time_deltas"][row, cut])
            for new, old in enumerate(expected):
                got = [framed[n][row, new] for n in ("input_ids", "value_bins", "segment_ids")]
                time = float(framed["time_deltas"][row, new])
                if old is None:  # opened as the tokenizer opens a visit, at its first event
                    assert [int(g) for g in got] == [VISIT_ID, 0, SEGMENT_CURRENT]
                    assert time == pytest.approx(
                        float(batch["time_deltas"][row, start]) - cut_time, abs=1e-3
                    )
                    continue
                assert int(got[0]) == int(batch["input_ids"][row, old])
                assert int(got[1]) == int(batch["value_bins"][row, old])
                if old not in groups:  # [CLS], statics, separators: as they were
                    assert int(got[2]) == int(batch["segment_ids"][row, old])
                    assert time == float(batch["time_deltas"][row, old])
                    continue
                shifted = float(batch["time_deltas"][row, old]) - cut_time
                assert time == pytest.approx(shifted, abs=1e-3)  # float32
                assert time <= 1e-3, "nothing in the prefix is after the cut"
                in_cut_encounter = old >= start
                assert int(got[2]) == (SEGMENT_CURRENT if in_cut_encounter else SEGMENT_HISTORY)
            rest = {t for t in history if t >= cut and groups[t] == groups[cut]
                    and batch["input_ids"][row, t] != UNK_ID}  # fmt: skip
            assert set(torch.nonzero(targets[row] != IGNORE_INDEX).flatten().tolist()) == rest
