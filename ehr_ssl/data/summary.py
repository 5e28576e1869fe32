"""What `ehr-ssl validate` reports about a checked dataset: sizes, labels, dates, events per visit,
codes, and counts of oddities that are allowed but worth knowing. Counts only, no identifiers."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from ehr_ssl.data.parquet import parquet_columns
from ehr_ssl.data.readers import Dataset
from ehr_ssl.data.schema import EVENTS, LABELS, Table
from ehr_ssl.data.windows import build_windows

log = logging.getLogger("ehr_ssl")
# Code prefixes of measurements that normally carry a number (MEDS, and the synthetic cohort).
MEASURED = ("LAB", "VITAL", "LOINC", "MEASUREMENT")


def summarize_dataset(dataset: Dataset, *, lookback_days: float) -> dict:
    """Summary figures of `dataset`; events per visit use the same window as the tokenizer
    (lookback before arrival up to prediction_time), without the length limit."""
    visits, events, labels = dataset.visits, dataset.events, dataset.labels
    windows = build_windows(visits, events, lookback_days=lookback_days)
    per_visit = windows.lengths
    with_visit = events["patient_id"].is_in(visits["patient_id"].unique().implode())
    n_labeled = 0 if labels is None else labels.height
    positives = 0 if labels is None else int(labels["label"].sum())
    return {
        "visits": visits.height,
        "patients": visits["patient_id"].n_unique(),
        "events": events.height,
        "labeled_visits": n_labeled,
        "positive_labels": positives,
        "prevalence": positives / n_labeled if n_labeled else None,
        "arrival_time_range": _range(visits["arrival_time"]),
        "event_time_range": _range(events["time"]),
        "events_per_visit": {
            "mean": round(float(per_visit.mean()), 2),
            "median": float(np.median(per_visit)),
            "p95": float(np.percentile(per_visit, 95)),
            "max": int(per_visit.max()),
        },
        "distinct_codes": events["code"].n_unique(),
        "events_with_numeric_value": int(events["numeric_value"].is_not_null().sum()),
        "static_columns": dataset.static_columns,
        "unused_visit_columns": dataset.unused_columns,
        "unused_event_columns": _unused(dataset.files["events"], EVENTS),
        "unused_label_columns": _unused(dataset.files.get("labels", []), LABELS),
        "warnings": _warnings(events),
        "oddities": {
            "events_of_patients_without_visits": int((~with_visit).sum()),
            "visits_without_events": int((per_visit == 0).sum()),
            "events_read_by_no_visit": int((~windows.read_mask()).sum()),
            "duplicate_event_rows": events.height - events.n_unique(),
        },
    }


def _unused(files: list, table: Table) -> list[str]:
    """The columns of a table's files that the pipeline does not read (sorted, every shard)."""
    read = {name for c in table.columns for name in (c.name, *c.aliases)}
    return sorted({c for path in files for c in parquet_columns(path)} - read)


def _warnings(events: pl.DataFrame) -> list[str]:
    """What is allowed but probably an export mistake (each also logged)."""
    out = []
    prefix = pl.col("code").str.split("//").list.first().str.to_uppercase()
    measured = events.filter(prefix.is_in(MEASURED)).height
    if measured and events["numeric_value"].is_not_null().sum() == 0:
        out.append(
            f"no event has a numeric_value, yet {measured} events have lab or vital codes "
            f"({'/'.join(MEASURED)}//...): were the values exported under another column name?"
        )
    for warning in out:
        log.warning("validate: %s", warning)
    return out


def format_summary(summary: dict) -> str:
    """The summary as aligned `key: value` lines for a terminal or a log."""
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict) and value and key != "static_columns":
            lines.append(f"{key}:")
            lines += [f"  {k:<36} {v}" for k, v in value.items()]
        elif isinstance(value, list) and value and isinstance(value[0], dict):  # one per line
            lines.append(f"{key}:")
            lines += ["  " + ", ".join(f"{k} {_shown(v)}" for k, v in row.items()) for row in value]
        else:
            lines.append(f"{key:<38} {_shown(value)}")
    return "\n".join(lines)


def _shown(value: object) -> object:
    return f"{value:.4f}" if isinstance(value, float) else value


def _range(times: pl.Series) -> list[str]:
    return [str(times.min()), str(times.max())]
