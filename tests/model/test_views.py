"""Augmented views: a view is a subsequence of its visit that keeps the structure and a current
event, crops the oldest history, jitters times within scale; re-padded, seeded, off at zero."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from ehr_ssl.config import ObjectiveConfig
from ehr_ssl.model.views import augment_view, disjoint_views
from ehr_ssl.tokens.vocab import (
    CLS_ID,
    HIST_ID,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    SEGMENT_STATIC,
    VISIT_ID,
)
from tests.model.test_masking import events_of, make_batch

TOKEN_KEYS = ("input_ids", "value_bins", "time_deltas", "segment_ids", "attention_mask")


# the objective's default augmentation
KNOBS = {k: getattr(ObjectiveConfig(), k) for k in ("event_dropout", "history_crop", "time_jitter")}


def _view(batch, seed=0, **kwargs):
    kwargs = KNOBS | kwargs
    return augment_view(batch, generator=torch.Generator().manual_seed(seed), **kwargs)


def _tracked(batch):
    """The batch plus a `position` key (B, T): each token's original index (+1, so padding's 0
    is told apart), compacted with the rest, so a view says where its tokens came from."""
    n_visits, width = batch["input_ids"].shape
    position = torch.arange(1, width + 1).expand(n_visits, width) * batch["attention_mask"]
    return {**batch, "position": position}


def _origins(view):
    """Per row, the original positions of the view's real tokens."""
    pairs = zip(view["position"], view["attention_mask"], strict=True)
    return [row[mask] - 1 for row, mask in pairs]


def test_views_differ_but_keep_structure_and_a_current_event():
    batch = _tracked(make_batch(64))
    generator = torch.Generator().manual_seed(0)
    first, second = (augment_view(batch, generator=generator, **KNOBS) for _ in range(2))
    assert any(not torch.equal(first[key], second[key]) for key in TOKEN_KEYS)
    events = events_of(batch)
    current = events & (batch["segment_ids"] == SEGMENT_CURRENT)
    for view in (first, second):
        for i, origin in enumerate(_origins(view)):
            kept = torch.zeros_like(events[i]).index_fill_(0, origin, True)
            structure = batch["attention_mask"][i] & ~events[i]
            assert kept[structure].all()  # [CLS], statics, [HIST], [VISIT]
            assert (kept & current[i]).any() == current[i].any()


def test_dropout_of_everything_still_keeps_one_current_event():
    batch = _tracked(make_batch(64))
    view = _view(batch, event_dropout=1.0, history_crop=0.0, time_jitter=0.0)
    events = events_of(batch)
    current = events & (batch["segment_ids"] == SEGMENT_CURRENT)
    assert (current.sum(dim=1) > 1).any()
    for i, origin in enumerate(_origins(view)):
        assert int(events[i, origin].sum()) == int(current[i].any())
        assert int(current[i, origin].sum()) == int(current[i].any())


def test_a_view_is_an_ordered_subsequence_of_its_visit():
    batch = _tracked(make_batch(64))
    view = _view(batch, event_dropout=0.3, history_crop=0.5, time_jitter=0.2)
    events = events_of(batch)
    dropped_some = False
    for i, origin in enumerate(_origins(view)):
        assert (origin[1:] > origin[:-1]).all()  # original order, no repeats
        n = len(origin)
        for key in ("input_ids", "value_bins", "segment_ids"):
            assert torch.equal(view[key][i, :n], batch[key][i, origin])
        old, new = batch["time_deltas"][i, origin], view["time_deltas"][i, :n]
        assert (new <= 0).all() and torch.equal(new == 0, old == 0)
        jittered = events[i, origin] & (old != 0)
        assert torch.equal(new[~events[i, origin]], old[~events[i, origin]])
        log_ratio = torch.log(new[jittered] / old[jittered])
        assert (log_ratio.abs() <= 6 * 0.2).all()  # within six standard deviations
        dropped_some |= n < int(batch["attention_mask"][i].sum())
    assert dropped_some


