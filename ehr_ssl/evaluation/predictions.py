"""The predictions contract of a run: one row per (test visit, model, label budget, training seed),
its checks, its alignment by visit, and predictions.parquet; and the MEDS prediction schema that
`ehr-ssl predict --format meds` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from ehr_ssl.atomic import atomic_directory, atomic_file, fsync_file
from ehr_ssl.data.parquet import write_parquet
from ehr_ssl.errors import InputError

# The predictions contract: one row per (test visit, model, label budget, training seed).
PREDICTION_COLUMNS = (
    "visit_id",
    "patient_id",
    "split",
    "model",
    "budget",
    "seed",
    "train_labels",
    "score",
    "label",
)
# Column order of predictions.parquet: the identifying and scored columns first.
PARQUET_COLUMN_ORDER = (
    "visit_id",
    "patient_id",
    "split",
    "model",
    "score",
    "label",
    "budget",
    "seed",
    "train_labels",
)
_GROUP = ("model", "budget", "seed")


def check_test_predictions(predictions: pl.DataFrame) -> pl.DataFrame:
    """The test rows, checked: required columns, no nulls, budget as str, and every (model,
    budget, seed) group scoring each test visit exactly once with consistent labels and patients.
    Error messages count visits and never name one (no identifiers in errors)."""
    frame = _required_columns(predictions)
    frame = frame.filter(pl.col("split") == "test")
    if frame.height == 0:
        raise ValueError("predictions have no rows with split == 'test'")
    _check_groups(frame)
    _check_visits(frame)
    return frame


def _required_columns(predictions: pl.DataFrame) -> pl.DataFrame:
    """The contract's columns, in its order, without nulls and with budget as str."""
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(
            f"predictions lack required column(s) {missing}; expected {list(PREDICTION_COLUMNS)}"
        )
    frame = predictions.select(PREDICTION_COLUMNS).with_columns(pl.col("budget").cast(pl.String))
    for column in PREDICTION_COLUMNS:
        nulls = frame[column].null_count()
        if nulls:
            raise ValueError(f"predictions column {column!r} has {nulls} null value(s)")
    return frame


def _check_groups(frame: pl.DataFrame) -> None:
    """Every (model, budget, seed) group scores each test visit once, with one train_labels."""
    n_visits = frame["visit_id"].n_unique()
    counts = frame.group_by(_GROUP, maintain_order=True).agg(
        pl.len().alias("rows"),
        pl.col("visit_id").n_unique().alias("visits"),
        pl.col("train_labels").n_unique().alias("train_label_values"),
    )
    for row in counts.iter_rows(named=True):
        where = f"model {row['model']!r}, budget {row['budget']!r}, seed {row['seed']}"
        if row["rows"] != row["visits"]:
            raise ValueError(
                f"{where} scores {row['rows'] - row['visits']} test visit(s) more than once"
            )
        if row["visits"] != n_visits:
            raise ValueError(
                f"{where} scores {row['visits']} of the {n_visits} test visits: every (model, "
                "budget, seed) must score the same test visits"
            )
        if row["train_label_values"] != 1:
            raise ValueError(f"{where} has {row['train_label_values']} different train_labels")


def _check_visits(frame: pl.DataFrame) -> None:
    """Each test visit has one label and one patient across all groups."""
    per_visit = frame.group_by("visit_id").agg(
        pl.col("label").n_unique().alias("labels"), pl.col("patient_id").n_unique().alias("pids")
    )
    for column, what in (("labels", "label"), ("pids", "patient_id")):
        bad = int((per_visit[column] > 1).sum())
        if bad:
            raise ValueError(f"{bad} test visit(s) have a different {what} in different groups")


def budget_key(budget: str) -> tuple[int, float, str]:
    """Numeric budgets in increasing order, then other names alphabetically, then "all"."""
    if budget == "all":
        return (2, 0.0, budget)
    try:
        return (0, float(budget), budget)
    except ValueError:
        return (1, 0.0, budget)


