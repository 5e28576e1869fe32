"""Event windows: the cutoff. Table-driven cases on hand-made patient timelines.

Timeline of patient 1 (hours relative to the visit's arrival A; prediction time P = A + 1h):

    A-365d-1us   A-365d     A-1us      A      A+1h (=P)   P+1us
       e0          e1         e2       e3        e4         e5
     (too old)  (history)  (history) (current) (current) (future: never read)
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from ehr_ssl.data.windows import build_windows
from tests.conftest import EVENTS_SCHEMA, T0

US = timedelta(microseconds=1)
YEAR = timedelta(days=365)
TIMELINE = {
    "e0": T0 - YEAR - US,
    "e1": T0 - YEAR,
    "e2": T0 - US,
    "e3": T0,
    "e4": T0 + timedelta(hours=1),
    "e5": T0 + timedelta(hours=1) + US,
}


def _frames(extra_visits=(), extra_events=()):
    visits = pl.DataFrame(
        [(1, 1, T0, T0 + timedelta(hours=1)), *extra_visits],
        schema={
            "visit_id": pl.Int64,
            "patient_id": pl.Int64,
            "arrival_time": pl.Datetime("us"),
            "prediction_time": pl.Datetime("us"),
        },
        orient="row",
    )
    events = pl.DataFrame(
        [(1, t, code, None) for code, t in TIMELINE.items()] + list(extra_events),
        schema=EVENTS_SCHEMA,
        orient="row",
    )
    return visits, events


def _read(windows, visit: int) -> tuple[list[str], list[str]]:
    codes = windows.events["code"].to_list()
    s, c, e = windows.start[visit], windows.current[visit], windows.end[visit]
    return codes[s:c], codes[max(s, c) : e]


def test_cutoff_and_lookback_boundaries():
    visits, events = _frames()
    history, current = _read(build_windows(visits, events, lookback_days=365), 0)
    assert history == ["e1", "e2"]  # exactly at arrival - lookback is in, 1us earlier is out
    assert current == ["e3", "e4"]  # exactly at prediction_time is in, 1us later is out


# (case, extra visits, extra events, expected history of visit 0, expected current of visit 0)
CASES = [
    (
        "other patients' events are never read",
        [],
        [(2, T0, "OTHER", None)],
        ["e1", "e2"],
        ["e3", "e4"],
    ),
    (
        "a second visit does not change the first",
        [(2, 1, T0 + timedelta(days=3), T0 + timedelta(days=3, hours=1))],
        [(1, T0 + timedelta(days=3), "LATER", None)],
        ["e1", "e2"],
        ["e3", "e4"],
    ),
    (
        "many future events are ignored",
        [],
        [(1, T0 + timedelta(hours=h), "FUT", None) for h in (1.01, 2, 50, 9000)],
        ["e1", "e2"],
        ["e3", "e4"],
    ),
    (
        "ties at prediction time are all in",
        [],
        [(1, T0 + timedelta(hours=1), "TIE", None)],
        ["e1", "e2"],
        ["e3", "TIE", "e4"],
    ),
]


@pytest.mark.parametrize(
    "extra_visits,extra_events,history,current",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_table_driven_windows(extra_visits, extra_events, history, current):
    visits, events = _frames(extra_visits, extra_events)
    windows = build_windows(visits, events, lookback_days=365)
    assert _read(windows, 0) == (history, current)


def test_later_visit_reads_earlier_visits_future_as_history():
    later = (2, 1, T0 + timedelta(days=2), T0 + timedelta(days=2, hours=1))
    visits, events = _frames([later])
    windows = build_windows(visits, events, lookback_days=365)
    # e1 sits exactly at the first visit's lookback edge, so it is too old for this one.
    assert _read(windows, 1) == (["e2", "e3", "e4", "e5"], [])


def test_patient_without_events_and_event_order_independence():
    visits, events = _frames([(2, 99, T0, T0 + timedelta(hours=1))])
    shuffled = events.sample(fraction=1.0, shuffle=True, seed=3)
    a = build_windows(visits, events, lookback_days=365)
    b = build_windows(visits, shuffled, lookback_days=365)
    assert _read(a, 1) == ([], [])
    assert _read(a, 0) == _read(b, 0)


def test_max_events_drops_oldest_history_first():
    visits, events = _frames()
    assert _read(build_windows(visits, events, lookback_days=365, max_events=3), 0) == (
        ["e2"],
        ["e3", "e4"],
    )
    # The current visit alone overflows: its most recent events are kept, no history.
    assert _read(build_windows(visits, events, lookback_days=365, max_events=1), 0) == (
        [],
        ["e4"],
    )


def test_read_mask_and_gather_index():
    later = (2, 1, T0 + timedelta(days=2), T0 + timedelta(days=2, hours=1))
    visits, events = _frames([later])
    windows = build_windows(visits, events, lookback_days=365)
    codes = np.array(windows.events["code"].to_list())
    assert sorted(codes[windows.read_mask()]) == ["e1", "e2", "e3", "e4", "e5"]
    assert sorted(codes[windows.read_mask(np.array([True, False]))]) == ["e1", "e2", "e3", "e4"]
    visit, k, row = windows.gather_index()
    assert codes[row].tolist() == ["e1", "e2", "e3", "e4", "e2", "e3", "e4", "e5"]
    assert visit.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert k.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