def test_the_oldest_history_events_are_cropped():
    batch = _tracked(make_batch(300, max_history=6))
    events = events_of(batch)
    history = events & (batch["segment_ids"] == SEGMENT_HISTORY)
    for crop_share in (0.5, 1.0):
        view = _view(batch, event_dropout=0.0, history_crop=crop_share, time_jitter=0.0)
        crops = set()
        for i, origin in enumerate(_origins(view)):
            positions = history[i].nonzero().flatten()
            kept = positions[torch.isin(positions, origin)]
            cropped = len(positions) - len(kept)
            assert torch.equal(kept, positions[cropped:])  # a suffix: the most recent ones
            assert cropped <= math.floor(crop_share * len(positions))
            # Nothing else is removed.
            assert len(origin) + cropped == int(batch["attention_mask"][i].sum())
            if len(positions) == 6:
                crops.add(cropped)
        # k is uniform in [0, floor(share * 6)]: every value turns up across the visits.
        assert crops == set(range(math.floor(crop_share * 6) + 1))


def test_dropout_removes_events_at_the_asked_rate():
    batch = make_batch(400, max_history=30, max_current=20)
    batch["row"] = torch.arange(400)  # a (B,) value: passed through, not compacted
    view = _view(_tracked(batch), event_dropout=0.3, history_crop=0.0, time_jitter=0.0)
    history = events_of(batch) & (batch["segment_ids"] == SEGMENT_HISTORY)
    kept_history = (view["segment_ids"] == SEGMENT_HISTORY) & view["attention_mask"]
    kept_history &= view["input_ids"] != HIST_ID
    n, removed = int(history.sum()), int(history.sum() - kept_history.sum())
    assert n > 5000
    assert abs(removed / n - 0.3) <= 5 * math.sqrt(0.3 * 0.7 / n)
    assert torch.equal(view["row"], batch["row"])


def test_time_jitter_alone_scales_event_times_only():
    batch = make_batch(400, max_history=30, max_current=20, extra_padding=0)
    view = _view(batch, event_dropout=0.0, history_crop=0.0, time_jitter=0.2)
    for key in ("input_ids", "value_bins", "segment_ids", "attention_mask"):
        assert torch.equal(view[key], batch[key])
    events = events_of(batch)
    assert torch.equal(view["time_deltas"][~events], batch["time_deltas"][~events])
    moving = events & (batch["time_deltas"] != 0)
    log_ratio = torch.log(view["time_deltas"][moving] / batch["time_deltas"][moving])
    assert abs(float(log_ratio.mean())) < 0.015
    assert abs(float(log_ratio.std()) - 0.2) < 0.01


def test_all_knobs_zero_is_an_identical_copy():
    batch = make_batch(32, extra_padding=3)
    view = _view(batch, event_dropout=0.0, history_crop=0.0, time_jitter=0.0)
    assert set(view) == set(batch)
    for key, tensor in batch.items():
        assert view[key].dtype == tensor.dtype and view[key].shape == tensor.shape
        assert torch.equal(view[key], tensor)
        assert view[key].data_ptr() != tensor.data_ptr()  # a copy, not the same storage


def test_seeded_and_different_across_seeds():
    batch = make_batch(32)
    first, second, other = _view(batch, seed=3), _view(batch, seed=3), _view(batch, seed=4)
    for key in TOKEN_KEYS:
        assert torch.equal(first[key], second[key])
    assert any(not torch.equal(first[key], other[key]) for key in TOKEN_KEYS if key in other)