class AlignedPredictions:
    """The test frame split by (model, budget, seed), every group sorted by visit_id, so that row i
    of every group is the same visit."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.models: list[str] = frame["model"].unique(maintain_order=True).to_list()
        self.budgets: list[str] = sorted(frame["budget"].unique().to_list(), key=budget_key)
        visits = frame.group_by("visit_id").agg(pl.col("patient_id", "label").first())
        visits = visits.sort("visit_id")
        self.visit_id = visits["visit_id"].to_numpy()  # (n,)
        self.y = visits["label"].to_numpy().astype(np.float64)  # (n,) 0/1
        self.groups = visits["patient_id"].to_numpy()  # (n,)
        self._parts = {
            key: part.sort("visit_id")
            for key, part in frame.partition_by(list(_GROUP), as_dict=True).items()
        }

    def seeds(self, model: str, budget: str) -> list[int]:
        return sorted(s for m, b, s in self._parts if m == model and b == budget)

    def scores(self, model: str, budget: str, seed: int) -> np.ndarray:
        """Shape: (n,), aligned with `visit_id`."""
        return self._parts[(model, budget, seed)]["score"].to_numpy().astype(np.float64)

    def train_labels(self, model: str, budget: str, seed: int) -> int:
        return int(self._parts[(model, budget, seed)]["train_labels"][0])


def with_run_visit_ids(frame: pl.DataFrame, visits: pl.DataFrame, *, file: str) -> pl.DataFrame:
    """`frame` with its visit_id cast to the type of `visits`' (the run's), for a join; an
    InputError naming `file` when it cannot be (string ids against integer ones: another
    dataset's)."""
    try:
        return frame.with_columns(pl.col("visit_id").cast(visits["visit_id"].dtype))
    except pl.exceptions.PolarsError:
        raise InputError(
            f"type {frame.schema['visit_id']} cannot be the run's visit_id type "
            f"{visits['visit_id'].dtype}",
            file=file,
            column="visit_id",
        ) from None


def write_predictions(predictions: pl.DataFrame, path: Path) -> None:
    """Write all splits as given to `path` atomically, the `PARQUET_COLUMN_ORDER` columns first,
    then any others."""
    first = [c for c in PARQUET_COLUMN_ORDER if c in predictions.columns]
    ordered = predictions.select(first + [c for c in predictions.columns if c not in first])
    with atomic_file(path) as tmp:
        write_parquet(ordered, tmp)  # with page checksums: damage is found when read
        fsync_file(tmp)


# The MEDS prediction schema (meds-evaluation's PredictionSchema: the MEDS label schema plus the
# predictions). It allows no other column, so a visit is its subject and prediction time, and a
# label may not be null: boolean_value is written only when every visit has one.
MEDS_PREDICTION_SCHEMA = {
    "subject_id": pl.Int64,
    "prediction_time": pl.Datetime("us"),
    "boolean_value": pl.Boolean,
    "predicted_boolean_value": pl.Boolean,
    "predicted_boolean_probability": pl.Float32,
}


def meds_keys(visits: pl.DataFrame, labels: pl.DataFrame | None, source: str) -> pl.DataFrame:
    """visit_id -> subject_id, prediction_time and, when every visit has a label, boolean_value.

    Raises InputError (naming `source`) when patient ids are not integers (MEDS subject ids are).
    """
    if not visits.schema["patient_id"].is_integer():
        raise InputError(
            f"MEDS subject ids are 64-bit integers, got {visits.schema['patient_id']} ids: "
            "use --format ehr-ssl",
            file=source,
            column="patient_id",
        )
    keys = visits.select(
        "visit_id",
        pl.col("patient_id").cast(pl.Int64).alias("subject_id"),
        pl.col("prediction_time").cast(pl.Datetime("us")),
    )
    if labels is None:
        return keys
    known = labels.select("visit_id", pl.col("label").cast(pl.Boolean).alias("boolean_value"))
    keys = keys.join(known, on="visit_id", how="left", maintain_order="left")
    return keys if keys["boolean_value"].null_count() == 0 else keys.drop("boolean_value")


def meds_predictions(
    scored: pl.DataFrame, keys: pl.DataFrame, threshold: float | None
) -> pl.DataFrame:
    """Scored visits (`visit_id`, `score`) in the MEDS prediction schema, in their order:
    predicted_boolean_value is score >= `threshold` (null without one), the probability is the
    score as float32 (the schema's type)."""
    rows = scored.join(keys, on="visit_id", how="left", maintain_order="left")
    predicted = pl.lit(None, pl.Boolean) if threshold is None else pl.col("score") >= threshold
    return rows.select(
        "subject_id",
        "prediction_time",
        *(["boolean_value"] if "boolean_value" in keys.columns else []),
        predicted.alias("predicted_boolean_value"),
        pl.col("score").cast(pl.Float32).alias("predicted_boolean_probability"),
    )


def check_test_visits_in(predictions: pl.DataFrame, visits: pl.DataFrame, source: str) -> None:
    """Every test visit of `predictions` is among `visits` (read from `source`, visit ids of the
    run's type), each of the same patient: otherwise InputError, before anything is written
    (another dataset's visits, or one whose ids moved: a MEDS root's visit ids are row numbers,
    which a point added to its label files shifts)."""
    test = predictions.filter(pl.col("split") == "test").unique("visit_id")
    missing = test.join(visits, on="visit_id", how="anti").height
    if missing:
        raise InputError(
            f"{missing} test visits of the run are not in this visits table (another dataset?)",
            file=source,
            column="visit_id",
        )
    pairs = test.select("visit_id", pl.col("patient_id").cast(pl.String)).join(
        visits.select("visit_id", pl.col("patient_id").cast(pl.String).alias("now")),
        on="visit_id",
    )
    moved = pairs.filter(pl.col("patient_id") != pl.col("now")).height
    if moved:
        raise InputError(
            f"{moved} test visits of the run belong to another patient in this visits table "
            "(the data changed since the run, or another dataset?)",
            file=source,
            column="patient_id",
        )


def write_meds_test_predictions(
    predictions: pl.DataFrame, keys: pl.DataFrame, out_dir: Path
) -> int:
    """Each (model, budget, seed) group of a run's test `predictions` in the MEDS prediction
    schema (`meds_predictions`, boolean_value from the label), as
    `out_dir/<model>/<budget>-seed<seed>.parquet`, replacing `out_dir` atomically. `keys` are
    `meds_keys` of the run's visits (without labels), holding every test visit
    (`check_test_visits_in`). Returns the number of files."""
    test = predictions.filter(pl.col("split") == "test")
    labeled = keys.drop("boolean_value", strict=False)
    groups = test.partition_by(list(_GROUP), as_dict=True)
    with atomic_directory(out_dir, overwrite=True) as tmp:
        for (model, budget, seed), rows in groups.items():
            group_keys = labeled.join(
                rows.select("visit_id", pl.col("label").cast(pl.Boolean).alias("boolean_value")),
                on="visit_id",
            )
            meds = meds_predictions(rows.select("visit_id", "score"), group_keys, threshold=None)
            (tmp / str(model)).mkdir(exist_ok=True)
            write_parquet(meds, tmp / str(model) / f"{budget}-seed{seed}.parquet")
    return len(groups)
