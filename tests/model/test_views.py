"""Augmented views: a view is a subsequence of its visit that keeps the structure and a current
event, crops the oldest history, jitters times within scale; re-padded, seeded, off at zero."""

from __future__ import annotations

import math
import re

import pytest
import torch

from ehr_ssl.model.views import augment_view
from ehr_ssl.tokens.vocab import CLS_ID, HIST_ID, SEGMENT_CURRENT, SEGMENT_HISTORY, VISIT_ID
from tests.model.test_masking import events_of, make_batch

TOKEN_KEYS = ("input_ids", "value_bins", "time_deltas", "segment_ids", "attention_mask")


def _view(batch, seed=0, **kwargs):
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
    first, second = (augment_view(batch, generator=generator) for _ in range(2))
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
