"""Views of visits for the contrastive objective. `augment_view`: event dropout, a crop of the
oldest history, time jitter. `disjoint_views`: a pair that shares no event, the history's
encounters split between the two. Removed tokens are compacted out and the batch re-padded."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ehr_ssl.model.encounters import encounter_starts, start_positions
from ehr_ssl.tokens.vocab import (
    CLS_ID,
    NOT_EVENT_IDS,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    SEGMENT_STATIC,
)

_REQUIRED = ("input_ids", "value_bins", "time_deltas", "segment_ids", "attention_mask")


def augment_view(
    batch: dict[str, Tensor],
    *,
    generator: torch.Generator,
    event_dropout: float,
    history_crop: float,
    time_jitter: float,
) -> dict[str, Tensor]:
    """One random augmented view of each visit (call twice for a SimCLR pair).

    - event dropout: each event token is removed with probability `event_dropout`;
    - history crop: the oldest k history events go, k uniform in
      [0, floor(history_crop * n_history_events)] per visit;
    - time jitter: each event's time delta is multiplied by exp(N(0, time_jitter^2)), so its
      sign (times <= 0) and relative scale are kept.

    [CLS], static tokens and both separators are always kept, and so is at least one current
    event of a visit that has any (a random one is put back if dropout took them all). Kept
    tokens keep their order, shifted left over the removed ones; the batch is re-padded to the
    longest kept row (T' <= T) with zeros / False. Every knob at 0 returns an identical copy.

    Args:
        batch: right-padded `input_ids`, `value_bins`, `time_deltas`, `segment_ids`,
            `attention_mask`. Any other tensor whose leading shape is (B, T) is compacted the
            same way (padded with zeros); other values are passed through.
        generator: the only source of randomness; on the batch's device.
        event_dropout: probability that an event token is removed, in [0, 1].
        history_crop: largest share of the history events cropped from the old end, in [0, 1].
        time_jitter: standard deviation of the log-scale time noise, >= 0.

    Returns:
        A new dict; the input tensors are not modified.

    Shape:
        (B, T) in, (B, T') out with T' <= T.
    """
    _check_inputs(batch, generator, event_dropout, history_crop, time_jitter)
    if event_dropout == 0 and history_crop == 0 and time_jitter == 0:
        return {k: v.clone() if isinstance(v, Tensor) else v for k, v in batch.items()}
    tokens = _token_kinds(batch)
    draws = _draw(batch, generator)
    removed = _dropped_or_cropped(tokens, draws, event_dropout, history_crop)
    removed &= ~_put_back(tokens.current, removed, draws.rescue)
    times = batch["time_deltas"]
    if time_jitter > 0:
        times = torch.where(tokens.events, times * torch.exp(time_jitter * draws.noise), times)
    keep = tokens.real & ~removed
    return _compact(batch, keep, times)


def disjoint_views(
    batch: dict[str, Tensor], *, generator: torch.Generator
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Two views of each visit that share no event, only the patient (issue 19).

    A visit's history encounters are its history events grouped by day: time deltas are hours
    before the prediction time (<= 0), so day = floor(time_delta / 24), the 24-hour windows
    counted back from the prediction time (the tokens carry no clock time, so these are not
    wall-calendar days). History events run oldest first, so an encounter is a run of one day.
    Each encounter goes to view A or view B with probability 0.5; where a visit with >= 2
    encounters sent them all to one side, a random one is moved to the other, so both views
    hold some history. View A also keeps the static tokens and the current visit's events;
    view B keeps only its encounters. [CLS], [HIST] and [VISIT] (no information) are in both.

    A visit with fewer than 2 encounters cannot be split: view B gets its whole history (if
    any), view A its statics and current visit. This keeps the pair disjoint without a
    same-day shortcut (a token-by-token split of one encounter would leave near-copies, e.g. a
    lab panel, in both views), and is the same present-vs-history task as the split visits.
    A visit without history has an event-free view B: its pair carries no signal.

    Args:
        batch: as for `augment_view`; other (B, T) tensors are compacted the same way.
        generator: the only source of randomness; on the batch's device.

    Returns:
        (view A, view B): new dicts, each re-padded to its longest row.

    Shape:
        (B, T) in, (B, T_a) and (B, T_b) out, both <= T.
    """
    _check_inputs(batch, generator, 0.0, 0.0, 0.0)
    tokens = _token_kinds(batch)
    to_b = _encounters_to_b(tokens.history, batch["time_deltas"], generator)
    times = batch["time_deltas"]
    only_b = tokens.real & ~(tokens.events & ~to_b) & ~_statics(batch)
    return _compact(batch, tokens.real & ~to_b, times), _compact(batch, only_b, times)


def _statics(batch: dict[str, Tensor]) -> Tensor:
    """The static tokens (segment 0, after [CLS]). Shape: (B, T) bool."""
    static = batch["attention_mask"].bool() & (batch["segment_ids"] == SEGMENT_STATIC)
    return static & (batch["input_ids"] != CLS_ID)


def _encounters_to_b(history: Tensor, times: Tensor, generator: torch.Generator) -> Tensor:
    """The history events that go to view B: whole encounters (day runs) at random, at least
    one per side where a visit has >= 2, the whole history where it has fewer.
    Shape: (B, T) bool."""
    shape, device = history.shape, history.device
    coin = torch.rand(shape, generator=generator, device=device)
    pick = torch.rand(shape, generator=generator, device=device)
    starts = encounter_starts(history, times)
    split = starts.sum(dim=1) >= 2  # (B,)
    to_b = starts & (coin < 0.5)
    one_sided = split & (~to_b.any(dim=1) | ~(starts & ~to_b).any(dim=1))  # (B,)
    moved = torch.where(starts, pick, -1.0).argmax(dim=1)  # (B,) a random encounter
    to_b ^= torch.zeros_like(starts).scatter_(1, moved[:, None], one_sided[:, None])
    # Every event takes its run's side: the side at the latest start at or before it.
    to_b = torch.gather(to_b, 1, start_positions(starts)) & history
    return torch.where(split[:, None], to_b, history)


def _check_inputs(
    batch: dict[str, Tensor],
    generator: torch.Generator,
    event_dropout: float,
    history_crop: float,
    time_jitter: float,
) -> None:
    """ValueError, with the offending value, for a knob out of range or a malformed batch."""
    for name, value in (("event_dropout", event_dropout), ("history_crop", history_crop)):
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if not (time_jitter >= 0.0 and math.isfinite(time_jitter)):
        raise ValueError(f"time_jitter must be finite and >= 0, got {time_jitter!r}")
    missing = [key for key in _REQUIRED if key not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; has {sorted(batch)}")
    ids = batch["input_ids"]
    if ids.dim() != 2 or any(batch[key].shape != ids.shape for key in _REQUIRED):
        shapes = {key: tuple(batch[key].shape) for key in _REQUIRED}
        raise ValueError(f"batch tensors must share one (B, T) shape, got {shapes}")
    if generator.device.type != ids.device.type:  # a cuda generator may carry no index
        raise ValueError(f"generator is on {generator.device}, batch on {ids.device}")


class _TokenKinds(NamedTuple):
    """Which positions hold what; each (B, T) bool."""

    real: Tensor  # not padding
    events: Tensor  # history or current events, the only tokens a view may remove
    history: Tensor  # history events, oldest first from [HIST]
    current: Tensor  # the current visit's events


def _token_kinds(batch: dict[str, Tensor]) -> _TokenKinds:
    ids, segments = batch["input_ids"], batch["segment_ids"]
    real = batch["attention_mask"].bool()
    # Structural tokens are never events; [UNK] is (a rare code) and may be dropped.
    structural = torch.isin(ids, torch.tensor(NOT_EVENT_IDS, device=ids.device, dtype=ids.dtype))
    events = real & ~structural & ((segments == SEGMENT_HISTORY) | (segments == SEGMENT_CURRENT))
    history = events & (segments == SEGMENT_HISTORY)
    current = events & (segments == SEGMENT_CURRENT)
    return _TokenKinds(real, events, history, current)


class _Draws(NamedTuple):
    """A view's random numbers."""

    drop: Tensor  # (B, T) uniform: event dropout
    crop: Tensor  # (B,) uniform: the history crop's length
    rescue: Tensor  # (B, T) uniform: which current event is put back
    noise: Tensor  # (B, T) standard normal, in the times' dtype: time jitter


def _draw(batch: dict[str, Tensor], generator: torch.Generator) -> _Draws:
    """Fixed-size draws whatever the knobs, so a seed fixes the whole view."""
    ids = batch["input_ids"]
    shape, device = ids.shape, ids.device
    drop = torch.rand(shape, generator=generator, device=device)
    crop = torch.rand(shape[:1], generator=generator, device=device)
    rescue = torch.rand(shape, generator=generator, device=device)
    dtype = batch["time_deltas"].dtype
    noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return _Draws(drop, crop, rescue, noise)


def _dropped_or_cropped(
    tokens: _TokenKinds, draws: _Draws, event_dropout: float, history_crop: float
) -> Tensor:
    """Events dropped at random, and each visit's oldest k history events, k uniform in
    [0, floor(history_crop * n_history_events)]. Shape: (B, T) bool, True = removed."""
    removed = tokens.events & (draws.drop < event_dropout)
    history = tokens.history
    # History events run oldest first from [HIST]: rank 0 is the oldest.
    n_history = history.sum(dim=1)  # (B,)
    max_crop = torch.floor(history_crop * n_history.double()).long()  # (B,)
    crop = torch.minimum((draws.crop.double() * (max_crop + 1)).long(), max_crop)  # (B,) uniform
    rank = history.cumsum(dim=1) - 1  # (B, T)
    removed |= history & (rank < crop[:, None])
    return removed


def _put_back(current: Tensor, removed: Tensor, rescue_draw: Tensor) -> Tensor:
    """A visit with current events keeps at least one: a random one of them where all went.
    Shape: (B, T) bool, True = put back."""
    lost_all = current.any(dim=1) & ~(current & ~removed).any(dim=1)  # (B,)
    rescue = torch.where(current, rescue_draw, -1.0).argmax(dim=1)  # (B,) a random current event
    return torch.zeros_like(removed).scatter_(1, rescue[:, None], lost_all[:, None])


def _compact(batch: dict[str, Tensor], keep: Tensor, times: Tensor) -> dict[str, Tensor]:
    """The kept tokens of every (B, T) tensor shifted left over the removed ones, re-padded with
    zeros to the longest kept row; `times` stands in for the time deltas. Shape: (B, T) ->
    (B, T')."""
    shape = batch["input_ids"].shape
    # A stable sort puts each row's kept positions first, in their original order.
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices  # (B, T)
    new_length = int(keep.sum(dim=1).max()) if shape[0] else 0
    order = order[:, :new_length]  # (B, T')
    new_mask = torch.gather(keep, 1, order)  # (B, T'); True = real token
    out = {}
    for key, value in batch.items():
        if key == "attention_mask":
            out[key] = new_mask.to(value.dtype)
        elif key == "time_deltas":
            out[key] = _gather_kept(times, order, new_mask)
        elif isinstance(value, Tensor) and value.dim() >= 2 and value.shape[:2] == shape:
            out[key] = _gather_kept(value, order, new_mask)
        else:
            out[key] = value
    return out


def _gather_kept(tensor: Tensor, order: Tensor, new_mask: Tensor) -> Tensor:
    """`tensor`'s positions in `order`, zero where `new_mask` is False. Shape: (B, T, ...) ->
    (B, T', ...)."""
    trailing = [1] * (tensor.dim() - 2)
    index = order.reshape(*order.shape, *trailing).expand(-1, -1, *tensor.shape[2:])
    gathered = torch.gather(tensor, 1, index)
    mask = new_mask.reshape(*new_mask.shape, *trailing)
    return torch.where(mask, gathered, torch.zeros((), dtype=tensor.dtype, device=order.device))
