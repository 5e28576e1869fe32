"""Event windows: which of its patient's events each visit may read. This is the cutoff.

A visit reads the events with `arrival_time - lookback <= time <= prediction_time`: those before
`arrival_time` are its history, the rest its current visit. Nothing after `prediction_time` is
ever read; every stage that turns events into model input goes through `build_windows`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import polars as pl


@dataclass
class EventWindows:
    """Each visit's slice of its patient's events, sorted by (patient_id, time, code).

    Visit i reads `events[start[i]:end[i]]`; of these, `[start[i], current[i])` is history and
    `[max(start[i], current[i]), end[i])` the current visit. `end` counts events with
    `time <= prediction_time`: it is the cutoff.
    """

    events: pl.DataFrame  # patient_id, time, code, numeric_value; sorted
    start: np.ndarray  # Shape: (V,) int64
    current: np.ndarray  # Shape: (V,) int64
    end: np.ndarray  # Shape: (V,) int64

    @property
    def lengths(self) -> np.ndarray:
        return self.end - self.start

    def read_mask(self, visit_mask: np.ndarray | None = None) -> np.ndarray:
        """Shape (E,) bool: the events read by at least one (selected) visit."""
        start, end = self.start, self.end
        if visit_mask is not None:
            start, end = start[visit_mask], end[visit_mask]
        n = self.events.height
        depth = np.bincount(start, minlength=n + 1) - np.bincount(end, minlength=n + 1)
        return np.cumsum(depth[:n]) > 0

    def gather_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every read event, visit after visit, as three arrays of shape (sum of lengths,):
        the visit (int32), the event's position k within that visit's window, and its row in
        `events` (start[visit] + k)."""
        lengths = self.lengths
        visit = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
        first = np.cumsum(lengths) - lengths  # flat position of each visit's first event
        k = np.arange(visit.size) - first[visit]
        return visit, k, self.start[visit] + k


def build_windows(
    visits: pl.DataFrame,
    events: pl.DataFrame,
    *,
    lookback_days: float,
    max_events: int | None = None,
) -> EventWindows:
    """Locate every visit's events with as-of joins (no per-visit loop).

    `visits` and `events` are normalized frames (see `ehr_ssl.data.readers`). With `max_events`,
    a visit keeps only its most recent `max_events` events (oldest history dropped first).
    """
    # A total order (value too: repeated labs share patient, time and code), so the sequence
    # never depends on the input's row order.
    events = events.sort("patient_id", "time", "code", "numeric_value")
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    indexed = events.select("patient_id", "time", row.alias("row"))
    first_row = indexed.filter(
        pl.col("patient_id").ne_missing(pl.col("patient_id").shift())
    ).select("patient_id", pl.col("row").alias("patient_start"))

    lookback = timedelta(days=lookback_days)
    one_us = timedelta(microseconds=1)
    # Events strictly before t are those at or before t - 1us (times have microsecond precision).
    queries = {
        "start": pl.col("arrival_time") - lookback - one_us,
        "current": pl.col("arrival_time") - one_us,
        "end": pl.col("prediction_time"),
    }
    n = visits.height
    # All queries in one as-of join (the by-patient grouping of the events is built once);
    # query j of visit i is row j * n + i.
    left = pl.concat(
        [
            visits.select("patient_id", query.alias("q"), (row + j * n).alias("query"))
            for j, query in enumerate(queries.values())
        ]
    ).sort("patient_id", "q")
    found = left.join_asof(
        indexed,
        left_on="q",
        right_on="time",
        by="patient_id",
        strategy="backward",
        check_sortedness=False,
    ).sort("query")
    patient_start = visits.select("patient_id").join(
        first_row, on="patient_id", how="left", maintain_order="left"
    )["patient_start"]
    # One past the last event at or before the query (0 = none found: then the patient's first
    # event, or row 0 for a patient without events, so that the window is empty).
    ends = (found["row"].fill_null(-1).to_numpy() + 1).reshape(len(queries), n)  # Shape: (3, V)
    fallback = patient_start.fill_null(0).to_numpy()
    bounds = {name: np.where(ends[j] == 0, fallback, ends[j]) for j, name in enumerate(queries)}
    end = bounds["end"]
    start = bounds["start"] if max_events is None else np.maximum(bounds["start"], end - max_events)
    current = np.clip(bounds["current"], start, end)
    return EventWindows(events, start, current, end)