def test_repadded_consistently_and_never_longer():
    batch = make_batch(64, extra_padding=3)
    before = {key: tensor.clone() for key, tensor in batch.items()}
    view = _view(batch, event_dropout=0.3, history_crop=0.5, time_jitter=0.1)
    mask = view["attention_mask"]
    width = batch["input_ids"].shape[1]
    assert mask.dtype == torch.bool and mask.shape[1] <= width
    assert mask.shape[1] == int(mask.sum(dim=1).max())  # re-padded to the longest kept row
    lengths = mask.sum(dim=1, keepdim=True)
    assert torch.equal(mask, torch.arange(mask.shape[1]) < lengths)  # right-padded
    for key in TOKEN_KEYS:
        assert view[key].dtype == batch[key].dtype and view[key].shape == mask.shape
        assert (view[key][~mask] == 0).all()
    ids = view["input_ids"]
    assert (ids[:, 0] == CLS_ID).all()
    assert ((ids == HIST_ID).sum(dim=1) == 1).all() and ((ids == VISIT_ID).sum(dim=1) == 1).all()
    for key, tensor in batch.items():  # the input is left alone
        assert torch.equal(tensor, before[key])


@pytest.mark.parametrize(
    "kwargs,offending",
    [
        ({"event_dropout": 1.2}, "1.2"),
        ({"event_dropout": -0.5}, "-0.5"),
        ({"history_crop": float("nan")}, "nan"),
        ({"history_crop": 3.0}, "3.0"),
        ({"time_jitter": -0.1}, "-0.1"),
        ({"time_jitter": float("inf")}, "inf"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs, offending):
    with pytest.raises(ValueError, match=re.escape(offending)):
        _view(make_batch(2), **kwargs)


def test_a_batch_with_mismatched_shapes_is_rejected():
    batch = make_batch(2)
    batch["time_deltas"] = batch["time_deltas"][:, :-1]
    with pytest.raises(ValueError, match="time_deltas"):
        _view(batch)


def _with_encounters(batch, seed=0, max_days=4):
    """`batch` with each visit's history events (oldest first) grouped into random whole days
    before the prediction time; returns it and each event's day (-1 elsewhere), (B, T)."""
    rng = np.random.default_rng(seed)
    history = events_of(batch) & (batch["segment_ids"] == SEGMENT_HISTORY)
    times, days = batch["time_deltas"].clone(), torch.full_like(batch["input_ids"], -1)
    for i in range(history.shape[0]):
        where = history[i].nonzero().flatten()
        ago = np.sort(rng.integers(0, int(rng.integers(1, max_days + 1)), len(where)))[::-1]
        days[i, where] = torch.as_tensor(ago.copy())
        hours = -24.0 * ago - 1.0 - 20.0 * np.sort(rng.random(len(where)))  # in its day
        times[i, where] = torch.as_tensor(hours, dtype=times.dtype)
    return {**batch, "time_deltas": times}, days


def _kept(view, width):
    """(B, T) bool: which original positions a view kept."""
    kept = torch.zeros(len(view["input_ids"]), width, dtype=torch.bool)
    for i, origin in enumerate(_origins(view)):
        kept[i, origin] = True
    return kept


def test_disjoint_views_split_the_history_by_whole_encounters():
    batch, days = _with_encounters(_tracked(make_batch(200, max_history=12)))
    a, b = disjoint_views(batch, generator=torch.Generator().manual_seed(0))
    width = batch["input_ids"].shape[1]
    in_a, in_b = _kept(a, width), _kept(b, width)
    events = events_of(batch)
    history = events & (batch["segment_ids"] == SEGMENT_HISTORY)
    real = batch["attention_mask"]
    assert not (in_a & in_b & events).any()  # no event in both
    assert torch.equal((in_a ^ in_b) & history, history)  # every history event in one view
    assert torch.equal(in_a & ~history, real & ~history)  # A: all statics, structure, current
    statics = real & (batch["segment_ids"] == SEGMENT_STATIC) & (batch["input_ids"] != CLS_ID)
    assert torch.equal(in_b & ~history, real & ~events & ~statics)  # B: no static, no current token
    n_encounters = [len(set(days[i][history[i]].tolist())) for i in range(len(days))]
    for i, n in enumerate(n_encounters):
        for day in set(days[i][history[i]].tolist()):
            assert in_b[i][history[i] & (days[i] == day)].unique().numel() == 1  # whole day
        if n >= 2:
            assert (in_a[i] & history[i]).any() and (in_b[i] & history[i]).any()
        else:
            assert torch.equal(in_b[i] & history[i], history[i])  # B gets the whole history
    assert {0, 1} <= set(n_encounters) and max(n_encounters) >= 3
    shares = [float((in_b[i] & history[i]).sum() / history[i].sum()) for i in range(len(days))]
    assert 0.35 < np.mean([s for s, n in zip(shares, n_encounters, strict=True) if n >= 2]) < 0.65
    for view in (a, b):
        for key in TOKEN_KEYS:  # compacted: values travel with their positions
            origin = view["position"] - 1
            mask = view["attention_mask"]
            taken = torch.gather(batch[key], 1, origin.clamp(min=0))
            assert torch.equal(view[key][mask], taken[mask])
            assert not view[key][~mask].any()


def test_disjoint_views_seeded():
    batch, _ = _with_encounters(make_batch(64, max_history=12))
    first, second, other = (
        disjoint_views(batch, generator=torch.Generator().manual_seed(seed)) for seed in (3, 3, 4)
    )
    assert all(torch.equal(x[k], y[k]) for x, y in zip(first, second, strict=True) for k in x)
    assert any(not torch.equal(x[k], y[k]) for x, y in zip(first, other, strict=True) for k in x)


def test_disjoint_views_of_visits_with_no_one_or_many_encounters():
    hours = {"none": [], "one": [-30.0, -29.0, -27.5], "many": [-200.0, -100.0, -99.0, -5.0]}
    rows = []
    for times in hours.values():
        n = len(times)
        rows.append(
            (
                [CLS_ID, 7, HIST_ID, *range(10, 10 + n), VISIT_ID, 8],
                [SEGMENT_STATIC] * 2 + [SEGMENT_HISTORY] * (n + 1) + [SEGMENT_CURRENT] * 2,
                [0.0, 0.0, -720.0, *times, -1.0, -0.5],
            )
        )
    width = max(len(ids) for ids, _, _ in rows)
    batch = {
        "input_ids": torch.tensor([r[0] + [0] * (width - len(r[0])) for r in rows]),
        "segment_ids": torch.tensor([r[1] + [0] * (width - len(r[1])) for r in rows]),
        "time_deltas": torch.tensor([r[2] + [0.0] * (width - len(r[2])) for r in rows]),
        "attention_mask": torch.tensor(
            [[True] * len(r[0]) + [False] * (width - len(r[0])) for r in rows]
        ),
    }
    batch["value_bins"] = torch.zeros_like(batch["input_ids"])
    for seed in range(20):
        a, b = disjoint_views(batch, generator=torch.Generator().manual_seed(seed))
        real_b = [
            ids[mask].tolist()
            for ids, mask in zip(b["input_ids"], b["attention_mask"], strict=True)
        ]
        real_a = [
            ids[mask].tolist()
            for ids, mask in zip(a["input_ids"], a["attention_mask"], strict=True)
        ]
        assert real_a[0] == [CLS_ID, 7, HIST_ID, VISIT_ID, 8] and real_b[0] == [
            CLS_ID,
            HIST_ID,
            VISIT_ID,
        ]
        assert real_a[1] == [CLS_ID, 7, HIST_ID, VISIT_ID, 8]
        assert real_b[1] == [CLS_ID, HIST_ID, 10, 11, 12, VISIT_ID]
        history_b = real_b[2][2:-1]
        assert history_b and len(history_b) < 4  # both views get an encounter
        assert (11 in history_b) == (12 in history_b)  # -100 h and -99 h: one day
        assert sorted(history_b + real_a[2][3:-2]) == [10, 11, 12, 13]
