"""Augmented views of visits for the contrastive objective: event dropout, a crop of the oldest
history, time jitter; removed tokens are compacted out and the batch re-padded."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ehr_ssl.tokens.vocab import (
    CLS_ID,
    HIST_ID,
    MASK_ID,
    PAD_ID,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    VISIT_ID,
)

_REQUIRED = ("input_ids", "value_bins", "time_deltas", "segment_ids", "attention_mask")
# Structural tokens are never events; [UNK] is (a rare code) and may be dropped.
_NOT_EVENTS = (PAD_ID, MASK_ID, CLS_ID, HIST_ID, VISIT_ID)


def augment_view(
    batch: dict[str, Tensor],
    *,
    generator: torch.Generator,
    event_dropout: float = 0.1,
    history_crop: float = 0.5,
    time_jitter: float = 0.1,
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
    if event_dropout == 0 and history_crop == 0 and time_jitter == 0:
        return {k: v.clone() if isinstance(v, Tensor) else v for k, v in batch.items()}

    shape, device = ids.shape, ids.device
    real = batch["attention_mask"].bool()
    segments = batch["segment_ids"]
    structural = torch.isin(ids, torch.tensor(_NOT_EVENTS, device=device, dtype=ids.dtype))
    events = real & ~structural & ((segments == SEGMENT_HISTORY) | (segments == SEGMENT_CURRENT))
    history = events & (segments == SEGMENT_HISTORY)
    current = events & (segments == SEGMENT_CURRENT)

    # Fixed-size draws whatever the knobs, so a seed fixes the whole view.
    drop_draw = torch.rand(shape, generator=generator, device=device)
    crop_draw = torch.rand(shape[:1], generator=generator, device=device)
    rescue_draw = torch.rand(shape, generator=generator, device=device)
    times = batch["time_deltas"]
    noise = torch.randn(shape, generator=generator, device=device, dtype=times.dtype)

    removed = events & (drop_draw < event_dropout)
    # History events run oldest first from [HIST]: rank 0 is the oldest.
    n_history = history.sum(dim=1)  # (B,)
    max_crop = torch.floor(history_crop * n_history.double()).long()  # (B,)
    crop = torch.minimum((crop_draw.double() * (max_crop + 1)).long(), max_crop)  # (B,) uniform
    rank = history.cumsum(dim=1) - 1  # (B, T)
    removed |= history & (rank < crop[:, None])
    # A visit with current events keeps at least one: put back a random one if all went.
    lost_all = current.any(dim=1) & ~(current & ~removed).any(dim=1)  # (B,)
    rescue = torch.where(current, rescue_draw, -1.0).argmax(dim=1)  # (B,) a random current event
    put_back = torch.zeros_like(removed).scatter_(1, rescue[:, None], lost_all[:, None])
    removed &= ~put_back

    keep = real & ~removed
    if time_jitter > 0:
        times = torch.where(events, times * torch.exp(time_jitter * noise), times)

    # Compaction: a stable sort puts each row's kept positions first, in their original order.
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices  # (B, T)
    new_length = int(keep.sum(dim=1).max()) if shape[0] else 0
    order = order[:, :new_length]  # (B, T')
    new_mask = torch.gather(keep, 1, order)  # (B, T'); True = real token

    def compact(tensor: Tensor) -> Tensor:
        index = order.reshape(*order.shape, *([1] * (tensor.dim() - 2))).expand(
            -1, -1, *tensor.shape[2:]
        )
        gathered = torch.gather(tensor, 1, index)
        mask = new_mask.reshape(*new_mask.shape, *([1] * (tensor.dim() - 2)))
        return torch.where(mask, gathered, torch.zeros((), dtype=tensor.dtype, device=device))

    out = {}
    for key, value in batch.items():
        if key == "attention_mask":
            out[key] = new_mask.to(value.dtype)
        elif key == "time_deltas":
            out[key] = compact(times)
        elif isinstance(value, Tensor) and value.dim() >= 2 and value.shape[:2] == shape:
            out[key] = compact(value)
        else:
            out[key] = value
    return out
