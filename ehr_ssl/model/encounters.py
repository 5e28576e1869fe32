"""History encounters: a visit's history events grouped by day, the unit that encounter
masking hides and disjoint views split, so that neither objective can be solved by copying from
the same encounter's other codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

HOURS_PER_DAY = 24.0


def encounter_starts(history: Tensor, times: Tensor) -> Tensor:
    """Where each history encounter begins. Time deltas are hours before the prediction time
    (<= 0; the tokens carry no clock time), so day = floor(time_delta / 24) counts 24-hour
    windows back from the prediction time; history events run oldest first, so an encounter is
    a run of history events of one day. Shape: history (B, T) bool, times (B, T) -> (B, T) bool.
    """
    day = torch.floor(times.double() / HOURS_PER_DAY)
    # A run starts at a history event whose previous position is not a history event that day.
    previous = F.pad(history[:, :-1], (1, 0)) & (F.pad(day[:, :-1], (1, 0)) == day)
    return history & ~previous


def start_positions(starts: Tensor) -> Tensor:
    """For each position, the position of the latest encounter start at or before it (0 before
    the first): an event's encounter. Meaningful at history events only. Shape: (B, T) long."""
    positions = torch.arange(starts.shape[1], device=starts.device).expand(starts.shape)
    return torch.cummax(torch.where(starts, positions, 0), dim=1).values
