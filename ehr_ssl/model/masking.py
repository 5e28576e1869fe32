"""Masked-event corruption: BERT-style [MASK] / random / keep replacement of event tokens,
with the code and value-bin labels the masked-event objective predicts."""

from __future__ import annotations

import torch
from torch import Tensor

from ehr_ssl.model.losses import IGNORE_INDEX
from ehr_ssl.tokens.vocab import (
    CLS_ID,
    HIST_ID,
    MASK_ID,
    NO_VALUE_BIN,
    PAD_ID,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    SPECIAL_TOKENS,
    VISIT_ID,
)

_REQUIRED = ("input_ids", "value_bins", "segment_ids", "attention_mask")
# Structural tokens are never events; [UNK] is (a rare code) and may be masked.
_NOT_EVENTS = (PAD_ID, MASK_ID, CLS_ID, HIST_ID, VISIT_ID)


def event_tokens(batch: dict[str, Tensor]) -> Tensor:
    """Which positions hold event tokens: real, in the history or current segment, not structural.

    Shape: (B, T) bool, True = event.
    """
    ids, segments = batch["input_ids"], batch["segment_ids"]
    in_events = (segments == SEGMENT_HISTORY) | (segments == SEGMENT_CURRENT)
    structural = torch.isin(ids, torch.tensor(_NOT_EVENTS, device=ids.device, dtype=ids.dtype))
    return batch["attention_mask"].bool() & in_events & ~structural


def mask_events(
    batch: dict[str, Tensor],
    *,
    vocab_size: int,
    generator: torch.Generator,
    rate: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Corrupt a batch for masked-event modeling, BERT-style.

    Each event token is chosen independently with probability `rate` ([PAD], [CLS], static
    tokens and the [HIST]/[VISIT] separators never are). Of the chosen, a `mask_fraction` become
    [MASK], a `random_fraction` become a uniformly drawn non-special id (both with value bin 0,
    so the input does not give the value away) and the rest keep their token and bin.

    Args:
        batch: right-padded tensors `input_ids`, `value_bins`, `segment_ids`, `attention_mask`
            (any other keys, e.g. `time_deltas`, are passed through untouched).
        vocab_size: V, the vocabulary size including the special tokens.
        generator: the only source of randomness; on the batch's device.
        rate: probability that an event token is chosen for prediction.
        mask_fraction: share of the chosen replaced by [MASK].
        random_fraction: share of the chosen replaced by a random non-special id.

    Returns:
        (corrupted, code_labels, bin_labels): `corrupted` is a new dict (the input tensors are
        not modified; unchanged keys are the same tensor objects); `code_labels` holds the
        original id at chosen positions, else -100; `bin_labels` the original value bin at
        chosen positions whose bin is > 0, else -100.

    Shape:
        every batch tensor (B, T); code_labels, bin_labels (B, T) long.
    """
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
    missing = [key for key in _REQUIRED if key not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; has {sorted(batch)}")
    ids, bins = batch["input_ids"], batch["value_bins"]
    if ids.dim() != 2 or any(batch[key].shape != ids.shape for key in _REQUIRED):
        shapes = {key: tuple(batch[key].shape) for key in _REQUIRED}
        raise ValueError(f"batch tensors must share one (B, T) shape, got {shapes}")
    if generator.device.type != ids.device.type:  # a cuda generator may carry no index
        raise ValueError(f"generator is on {generator.device}, batch on {ids.device}")

    # Three draws of fixed size whatever the settings, so a seed fixes the whole corruption.
    choose = torch.rand(ids.shape, generator=generator, device=ids.device)
    action = torch.rand(ids.shape, generator=generator, device=ids.device)
    random_ids = torch.randint(
        n_special, vocab_size, ids.shape, generator=generator, device=ids.device, dtype=ids.dtype
    )
    chosen = event_tokens(batch) & (choose < rate)
    masked = chosen & (action < mask_fraction)
    randomized = chosen & (action >= mask_fraction) & (action < mask_fraction + random_fraction)

    new_ids = torch.where(masked, torch.full_like(ids, MASK_ID), ids)
    new_ids = torch.where(randomized, random_ids, new_ids)
    new_bins = torch.where(masked | randomized, torch.full_like(bins, NO_VALUE_BIN), bins)
    code_labels = torch.where(chosen, ids.long(), IGNORE_INDEX)
    bin_labels = torch.where(chosen & (bins > NO_VALUE_BIN), bins.long(), IGNORE_INDEX)
    corrupted = {**batch, "input_ids": new_ids, "value_bins": new_bins}
    return corrupted, code_labels, bin_labels
