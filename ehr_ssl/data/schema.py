"""The input contract in code: the tables of a dataset, their columns, types and rules.

`data_schemas/*.json` is generated from this module (`python -m ehr_ssl.data.schema data_schemas`)
and a test fails when the two drift apart. Column names follow MEDS where MEDS has one.
Conventions: times are naive UTC timestamps (time-zone-aware columns are converted to UTC).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

SCHEMA_VERSION = 1

# The times a dataset may hold, [EARLIEST_TIME, LATEST_TIME). A time outside is an export error
# (a sentinel such as 9999-12-31, a number in the wrong unit); refusing it keeps every window
# (time - a lookback of up to 100 years, time + an offset) far from the limits of int64
# microseconds and of Python's datetime (years 1 to 9999), so no arithmetic overflows.
EARLIEST_TIME = datetime(1800, 1, 1)
LATEST_TIME = datetime(2300, 1, 1)

# "id": string or integer (integers are read as int64); "timestamp": any Parquet timestamp;
# "float": any numeric type, read as float64; "bool": boolean, or integer 0/1; "string": text.
Kind = Literal["id", "timestamp", "float", "bool", "string"]

VISIT_ID_MISNAMED = ("visit", "encounter_id", "visit_occurrence_id", "stay_id", "hadm_id", "csn")
PATIENT_ID_MISNAMED = ("patient", "person_id", "subject", "mrn", "pid")


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool
    nullable: bool
    description: str
    aliases: tuple[str, ...] = ()  # other accepted names (MEDS), renamed to `name` on read
    # Names an export may give this column by mistake (compared case-insensitively): refused,
    # naming the contract's name, when the column itself is absent; a "value" column read as
    # nothing would change every prediction without a word.
    misnamed: tuple[str, ...] = ()
    unique: bool = False
    round_up: bool = False  # nanosecond times: round up to microseconds (event times)


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]
    extra_columns: str  # what happens to columns not listed here
    sharded: bool = False  # may be a directory of Parquet shards instead of one file

    @property
    def filename(self) -> str:
        return f"{self.name}.parquet"

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


VISITS = Table(
    name="visits",
    description="One row per emergency-department visit: the unit of prediction.",
    columns=(
        Column(
            "visit_id",
            "id",
            True,
            False,
            "Visit identifier, unique.",
            unique=True,
            misnamed=VISIT_ID_MISNAMED,
        ),  # fmt: skip
        Column(
            "patient_id",
            "id",
            True,
            False,
            "Patient identifier; joins to events.patient_id.",
            aliases=("subject_id",),
            misnamed=PATIENT_ID_MISNAMED,
        ),
        Column(
            "arrival_time",
            "timestamp",
            True,
            False,
            "ED arrival; the current visit starts.",
            misnamed=(
                "arrival",
                "intime",
                "arrival_datetime",
                "admittime",
                "ed_arrival_time",
                "visit_start_datetime",
            ),
        ),  # fmt: skip
        Column(
            "prediction_time",
            "timestamp",
            False,
            False,
            "When the prediction is made; events up to and including it are read. Must not be "
            "before arrival_time. When the column is absent: arrival_time + a configured offset "
            "(default 1 hour).",
        ),
        Column(
            "split",
            "string",
            False,
            False,
            "The visit's split: train, val or test (MEDS names train, tuning and held_out are "
            "read as these), the same for every visit of a patient. When the column is absent: "
            "a hash of patient_id ([split] fractions and seed).",
        ),
        Column("age", "float", False, True, "Age in years at arrival (a static feature)."),
        Column("sex", "string", False, True, "Sex (a static feature)."),
    ),
    extra_columns=(
        "Ignored unless named as static features (--static-columns / data.static_columns): then "
        "string, categorical and boolean columns become one token per value, numeric columns a "
        "binned token. Only name columns known at arrival, never identifiers or anything known "
        "after the prediction time (disposition, length of stay)."
    ),
)

EVENTS = Table(
    name="events",
    description=(
        "Clinical events in long format, one row per event. Events belong to the patient, not "
        "to a visit: a visit reads its patient's events from arrival_time - lookback (default "
        "365 days) up to and including prediction_time."
    ),
    columns=(
        Column(
            "patient_id",
            "id",
            True,
            False,
            "Patient identifier; same type as visits.patient_id.",
            aliases=("subject_id",),
            misnamed=PATIENT_ID_MISNAMED,
        ),
        Column(
            "time",
            "timestamp",
            True,
            False,
            "When the event was recorded. Nanosecond times are rounded up to whole microseconds "
            "(visit times down), so no event after the prediction time can round into a window.",
            round_up=True,
            misnamed=("timestamp", "datetime", "event_time", "charttime", "date", "start_time"),
        ),
        Column(
            "code",
            "string",
            True,
            False,
            "Event code, e.g. LAB//LACTATE or DX//I50.9.",
            misnamed=("concept_id", "event_code", "itemid", "code_id", "concept"),
        ),  # fmt: skip
        Column(
            "numeric_value",
            "float",
            False,
            True,
            "Numeric result, if any (labs, vitals); binned per code into quantiles. NaN is read "
            "as null; infinite values are rejected.",
            misnamed=(
                "value",
                "numeric",
                "valuenum",
                "value_num",
                "num_value",
                "value_as_number",
                "result",
            ),  # fmt: skip
        ),
        Column(
            "text_value",
            "string",
            False,
            True,
            "Free-text value, if any (not tokenized).",
            misnamed=("text", "value_text", "value_as_string", "valuestr"),
        ),  # fmt: skip
    ),
    extra_columns="Ignored.",
    sharded=True,
)

LABELS = Table(
    name="labels",
    description="The labeled subset of visits.",
    columns=(
        Column(
            "visit_id",
            "id",
            True,
            False,
            "A visit of visits.parquet, at most once.",
            unique=True,
            misnamed=VISIT_ID_MISNAMED,
        ),
        Column(
            "label",
            "bool",
            True,
            False,
            "Admitted to hospital within 7 days of ED arrival.",
            misnamed=("boolean_value", "target", "outcome", "y", "admitted", "admission"),
        ),
    ),
    extra_columns="Ignored.",
)

TABLES: tuple[Table, ...] = (VISITS, EVENTS, LABELS)

# Written by the synthetic generator beside the dataset; the pipeline never reads it except to
# report the oracle (Bayes) AUROC in evaluations. Not part of the contract (not in TABLES).
ORACLE = Table(
    name="oracle",
    description="Synthetic cohorts only: the true admission probability of every visit.",
    columns=(
        Column("visit_id", "id", True, False, "A visit of visits.parquet.", unique=True),
        Column("admission_probability", "float", True, False, "The true risk, in [0, 1]."),
    ),
    extra_columns="Ignored.",
)
ORACLE_FILENAME = ORACLE.filename


def schema_document(table: Table) -> dict:
    """The machine-readable description of one table, as stored in data_schemas/."""
    return {
        "schema_version": SCHEMA_VERSION,
        "table": table.name,
        "file": table.filename + (" (or a directory of *.parquet shards)" if table.sharded else ""),
        "description": table.description,
        "columns": [
            {
                "name": c.name,
                "type": c.kind,
                "required": c.required,
                "nullable": c.nullable,
                "unique": c.unique,
                "aliases": list(c.aliases),
                "description": c.description,
            }
            for c in table.columns
        ],
        "extra_columns": table.extra_columns,
    }


def write_schema_documents(directory: Path) -> None:
    for table in TABLES:
        text = json.dumps(schema_document(table), indent=2) + "\n"
        (directory / f"{table.name}.schema.json").write_text(text)


if __name__ == "__main__":
    write_schema_documents(Path(sys.argv[1]))
