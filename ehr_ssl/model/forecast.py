"""The forecast view: a prefix of each visit's own timeline and the codes that come next.

CLMBR and MOTOR (EHRSHOT's pretrained models) learn by forecasting a patient's next codes from
the timeline so far; what they learn is close to what the operational tasks ask (what happens
next to this patient). Here the timeline is the visit's own input, so nothing after the visit's
prediction time is read: each visit is cut at one of its history or current-visit events,
drawn uniformly, the encoder reads the prefix before the cut, and the codes from the cut to the
end of that event's encounter (a history day, or the current visit up to the prediction time)
are the target. A cut at an encounter's first event asks for the whole next encounter from the
ones before; a cut inside a past ED visit asks for the rest of it (its disposition, an
admission) from its first events, which is what the visit's own prediction asks of its current
events.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ehr_ssl.config import FORECAST_FRAMES, FORECAST_TARGETS
from ehr_ssl.model.encounters import HOURS_PER_DAY, encounter_starts, start_positions
from ehr_ssl.model.losses import IGNORE_INDEX
from ehr_ssl.model.masking import event_tokens
from ehr_ssl.tokens.vocab import SEGMENT_CURRENT, SEGMENT_HISTORY, UNK_ID, VISIT_ID


def encounter_ids(batch: dict[str, Tensor]) -> Tensor:
    """Each event's encounter as a position: a history event's is its day-run's first position
    (`encounter_starts`), a current-visit event's the first current position; -1 elsewhere.
    Shape: (B, T) long."""
    events = event_tokens(batch)
    history = events & (batch["segment_ids"] == SEGMENT_HISTORY)
    current = events & (batch["segment_ids"] == SEGMENT_CURRENT)
    first_current = current & ~F.pad(current[:, :-1], (1, 0))
    starts = encounter_starts(history, batch["time_deltas"]) | first_current
    ids = start_positions(starts)
    return torch.where(history | current, ids, -1)


def forecast_view(
    batch: dict[str, Tensor],
    *,
    generator: torch.Generator,
    target: str = "encounter",
    current_share: float = 0.0,
    frame: str = "visit",
    horizon_days: float = 365.0,
) -> tuple[dict[str, Tensor], Tensor]:
    """Each visit cut before one of its events, and the codes that follow.

    The cut position is drawn uniformly among a row's history and current-visit events, or,
    with probability `current_share` for a row that has current events, uniformly among those
    (`cut_positions`). The prefix keeps every position before the cut ([CLS], the
    statics, the separators that precede it). The target is, of the events at or after the cut,
    [UNK] left out (a code too rare to name): with `target="encounter"` those of the cut event's
    encounter (`encounter_ids`); with "next_day" those within 24 hours of the cut event's time
    (CLMBR's next day: an encounter's end is not cut off by a day boundary); with "horizon"
    the first event of each distinct code within `horizon_days` of it (whether a code occurs,
    not how often: vital signs recorded at every encounter would otherwise outweigh the rest).
    A row without events keeps its whole input and has no target.

    Args:
        batch: right-padded `input_ids`, `value_bins`, `time_deltas`, `segment_ids`,
            `attention_mask`; other (B, T) tensors are cut the same way, other values pass.
        generator: the only source of randomness; on the batch's device.
        target: "encounter", "next_day" or "horizon" (above).
        current_share: in [0, 1], how often the cut is drawn within the current visit only.
        frame: "visit" (the prefix keeps the visit's times and segments) or "cut": the cut
            is drawn among history events only (the current visit's rest is censored at the
            prediction time) and the prefix is re-framed as a visit predicted at the cut
            (`reframe_at_cut`), its encounter opened by a [VISIT] separator as the tokenizer
            opens a current visit; `current_share` then goes unused.
        horizon_days: the "horizon" target's window, in days.

    Returns:
        (prefix, targets): `prefix` a new dict cut to its longest row (T' <= T), padding zeros;
        `targets` the code ids of the target events at their positions in `batch`, else -100.

    Shape: (B, T) in; prefix (B, T'), targets (B, T) long.
    """
    events = event_tokens(batch)
    candidates = events
    if frame == "cut":  # the current visit's rest is censored at the prediction time
        candidates = events & (batch["segment_ids"] == SEGMENT_HISTORY)
    elif frame != "visit":
        raise ValueError(f"frame must be one of {FORECAST_FRAMES}, got {frame!r}")
    has_events = candidates.any(dim=1)
    cut = cut_positions(batch, candidates, generator, current_share)
    positions = torch.arange(events.shape[1], device=events.device).expand(events.shape)
    at_cut = cut.clamp_max(events.shape[1] - 1)[:, None]  # (B, 1)
    encounter = encounter_ids(batch)
    if target == "encounter":
        same = encounter == encounter.gather(1, at_cut)
    elif target in ("next_day", "horizon"):
        window = HOURS_PER_DAY * (horizon_days if target == "horizon" else 1)
        times = batch["time_deltas"]  # hours, oldest first: later events have larger times
        same = times - times.gather(1, at_cut) <= window
    else:
        raise ValueError(f"target must be one of {FORECAST_TARGETS}, got {target!r}")
    chosen = events & (positions >= cut[:, None]) & same
    chosen &= has_events[:, None] & (batch["input_ids"] != UNK_ID)
    if target == "horizon":
        chosen = first_of_each_code(chosen, batch["input_ids"])
    targets = torch.where(chosen, batch["input_ids"].long(), IGNORE_INDEX)
    if frame == "cut":
        start = encounter.gather(1, at_cut)  # (B, 1): the cut encounter's first position
        batch = reframe_at_cut(batch, at_cut, has_events, encounter)
        batch, cut = _open_visit(batch, cut, start, has_events)
    keep = batch["attention_mask"].bool() & (positions < cut[:, None])
    width = max(int(keep.sum(dim=1).max()), 1) if keep.numel() else 0
    prefix = {  # padding is zeros: [PAD], no bin, time 0, segment 0, False
        name: value.masked_fill(~keep, 0)[:, :width]
        if isinstance(value, Tensor) and value.shape[:2] == events.shape
        else value
        for name, value in batch.items()
    }
    return prefix, targets


def reframe_at_cut(
    batch: dict[str, Tensor], at_cut: Tensor, has_events: Tensor, encounter: Tensor
) -> dict:
    """The visit re-framed as if its prediction time were the cut event's time: every event's
    time delta taken from the cut event's time (a history event 600 hours before the visit's
    prediction time and 2 hours before the cut reads -2), and the events of the cut event's
    encounter in the current-visit segment. A prefix cut inside a past ED visit then looks like
    what the encoder reads at a prediction time (statics, history, a visit's first events), so
    what the forecast learns from past ED visits' endings is learned on the inputs downstream
    models read. Statics and separators keep their values; a row without events is unchanged.
    `encounter` is the batch's `encounter_ids`.
    Shape: batch (B, T), at_cut (B, 1) long, has_events (B,) bool, encounter (B, T) -> the
    batch, changed."""
    events = event_tokens(batch)
    times = batch["time_deltas"]
    shift = torch.where(has_events, times.gather(1, at_cut)[:, 0], 0.0)  # (B,)
    own = events & (encounter == encounter.gather(1, at_cut)) & has_events[:, None]
    return {
        **batch,
        "time_deltas": torch.where(events, times - shift[:, None], times),
        "segment_ids": torch.where(own, SEGMENT_CURRENT, batch["segment_ids"]),
    }


def _open_visit(
    batch: dict[str, Tensor], cut: Tensor, start: Tensor, has_events: Tensor
) -> tuple[dict[str, Tensor], Tensor]:
    """A [VISIT] separator inserted before position `start` (the cut encounter's first event)
    of each row with events, as the tokenizer opens the current visit: current segment, the
    first event's time, no value; the positions after it move one along, and so does the cut.
    A history cut leaves at least the cut event behind, so nothing moves past the width.
    Shape: batch (B, T), cut (B,), start (B, 1), has_events (B,) -> (B, T), (B,)."""
    positions = torch.arange(batch["input_ids"].shape[1], device=cut.device)[None]  # (1, T)
    shift = has_events[:, None] & (positions > start)
    source = (positions - shift.long()).expand_as(batch["input_ids"])
    opened = has_events[:, None] & (positions == start)  # (B, T)
    moved = {
        name: value.gather(1, source) if isinstance(value, Tensor) and value.shape[:2] ==
        source.shape else value
        for name, value in batch.items()
    }  # fmt: skip
    moved["input_ids"] = moved["input_ids"].masked_fill(opened, VISIT_ID)
    moved["value_bins"] = moved["value_bins"].masked_fill(opened, 0)
    moved["segment_ids"] = moved["segment_ids"].masked_fill(opened, SEGMENT_CURRENT)
    return moved, cut + has_events.long()


def cut_positions(
    batch: dict[str, Tensor], events: Tensor, generator: torch.Generator, current_share: float
) -> Tensor:
    """Where each row is cut: before an event drawn uniformly among its events (`events`), or
    among its current-visit events with probability `current_share` when it has any; a row
    without events at its length (nothing cut). Draws: one uniform per row, then (only when
    `current_share` > 0) one more per row. Shape: events (B, T) bool -> (B,) long."""
    draw = torch.rand(events.shape[0], generator=generator, device=events.device)
    candidates = events
    if current_share > 0:
        current = events & (batch["segment_ids"] == SEGMENT_CURRENT)
        pick = torch.rand(events.shape[0], generator=generator, device=events.device)
        use_current = (pick < current_share) & current.any(dim=1)
        candidates = torch.where(use_current[:, None], current, events)
    n_candidates = candidates.sum(dim=1)  # (B,)
    rank = torch.floor(draw * n_candidates).long()  # which candidate, in order, the cut precedes
    order = torch.cumsum(candidates.long(), dim=1) - 1  # (B, T): each candidate's rank
    cut_here = candidates & (order == rank[:, None])
    length = batch["attention_mask"].sum(dim=1)
    return torch.where(n_candidates > 0, cut_here.long().argmax(dim=1), length)


def first_of_each_code(chosen: Tensor, codes: Tensor) -> Tensor:
    """Of each row's chosen positions, the first of each distinct code.
    Shape: chosen (B, T) bool, codes (B, T) int -> (B, T) bool."""
    rows, positions = chosen.nonzero(as_tuple=True)  # row-major: positions ascend within a row
    if rows.numel() == 0:
        return chosen
    keys = rows * (int(codes.max()) + 1) + codes[rows, positions].long()
    _, group = torch.unique(keys, return_inverse=True)
    first = torch.full_like(keys, codes.shape[1]).scatter_reduce(0, group, positions, "amin")
    kept = torch.zeros_like(chosen)
    kept[rows, positions] = positions == first[group]
    return kept
