"""Readers: the contract is checked at the boundary, each bad input gets one clear error naming
file, column and problem (and never an identifier), and MEDS names and type variants are read."""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehr_ssl.cli import main
from ehr_ssl.config import DataConfig
from ehr_ssl.data.parquet import read_parquet, write_parquet
from ehr_ssl.data.readers import read_dataset, read_oracle
from ehr_ssl.data.synthetic import generate_cohort
from ehr_ssl.errors import InputError
from tests.conftest import T0, make_tables, write_tables


def _visits(t):
    return t["visits"]


def _events(t):
    return t["events"]


# (name, table to corrupt, corruption, expected file, expected column, expected problem text)
BAD_INPUTS = [
    (
        "missing column",
        "visits",
        lambda df: df.drop("arrival_time"),
        "visits.parquet",
        "arrival_time",
        "missing",
    ),
    (
        "wrong type",
        "visits",
        lambda df: df.with_columns(pl.col("arrival_time").cast(pl.String)),
        "visits.parquet",
        "arrival_time",
        "expected a timestamp",
    ),
    (
        "date not timestamp",
        "events",
        lambda df: df.with_columns(pl.col("time").dt.date()),
        "events.parquet",
        "time",
        "expected a timestamp",
    ),
    (
        "float ids",
        "visits",
        lambda df: df.with_columns(pl.col("visit_id").cast(pl.Float64)),
        "visits.parquet",
        "visit_id",
        "expected string or integer ids",
    ),
    (
        "null visit_id",
        "visits",
        lambda df: df.with_columns(
            pl.when(pl.int_range(pl.len()) == 3)
            .then(None)
            .otherwise(pl.col("visit_id"))
            .alias("visit_id")
        ),
        "visits.parquet",
        "visit_id",
        "1 null values (first at row index 3)",
    ),
    (
        "duplicate visit_id",
        "visits",
        lambda df: pl.concat([df, df.head(2)]),
        "visits.parquet",
        "visit_id",
        "4 duplicate values",
    ),
    (
        "null patient_id in events",
        "events",
        lambda df: df.with_columns(
            pl.when(pl.int_range(pl.len()) == 5)
            .then(None)
            .otherwise(pl.col("patient_id"))
            .alias("patient_id")
        ),
        "events.parquet",
        "patient_id",
        "null values",
    ),
    (
        "null time",
        "events",
        lambda df: df.with_columns(
            pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("time")).alias("time")
        ),
        "events.parquet",
        "time",
        "null values",
    ),
    (
        "null code",
        "events",
        lambda df: df.with_columns(
            pl.when(pl.int_range(pl.len()) == 7).then(None).otherwise(pl.col("code")).alias("code")
        ),
        "events.parquet",
        "code",
        "1 null values (first at row index 7)",
    ),
    (
        "empty code",
        "events",
        lambda df: df.with_columns(
            pl.when(pl.int_range(pl.len()) == 2)
            .then(pl.lit(""))
            .otherwise(pl.col("code"))
            .alias("code")
        ),
        "events.parquet",
        "code",
        "empty strings",
    ),
    (
        "infinite value",
        "events",
        lambda df: df.with_columns(
            pl.when(pl.int_range(pl.len()) == 1)
            .then(float("inf"))
            .otherwise(pl.col("numeric_value"))
            .alias("numeric_value")
        ),
        "events.parquet",
        "numeric_value",
        "infinite values",
    ),
    (
        "prediction before arrival",
        "visits",
        lambda df: df.with_columns(
            pl.when(pl.int_range(pl.len()) == 4)
            .then(pl.col("arrival_time") - timedelta(minutes=1))
            .otherwise(pl.col("prediction_time"))
            .alias("prediction_time")
        ),
        "visits.parquet",
        "prediction_time",
        "before arrival_time",
    ),
    (
        "label for unknown visit",
        "labels",
        lambda df: pl.concat([df, pl.DataFrame({"visit_id": [10**9], "label": [True]})]),
        "labels.parquet",
        "visit_id",
        "labels for visits not in the visits table",
    ),
    (
        "duplicate label",
        "labels",
        lambda df: pl.concat([df, df.head(1)]),
        "labels.parquet",
        "visit_id",
        "duplicate values",
    ),
    (
        "non-binary label",
        "labels",
        lambda df: df.with_columns(pl.col("label").cast(pl.Int64) * 2),
        "labels.parquet",
        "label",
        "values other than 0 and 1",
    ),
    (
        "string label",
        "labels",
        lambda df: df.with_columns(pl.col("label").cast(pl.String)),
        "labels.parquet",
        "label",
        "expected booleans",
    ),
    (
        "empty string visit id",
        "visits",
        lambda df: df.with_columns(pl.col("visit_id").cast(pl.String)).with_columns(
            pl.when(pl.int_range(pl.len()) == 3)
            .then(pl.lit(""))
            .otherwise("visit_id")
            .alias("visit_id")
        ),
        "visits.parquet",
        "visit_id",
        "1 empty strings (first at row index 3)",
    ),
    (
        "negative age",
        "visits",
        lambda df: df.with_columns(
            pl.when(pl.int_range(pl.len()) == 2).then(-1.0).otherwise("age").alias("age")
        ),
        "visits.parquet",
        "age",
        "1 negative values (first at row index 2)",
    ),
    ("empty visits", "visits", lambda df: df.head(0), "visits.parquet", None, "table is empty"),
    ("empty events", "events", lambda df: df.head(0), "events.parquet", None, "table is empty"),
    (
        "patient id type mismatch",
        "events",
        lambda df: df.with_columns(pl.col("patient_id").cast(pl.String)),
        "events.parquet",
        "patient_id",
        "differs from visits.parquet",
    ),
    (
        "alias and name both present",
        "events",
        lambda df: df.with_columns(subject_id=pl.col("patient_id")),
        "events.parquet",
        None,
        "both patient_id and subject_id present",
    ),
]


