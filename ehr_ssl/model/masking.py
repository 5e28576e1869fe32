"""Masked-event corruption: BERT-style [MASK] / random / keep replacement of event tokens,
with the code and value-bin labels the masked-event objective predicts. Targets are chosen
token by token, or (issue 19) whole history encounters at a time."""

from __future__ import annotations

import torch
from torch import Tensor

from ehr_ssl.model.encounters import encounter_starts, start_positions
from ehr_ssl.model.losses import IGNORE_INDEX
from ehr_ssl.tokens.vocab import (
    MASK_ID,
    NO_VALUE_BIN,
    NOT_EVENT_IDS,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    SPECIAL_TOKENS,
)

_REQUIRED = ("input_ids", "value_bins", "segment_ids", "attention_mask")
MASK_UNITS = ("token", "encounter")
# Optional (B, T) key: the times encounters are grouped by (an augmented view's un-jittered
# times, as the time jitter would move same-time events to different days); else time_deltas.
ENCOUNTER_TIMES = "encounter_times"


def event_tokens(batch: dict[str, Tensor]) -> Tensor:
    """Which positions hold event tokens: real, in the history or current segment, not structural.

    Shape: (B, T) bool, True = event.
    """
    ids, segments = batch["input_ids"], batch["segment_ids"]
    in_events = (segments == SEGMENT_HISTORY) | (segments == SEGMENT_CURRENT)
    # Structural tokens are never events; [UNK] is (a rare code) and may be masked.
    structural = torch.isin(ids, torch.tensor(NOT_EVENT_IDS, device=ids.device, dtype=ids.dtype))
    return batch["attention_mask"].bool() & in_events & ~structural


def mask_events(
    batch: dict[str, Tensor],
    *,
    vocab_size: int,
    generator: torch.Generator,
    rate: float,
    unit: str,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Corrupt a batch for masked-event modeling, BERT-style.

    `unit="token"`: each event token is chosen with probability `rate` ([PAD], [CLS], statics
    and the [HIST]/[VISIT] separators never are). `unit="encounter"` (issue 19): each history
    encounter (a visit's history events of one day, see `_encounter_start`) is chosen with
    probability `rate`, all its events then targets, so the expected share of chosen history
    events is `rate` and no code can be copied from its own encounter; current-visit events are
    still chosen token by token at `rate`. Of the chosen, per token, a `mask_fraction` become
    [MASK], a `random_fraction` a random non-special id (both with value bin 0, hiding the value)
    and the rest keep their token and bin.

    Args:
        batch: right-padded tensors `input_ids`, `value_bins`, `segment_ids`, `attention_mask`
            (+ `time_deltas` or `ENCOUNTER_TIMES` for "encounter"); other keys pass through.
        vocab_size: V, the vocabulary size including the special tokens.
        generator: the only source of randomness; on the batch's device.
        rate: probability that an event token (or history encounter) is chosen
            (`ObjectiveConfig.mask_rate`).
        unit: "token" or "encounter" (above; `ObjectiveConfig.mask_unit`).
        mask_fraction: share of the chosen replaced by [MASK].
        random_fraction: share of the chosen replaced by a random non-special id (BERT's 80%
            and 10%, constants of the method rather than settings).

    Returns:
        (corrupted, code_labels, bin_labels): `corrupted` is a new dict (the input tensors are
        not modified; unchanged keys are the same tensor objects); `code_labels` holds the
        original id at chosen positions, else -100; `bin_labels` the original value bin at
        chosen positions whose bin is > 0, else -100.

    Shape: every batch tensor (B, T); code_labels, bin_labels (B, T) long.
    """
    _check_arguments(batch, vocab_size, generator, rate, mask_fraction, random_fraction, unit)
    ids, bins = batch["input_ids"], batch["value_bins"]
    # Three draws of fixed size whatever the settings, so a seed fixes the whole corruption.
    draw = {"size": ids.shape, "generator": generator, "device": ids.device}
    choose, action = torch.rand(**draw), torch.rand(**draw)
    random_ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, dtype=ids.dtype, **draw)
    events = event_tokens(batch)
    if unit == "encounter":  # a history event takes the draw at its encounter's first event
        history = events & (batch["segment_ids"] == SEGMENT_HISTORY)
        choose = torch.where(history, choose.gather(1, _encounter_start(history, batch)), choose)
    chosen = events & (choose < rate)
    masked = chosen & (action < mask_fraction)
    randomized = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
    new_ids = torch.where(masked, torch.full_like(ids, MASK_ID), ids)
    new_ids = torch.where(randomized, random_ids, new_ids)
    new_bins = torch.where(masked | randomized, torch.full_like(bins, NO_VALUE_BIN), bins)
    code_labels = torch.where(chosen, ids.long(), IGNORE_INDEX)
    bin_labels = torch.where(chosen & (bins > NO_VALUE_BIN), bins.long(), IGNORE_INDEX)
    corrupted = {**batch, "input_ids": new_ids, "value_bins": new_bins}
    return corrupted, code_labels, bin_labels


def _encounter_start(history: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """For each position, the position of the first event of its history encounter: the latest
    run start at or before it. Encounters are grouped as in `views.disjoint_views`: time deltas
    are hours before the prediction time (<= 0), so day = floor(time_delta / 24), the 24-hour
    windows counted back from the prediction time; history events run oldest first, so an
    encounter is a run of history events of one day. Meaningful at history events only.
    Shape: (B, T) long."""
    times = batch.get(ENCOUNTER_TIMES, batch["time_deltas"])
    return start_positions(encounter_starts(history, times))


def _check_arguments(
    batch: dict[str, Tensor],
    vocab_size: int,
    generator: torch.Generator,
    rate: float,
    mask_fraction: float,
    random_fraction: float,
    unit: str,
) -> None:
    """Raise ValueError naming the offending value of `mask_events`' arguments."""
    n_special = len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= n_special:
        raise ValueError(
            f"vocab_size must be an int > {n_special} (the special tokens), got {vocab_size!r}"
        )
    for name, value in (
        ("rate", rate),
        ("mask_fraction", mask_fraction),
        ("random_fraction", random_fraction),
    ):
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if mask_fraction + random_fraction > 1.0:
        raise ValueError(
            f"mask_fraction + random_fraction must be <= 1, got {mask_fraction} + {random_fraction}"
        )
    if unit not in MASK_UNITS:
        raise ValueError(f"unit must be one of {', '.join(MASK_UNITS)}, got {unit!r}")
    required = (*_REQUIRED, "time_deltas") if unit == "encounter" else _REQUIRED
    if unit == "encounter" and ENCOUNTER_TIMES in batch:
        required = (*_REQUIRED, ENCOUNTER_TIMES)
    missing = [key for key in required if key not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; has {sorted(batch)}")
    ids = batch["input_ids"]
    if ids.dim() != 2 or any(batch[key].shape != ids.shape for key in required):
        shapes = {key: tuple(batch[key].shape) for key in required}
        raise ValueError(f"batch tensors must share one (B, T) shape, got {shapes}")
    if generator.device.type != ids.device.type:  # a cuda generator may carry no index
        raise ValueError(f"generator is on {generator.device}, batch on {ids.device}")