@pytest.mark.parametrize(
    "table,corrupt,file,column,problem",
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_names_file_column_and_problem(
    tmp_path, tables, table, corrupt, file, column, problem
):
    tables[table] = corrupt(tables[table])
    root = write_tables(tmp_path / "data", tables)
    with pytest.raises(InputError) as info:
        read_dataset(root, DataConfig())
    error = info.value
    assert error.file.endswith(file)
    assert error.column == column
    assert problem in str(error)


def test_error_messages_never_contain_identifiers(tmp_path, tables):
    tables["visits"] = tables["visits"].with_columns(
        pl.format("SECRET-{}", pl.col("visit_id")).alias("visit_id")
    )
    tables["visits"] = pl.concat([tables["visits"], tables["visits"].head(1)])
    tables["labels"] = tables["labels"].with_columns(pl.format("SECRET-{}", pl.col("visit_id")))
    root = write_tables(tmp_path / "data", tables)
    with pytest.raises(InputError) as info:
        read_dataset(root, DataConfig())
    assert "duplicate" in str(info.value)
    assert "SECRET" not in str(info.value)


def test_not_parquet_and_truncated_files(dataset_dir):
    (dataset_dir / "events.parquet").write_text("patient_id,time,code\n1,2020-01-01,X\n")
    with pytest.raises(InputError, match="not a readable Parquet file") as info:
        read_dataset(dataset_dir, DataConfig())
    assert info.value.file.endswith("events.parquet")

    data = (dataset_dir / "visits.parquet").read_bytes()
    (dataset_dir / "visits.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable Parquet file") as info:
        read_dataset(dataset_dir, DataConfig())
    assert info.value.file.endswith("visits.parquet")


def test_a_column_name_twice_is_refused_naming_it(dataset_dir):
    # Parquet allows two columns of one name; which one a reader would take is arbitrary.
    path = dataset_dir / "visits.parquet"
    table = pq.read_table(path)
    doubled = table.append_column("age", table.column("age"))
    pq.write_table(doubled, path)
    with pytest.raises(InputError, match="appears 2 times") as info:
        read_dataset(dataset_dir, DataConfig())
    assert info.value.file.endswith("visits.parquet")
    assert info.value.column == "age"


def test_missing_files_and_empty_shard_directory(dataset_dir):
    (dataset_dir / "events.parquet").unlink()
    with pytest.raises(InputError, match="file not found"):
        read_dataset(dataset_dir, DataConfig())
    (dataset_dir / "events").mkdir()
    with pytest.raises(InputError, match="no \\*.parquet files"):
        read_dataset(dataset_dir, DataConfig())
    with pytest.raises(InputError, match="dataset directory not found"):
        read_dataset(dataset_dir / "nope", DataConfig())


def test_sharded_events_equal_single_file(tmp_path, tables):
    single = read_dataset(write_tables(tmp_path / "a", tables), DataConfig())
    root = write_tables(tmp_path / "b", {k: v for k, v in tables.items() if k != "events"})
    (root / "events").mkdir()
    events = tables["events"]
    for i in range(3):
        events.filter(pl.col("patient_id") % 3 == i).write_parquet(
            root / "events" / f"part-{i}.parquet"
        )
    sharded = read_dataset(root, DataConfig())
    sort = ["patient_id", "time", "code"]
    assert sharded.events.sort(sort).equals(single.events.sort(sort))
    assert len(sharded.files["events"]) == 3


def test_meds_names_and_type_variants_are_read(tmp_path, tables):
    """subject_id (MEDS), tz-aware times, categorical codes, int32 ids, 0/1 labels, NaN values,
    no numeric_value column, no prediction_time column."""
    tables["events"] = (
        tables["events"]
        .rename({"patient_id": "subject_id"})
        .with_columns(
            pl.col("subject_id").cast(pl.Int32),
            pl.col("time").dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Paris"),
            pl.col("code").cast(pl.Categorical),
            pl.col("numeric_value").fill_null(float("nan")),
        )
    )
    tables["visits"] = (
        tables["visits"]
        .drop("prediction_time")
        .with_columns(pl.col("arrival_time").dt.replace_time_zone("UTC"))
    )
    tables["labels"] = tables["labels"].with_columns(pl.col("label").cast(pl.Int8))
    dataset = read_dataset(write_tables(tmp_path / "data", tables), DataConfig())
    events = dataset.events
    assert events.schema == pl.Schema(
        {
            "patient_id": pl.Int64,
            "time": pl.Datetime("us"),
            "code": pl.String,
            "numeric_value": pl.Float64,
        }
    )
    original = make_reference_events()
    assert events["time"].min() == original["time"].min()  # converted back to naive UTC
    assert events["numeric_value"].null_count() == original["numeric_value"].null_count()
    offset = dataset.visits["prediction_time"] - dataset.visits["arrival_time"]
    assert (offset == timedelta(hours=1)).all()
    assert dataset.labels["label"].dtype == pl.Boolean
    assert dataset.static_columns == {"age": "numeric", "sex": "categorical"}


def make_reference_events():
    from tests.conftest import make_tables

    return make_tables()["events"]


def test_only_age_and_sex_unless_named(tmp_path, tables):
    """Extra visit columns may be identifiers or outcomes: never used unless named."""
    tables["visits"] = tables["visits"].with_columns(
        departure=pl.col("arrival_time") + timedelta(hours=5),
        ambulance=pl.col("patient_id") % 2 == 0,
        mrn=pl.col("patient_id") + 5_550_000,
        score=pl.lit(1.0),
    )
    root = write_tables(tmp_path / "data", tables)
    dataset = read_dataset(root, DataConfig())
    assert dataset.static_columns == {"age": "numeric", "sex": "categorical"}
    assert dataset.unused_columns == ["departure", "ambulance", "mrn", "score"]
    chosen = read_dataset(root, DataConfig(static_columns=["sex", "ambulance"])).static_columns
    assert chosen == {"sex": "categorical", "ambulance": "categorical"}
    with pytest.raises(InputError, match="cannot be a static feature") as info:
        read_dataset(root, DataConfig(static_columns=["departure"]))
    assert info.value.column == "departure"
    with pytest.raises(InputError, match="not in the visits table"):
        read_dataset(root, DataConfig(static_columns=["weight"]))
    tables["visits"] = tables["visits"].with_columns(
        score=pl.when(pl.col("visit_id") == 3).then(float("inf")).otherwise(1.0)
    )
    root = write_tables(tmp_path / "inf", tables)
    with pytest.raises(InputError, match="1 infinite values"):
        read_dataset(root, DataConfig(static_columns=["score"]))


def test_null_time_events_dropped_on_request_and_counted(tmp_path, tables, caplog):
    tables["events"] = pl.concat(
        [
            tables["events"],
            pl.DataFrame(
                {"patient_id": [1], "time": [None], "code": ["DEMO//X"], "numeric_value": [None]},
                schema=tables["events"].schema,
            ),
        ]
    )
    root = write_tables(tmp_path / "data", tables)
    with pytest.raises(InputError, match="null values"):
        read_dataset(root, DataConfig())
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        dataset = read_dataset(root, DataConfig(drop_null_time_events=True))
    assert dataset.events.height == tables["events"].height - 1
    assert "events.parquet: 1 events with a null time left out" in caplog.text


def test_prediction_time_offset_from_config(tmp_path, tables):
    tables["visits"] = tables["visits"].drop("prediction_time")
    root = write_tables(tmp_path / "data", tables)
    visits = read_dataset(root, DataConfig(prediction_offset_minutes=90)).visits
    assert (visits["prediction_time"] - visits["arrival_time"] == timedelta(minutes=90)).all()
    assert visits["arrival_time"].min() == T0


def test_time_zone_aware_and_naive_tables_are_not_mixed(tmp_path, tables):
    tables["visits"] = tables["visits"].with_columns(
        pl.col("arrival_time", "prediction_time").dt.replace_time_zone("America/New_York")
    )
    root = write_tables(tmp_path / "data", tables)
    with pytest.raises(InputError, match="naive timestamps, while visits.parquet") as info:
        read_dataset(root, DataConfig())
    assert info.value.file.endswith("events.parquet") and info.value.column == "time"


def test_nanosecond_times_round_so_no_later_event_enters(tmp_path, tables):
    """An event 500 ns after the prediction time must stay after it (truncation would let it
    in); visit times round down, event times up."""
    visits = tables["visits"].with_columns(
        pl.col("arrival_time", "prediction_time").cast(pl.Datetime("ns"))
    )
    leak = visits.select(
        "patient_id",
        (pl.col("prediction_time") + pl.duration(nanoseconds=500)).alias("time"),
        pl.lit("LEAK//NS").alias("code"),
        pl.lit(None, pl.Float64).alias("numeric_value"),
    )
    events = pl.concat(
        [tables["events"].with_columns(pl.col("time").cast(pl.Datetime("ns"))), leak]
    )
    root = write_tables(tmp_path / "data", {**tables, "visits": visits, "events": events})
    dataset = read_dataset(root, DataConfig())
    leaked = dataset.events.filter(pl.col("code") == "LEAK//NS")["time"]  # one per visit, in order
    assert leaked.len() == dataset.visits.height
    assert (leaked > dataset.visits["prediction_time"]).all()
    assert (leaked - dataset.visits["prediction_time"] == timedelta(microseconds=1)).all()


def test_large_unsigned_ids_and_null_typed_columns(tmp_path, tables):
    tables["events"] = tables["events"].with_columns(pl.lit(None).alias("numeric_value"))
    assert tables["events"].schema["numeric_value"] == pl.Null
    dataset = read_dataset(write_tables(tmp_path / "ok", tables), DataConfig())
    assert dataset.events.schema["numeric_value"] == pl.Float64
    tables["visits"] = tables["visits"].with_columns(
        (pl.col("visit_id").cast(pl.UInt64) + 2**63).alias("visit_id")
    )
    with pytest.raises(InputError, match="ids above 2\\*\\*63 - 1") as info:
        read_dataset(write_tables(tmp_path / "big", tables), DataConfig())
    assert str(2**63) not in str(info.value)


def test_directory_where_a_file_belongs(dataset_dir):
    (dataset_dir / "visits.parquet").unlink()
    (dataset_dir / "visits.parquet").mkdir()
    with pytest.raises(InputError, match="is a directory, expected a Parquet file"):
        read_dataset(dataset_dir, DataConfig())


def test_empty_shards_are_skipped_but_not_all(tmp_path, tables):
    root = write_tables(tmp_path / "data", {k: v for k, v in tables.items() if k != "events"})
    (root / "events").mkdir()
    tables["events"].write_parquet(root / "events" / "part-0.parquet")
    tables["events"].head(0).write_parquet(root / "events" / "part-1.parquet")
    assert read_dataset(root, DataConfig()).events.height == tables["events"].height
    tables["events"].head(0).write_parquet(root / "events" / "part-0.parquet")
    with pytest.raises(InputError, match="every shard is empty"):
        read_dataset(root, DataConfig())


# --- damaged files, unreadable files, extreme times ------------------------------------------


def damage(path: Path, seed: int) -> None:
    """256 random bytes written over the middle of a file, as a bad disk or transfer does."""
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    noise = np.random.default_rng(seed).integers(0, 256, 256, dtype=np.uint8).tobytes()
    raw[middle : middle + 256] = noise
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def checksummed_cohort(tmp_path_factory) -> Path:
    """3,000 synthetic visits written with page checksums (as ehr-ssl writes its files)."""
    cohort = generate_cohort(3000, labeled_frac=0.05, seed=0)
    root = tmp_path_factory.mktemp("checksummed")
    for name in ("visits", "events", "labels"):
        write_parquet(getattr(cohort, name), root / f"{name}.parquet")
    return root


@pytest.mark.parametrize(
    "argv",
    [["validate"], ["tokenize", "--out"], ["tokenize", "--chunk-visits", "500", "--out"]],
    ids=["validate", "tokenize", "tokenize-streamed"],
)
def test_damaged_events_file_exits_2_naming_it(tmp_path, checksummed_cohort, capsys, argv):
    """Seed 1 damages the time column so that it still decodes (polars read it without a word):
    the page checksums find it, in the whole-file and the row-group-by-row-group reads."""
    data = tmp_path / "data"
    shutil.copytree(checksummed_cohort, data)
    damage(data / "events.parquet", seed=1)
    command = [argv[0], str(data), *argv[1:]] + ([str(tmp_path / "out")] if len(argv) > 1 else [])
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    where = f"ehr-ssl: error: {data}/events.parquet: column 'time': damaged Parquet file"
    assert len(err) == 1 and err[0].startswith(where)
    assert not (tmp_path / "out").exists()


def test_damage_outside_the_stored_statistics_is_found_without_checksums(tmp_path):
    """A dataset of a writer without page checksums (polars' default): seed 0 damages the
    visits' times so that they still decode (polars read them without a word), to values
    outside the row group's stored min and max."""
    cohort = generate_cohort(300, seed=0)
    root = write_tables(tmp_path / "data", {"visits": cohort.visits, "events": cohort.events})
    damage(root / "visits.parquet", seed=0)
    with pytest.raises(InputError, match="damaged Parquet file") as info:
        read_dataset(root, DataConfig())
    assert info.value.file == str(root / "visits.parquet")
    assert info.value.column in cohort.visits.columns


def test_statistics_accept_every_healthy_file(tmp_path, tables):
    """Types and writers whose statistics need care: unsigned, nanosecond, time-zone aware,
    categorical, strings, NaN and nulls, several row groups, pyarrow and polars writers."""
    frame = tables["events"].with_columns(
        big=(pl.col("patient_id").cast(pl.UInt64) + 2**63),
        ns=pl.col("time").cast(pl.Datetime("ns", "Europe/Paris")),
        category=pl.col("code").cast(pl.Categorical),
        nan=pl.when(pl.col("patient_id") % 2 == 0)
        .then(float("nan"))
        .otherwise(pl.col("numeric_value")),
        day=pl.col("time").dt.date(),
    )
    frame.write_parquet(tmp_path / "polars.parquet", row_group_size=50)
    write_parquet(frame, tmp_path / "pyarrow.parquet")
    frame.to_pandas().to_parquet(tmp_path / "pandas.parquet")
    for name in ("polars", "pyarrow"):
        assert read_parquet(tmp_path / f"{name}.parquet").equals(frame)
    got = read_parquet(tmp_path / "pandas.parquet", list(frame.columns))  # NaN written as null
    assert got.height == frame.height and got["big"].equals(frame["big"])
    # Stored in another unit than the column's type: seconds as milliseconds, date64 as days.
    seconds = pa.array([1_700_000_000, 1_700_000_100], pa.timestamp("s"))
    days = pa.array([1_577_836_800_000, 1_609_459_200_000], pa.date64())
    pq.write_table(pa.table({"s": seconds, "d": days}), tmp_path / "units.parquet")
    assert read_parquet(tmp_path / "units.parquet").height == 2


@pytest.mark.parametrize(
    "micros",
    [2**63 - 1, 2**62, -(2**62), 253_402_300_800_000_000, -(2**63) + 1],
    ids=["int64-max", "2**62", "-2**62", "year-10000", "int64-min"],
)
def test_times_outside_the_plausible_years_name_column_and_row(tmp_path, tables, capsys, micros):
    times = tables["events"]["time"].dt.epoch("us").scatter(5, micros)
    tables["events"] = tables["events"].with_columns(time=pl.from_epoch(times, time_unit="us"))
    root = write_tables(tmp_path / "data", tables)
    assert main(["validate", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"ehr-ssl: error: {root}/events.parquet: column 'time': 1 times outside the years 1800 "
        "to 2299 (first at row index 5)"
    ]


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
def test_time_range_in_every_unit_and_time_zone(tmp_path, tables, unit):
    """Checked as stored, before any conversion: the last plausible time passes, one beyond
    fails (nanoseconds end in 2262, so there the early bound is tried)."""
    events = tables["events"].with_columns(pl.col("time").dt.replace_time_zone("UTC"))
    last_ok, bad = datetime(2299, 12, 31, 23, 59, 59), datetime(2300, 1, 1)
    if unit == "ns":
        last_ok, bad = datetime(1800, 1, 1), datetime(1799, 12, 31, 23, 59, 59)
    for value, refused in ((last_ok, False), (bad, True)):
        arrival = pl.when(pl.int_range(pl.len()) == 7).then(value).otherwise(pl.col("arrival_time"))
        visits = tables["visits"].drop("prediction_time")
        arrival = arrival.cast(pl.Datetime(unit)).dt.replace_time_zone("UTC")
        visits = visits.with_columns(arrival.alias("arrival_time"))
        root = write_tables(tmp_path / f"{refused}", {**tables, "visits": visits, "events": events})
        if not refused:
            read_dataset(root, DataConfig())
            continue
        with pytest.raises(InputError, match="1 times outside .* row index 7") as info:
            read_dataset(root, DataConfig())
        assert info.value.column == "arrival_time"


def _loop(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to(path.name)  # a link to itself


def _dangling(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to("nowhere.parquet")


@pytest.mark.parametrize("make", [_loop, _dangling], ids=["loop", "dangling"])
@pytest.mark.parametrize("name", ["labels.parquet", "visits.parquet", "events.parquet", "events"])
def test_a_present_file_that_cannot_be_read_is_an_error_never_absent(dataset_dir, make, name):
    if name == "events":
        (dataset_dir / "events.parquet").unlink()
    make(dataset_dir / name)
    with pytest.raises(InputError, match="cannot be read") as info:
        read_dataset(dataset_dir, DataConfig())
    assert info.value.file == str(dataset_dir / name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_labels_are_an_error(dataset_dir):
    (dataset_dir / "labels.parquet").chmod(0)
    with pytest.raises(InputError) as info:
        read_dataset(dataset_dir, DataConfig())
    assert info.value.file == str(dataset_dir / "labels.parquet")


def test_oracle_is_read_checked(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    assert read_oracle(root) is None
    oracle = pl.DataFrame({"visit_id": [1, 2, 3], "admission_probability": [0.1, 0.9, 0.5]})
    oracle.write_parquet(root / "oracle.parquet")
    assert read_oracle(root).equals(oracle)
    raw = (root / "oracle.parquet").read_bytes()
    (root / "oracle.parquet").write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(InputError, match="not a readable Parquet file") as info:
        read_oracle(root)
    assert info.value.file == str(root / "oracle.parquet")
    oracle.with_columns(admission_probability=pl.lit(1.5)).write_parquet(root / "oracle.parquet")
    with pytest.raises(InputError, match="3 values outside \\[0, 1\\]"):
        read_oracle(root)
    _loop(root / "oracle.parquet")
    with pytest.raises(InputError, match="cannot be read"):
        read_oracle(root)


@pytest.mark.parametrize(
    "table,rename,column,expected",
    [
        ("events", {"numeric_value": "value"}, "value", "numeric_value"),
        ("events", {"numeric_value": "VALUENUM"}, "VALUENUM", "numeric_value"),
        ("events", {"time": "charttime"}, "charttime", "time"),
        ("visits", {"arrival_time": "intime"}, "intime", "arrival_time"),
        ("labels", {"label": "boolean_value"}, "boolean_value", "label"),
    ],
)
def test_a_misnamed_contract_column_exits_2_naming_both_names(
    tables, tmp_path, capsys, table, rename, column, expected
):
    """A "value" column was read as nothing and changed predictions without a word: a column
    spelled like an absent contract column stops validate, naming both names."""
    tables[table] = tables[table].rename(rename)
    data = write_tables(tmp_path / "data", tables)
    assert main(["validate", str(data)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{table}.parquet: column '{column}': looks like the contract's '{expected}'" in line


def test_validate_lists_unread_columns_and_warns_of_labs_without_values(tables, tmp_path, capsys):
    tables["events"] = tables["events"].with_columns(
        numeric_value=pl.lit(None, dtype=pl.Float64), unit=pl.lit("mg/dL")
    )
    tables["labels"] = tables["labels"].with_columns(note=pl.lit("x"))
    data = write_tables(tmp_path / "data", tables)
    assert main(["validate", str(data), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unused_event_columns"] == ["unit"]
    assert summary["unused_label_columns"] == ["note"]
    (warning,) = summary["warnings"]
    assert warning.startswith("no event has a numeric_value, yet") and "lab or vital" in warning
    # with values, no warning
    data = write_tables(tmp_path / "data2", make_tables())
    assert main(["validate", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []
