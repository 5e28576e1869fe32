"""Tests of the synthetic ED cohort: contract, timeline, outcome model and writer."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sklearn.metrics import roc_auc_score

from ehr_ssl.data import schema, synthetic
from ehr_ssl.data.synthetic import (
    COHORT_VERSIONS,
    CONDITIONS,
    Cohort,
    generate_cohort,
    write_cohort,
)
from ehr_ssl.data.synthetic import writer as synthetic_writer
from ehr_ssl.errors import InputError
from ehr_ssl.layout import OUTPUT_MARKER_FILE
from ehr_ssl.outputs import output_kind

N_VISITS = 4000


@pytest.fixture(scope="module", params=COHORT_VERSIONS)
def version(request) -> int:
    """Each cohort version: the tests that take `cohort` run on both."""
    return request.param


@pytest.fixture(scope="module")
def cohort(version: int) -> Cohort:
    """A cohort with every visit labeled, so the labels are the recorded outcome of all visits."""
    return generate_cohort(N_VISITS, labeled_frac=1.0, seed=7, version=version)


def visit_events(cohort: Cohort, prefix: str, window: timedelta) -> pl.DataFrame:
    """Events whose code starts with `prefix` in [arrival, arrival + window] of each visit."""
    return (
        cohort.events.filter(pl.col("code").str.starts_with(prefix))
        .join(cohort.visits, on="patient_id")
        .filter(pl.col("time").is_between(pl.col("arrival_time"), pl.col("arrival_time") + window))
        .join(cohort.labels, on="visit_id")
    )


def test_same_seed_same_cohort_other_seed_other_cohort() -> None:
    a = generate_cohort(2000, labeled_frac=0.1, seed=3)
    b = generate_cohort(2000, labeled_frac=0.1, seed=3)
    for name in ("visits", "events", "labels", "oracle"):
        assert_frame_equal(getattr(a, name), getattr(b, name))
    c = generate_cohort(2000, labeled_frac=0.1, seed=4)
    assert not a.events.equals(c.events)
    assert not a.visits.equals(c.visits)
    assert not a.labels.equals(c.labels)


def test_columns_and_dtypes_follow_the_contract(cohort: Cohort) -> None:
    assert cohort.visits.schema == pl.Schema(
        {
            "visit_id": pl.Int64,
            "patient_id": pl.Int64,
            "arrival_time": pl.Datetime("us"),
            "prediction_time": pl.Datetime("us"),
            "age": pl.Float64,
            "sex": pl.String,
        }
    )
    assert cohort.events.schema == pl.Schema(
        {
            "patient_id": pl.Int64,
            "time": pl.Datetime("us"),
            "code": pl.String,
            "numeric_value": pl.Float64,
        }
    )
    assert cohort.labels.schema == pl.Schema({"visit_id": pl.Int64, "label": pl.Boolean})
    assert cohort.oracle.schema == pl.Schema(
        {"visit_id": pl.Int64, "admission_probability": pl.Float64}
    )
    for table, frame in ((schema.VISITS, cohort.visits), (schema.EVENTS, cohort.events)):
        names = {c.name for c in table.columns}
        assert set(frame.columns) <= names
        assert {c.name for c in table.columns if c.required} <= set(frame.columns)
        for column in table.columns:
            if column.name in frame.columns and not column.nullable:
                assert frame[column.name].null_count() == 0, column.name


def test_visits(cohort: Cohort) -> None:
    visits = cohort.visits
    assert visits.height == N_VISITS
    assert visits["visit_id"].is_unique().all()
    assert (visits["prediction_time"] - visits["arrival_time"] == timedelta(hours=1)).all()
    assert visits["arrival_time"].min() >= datetime(2021, 1, 1)
    assert visits["arrival_time"].max() < datetime(2024, 1, 1)
    # Spread over the three years, not bunched.
    assert visits["arrival_time"].dt.year().n_unique() == 3
    assert visits["age"].is_between(18, 100).all()
    assert 35 < visits["age"].mean() < 70
    assert set(visits["sex"].unique()) == {"F", "M"}
    # Visits of a patient do not overlap: each 7-day outcome window is the visit's own.
    gaps = (
        visits.sort("patient_id", "arrival_time")
        .select(pl.col("arrival_time").diff().over("patient_id").drop_nulls())
        .to_series()
    )
    assert gaps.min() > timedelta(days=13)


def test_repeat_visitors(cohort: Cohort) -> None:
    per_patient = cohort.visits.group_by("patient_id").len()["len"]
    assert 1.3 < N_VISITS / per_patient.len() < 2.3
    assert (per_patient >= 2).sum() > 0.2 * per_patient.len()
    assert per_patient.max() >= 4
    # Repeat visitors are frailer: higher true risk.
    risk = cohort.visits.join(cohort.oracle, on="visit_id").join(
        cohort.visits.group_by("patient_id").len(), on="patient_id"
    )
    repeat = risk.filter(pl.col("len") >= 3)["admission_probability"].mean()
    single = risk.filter(pl.col("len") == 1)["admission_probability"].mean()
    assert repeat > single


def test_events_sorted_with_values_where_expected(cohort: Cohort, version: int) -> None:
    events = cohort.events
    assert events.height > 0
    assert_frame_equal(events, events.sort("patient_id", "time", maintain_order=True))
    assert set(cohort.visits["patient_id"]) <= set(events["patient_id"])
    per_visit = events.height / N_VISITS
    # Version 2's histories are longer and its long tail far larger (docs/cohort.md).
    assert (35 <= per_visit <= 60) if version == 1 else (80 <= per_visit <= 160)
    valued = events.filter(pl.col("code").str.contains(r"^(LAB|VITAL|TRIAGE)//"))
    assert valued["numeric_value"].null_count() == 0
    assert valued["numeric_value"].is_finite().all()
    unvalued = events.filter(pl.col("code").str.contains(r"^(DX|CC|MED_HOME|MED_ED|DISP|ADMIT)//"))
    assert unvalued["numeric_value"].null_count() == unvalued.height
    esi = events.filter(pl.col("code") == "TRIAGE//ESI")["numeric_value"]
    assert set(esi.unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert esi.n_unique() == 5


def test_prevalence_in_a_plausible_band(cohort: Cohort, version: int) -> None:
    prevalence = cohort.labels["label"].mean()
    # Version 2: within the published 0.30-0.47 (docs/cohort.md).
    assert (0.15 < prevalence < 0.35) if version == 1 else (0.30 < prevalence < 0.47)


@pytest.mark.parametrize("labeled_frac", [0.0, 0.05, 0.37, 1.0])
def test_labeled_fraction_and_labels_a_subset(labeled_frac: float) -> None:
    small = generate_cohort(1000, labeled_frac=labeled_frac, seed=1)
    assert small.labels.height == round(labeled_frac * 1000)
    assert small.labels["visit_id"].is_unique().all()
    assert set(small.labels["visit_id"]) <= set(small.visits["visit_id"])
    assert small.labels.schema == pl.Schema({"visit_id": pl.Int64, "label": pl.Boolean})
    assert small.oracle.height == 1000


def test_oracle_covers_every_visit_and_ranks_the_outcome(cohort: Cohort) -> None:
    oracle = cohort.oracle
    assert oracle["visit_id"].sort().equals(cohort.visits["visit_id"].sort())
    p = oracle["admission_probability"]
    assert ((p > 0) & (p < 1)).all()
    joined = cohort.labels.join(oracle, on="visit_id")
    assert joined.height == N_VISITS
    y = joined["label"].to_numpy()
    auroc = roc_auc_score(y, joined["admission_probability"].to_numpy())
    assert 0.75 < auroc < 0.95
    # Calibrated: the labels are drawn from the stored probabilities.
    assert abs(y.mean() - p.mean()) < 0.03


def test_latent_state_covers_every_patient_and_shows_in_the_history(cohort: Cohort) -> None:
    latent = cohort.latent
    assert latent.columns == ["patient_id", "frailty", *(c.name for c in CONDITIONS)]
    assert latent["patient_id"].is_unique().all()
    assert set(cohort.visits["patient_id"]) <= set(latent["patient_id"])
    assert set(cohort.events["patient_id"]) == set(latent["patient_id"])
    # Patients with heart failure carry its codes far more often than those without.
    codes = set(next(c for c in CONDITIONS if c.name == "heart_failure").dx_family)
    coded = set(cohort.events.filter(pl.col("code").is_in(codes))["patient_id"])
    with_it = latent.filter(pl.col("heart_failure"))["patient_id"]
    without = latent.filter(~pl.col("heart_failure"))["patient_id"]
    share = {name: sum(p in coded for p in ids) / len(ids) for name, ids in
             (("with", with_it), ("without", without))}  # fmt: skip
    assert share["with"] > 0.5 > 10 * share["without"]


def test_dispositions_fall_after_the_prediction_time(cohort: Cohort) -> None:
    disp = visit_events(cohort, "DISP//", timedelta(days=1))
    # One disposition per visit, strictly after its prediction time (a leak the pipeline drops).
    assert disp["visit_id"].sort().equals(cohort.visits["visit_id"].sort())
    assert (disp["time"] > disp["prediction_time"]).all()
    assert set(disp["code"]) == {"DISP//ADMIT", "DISP//DISCHARGE"}
    # DISP//ADMIT reveals the outcome.
    assert disp.filter(pl.col("code") == "DISP//ADMIT")["label"].all()
    admitted_from_ed = disp.filter(pl.col("label"))["code"].eq("DISP//ADMIT").mean()
    assert 0.7 < admitted_from_ed < 0.95


def test_labels_agree_with_admission_events(cohort: Cohort) -> None:
    admits = visit_events(cohort, "ADMIT//INPATIENT", timedelta(days=7))
    assert (admits["time"] > admits["prediction_time"]).all()
    admitted = set(admits["visit_id"])
    truth = dict(zip(cohort.labels["visit_id"], cohort.labels["label"], strict=True))
    assert admitted == {v for v, label in truth.items() if label}
    # Some admissions follow a return within 7 days rather than the ED visit itself.
    late = admits.filter(pl.col("time") > pl.col("arrival_time") + timedelta(days=1))
    assert 0 < late.height < 0.3 * admits.height


def test_leak_codes_appear_in_the_history_of_later_visits(cohort: Cohort) -> None:
    history = (
        cohort.events.filter(pl.col("code").str.starts_with("ADMIT//"))
        .join(cohort.visits, on="patient_id")
        .filter(pl.col("time") < pl.col("arrival_time"))
    )
    assert history.height > 0


def test_some_current_visit_events_fall_after_the_prediction_time(
    cohort: Cohort, version: int
) -> None:
    for prefix in ("LAB//", "MED_ED//"):
        events = visit_events(cohort, prefix, timedelta(hours=12))
        after = (events["time"] > events["prediction_time"]).mean()
        assert 0.1 < after < 0.9, prefix
    for prefix in ("CC//", "TRIAGE//", "VITAL//"):
        events = visit_events(cohort, prefix, timedelta(hours=1))
        # Version 2 leaves a share of triage and vitals unrecorded (at most 12% per vital).
        assert events.height >= (1.0 if version == 1 else 0.85) * N_VISITS
        assert (events["time"] <= events["prediction_time"]).all()


def test_vitals_and_labs_carry_acute_severity(cohort: Cohort) -> None:
    window = timedelta(hours=12)
    hr = (
        visit_events(cohort, "VITAL//HR", window)
        .group_by("label")
        .agg(pl.col("numeric_value").mean())
    )
    means = dict(zip(hr["label"], hr["numeric_value"], strict=True))
    assert means[True] > means[False] + 3
    spo2 = visit_events(cohort, "VITAL//SPO2", window)
    assert spo2["numeric_value"].is_between(70, 100).all()


def test_history_precedes_the_first_visit(cohort: Cohort) -> None:
    first = cohort.visits.group_by("patient_id").agg(pl.col("arrival_time").min())
    history = (
        cohort.events.filter(pl.col("code").str.starts_with("ENC//"))
        .join(first, on="patient_id")
        .filter(
            pl.col("time").is_between(
                pl.col("arrival_time") - timedelta(days=365),
                pl.col("arrival_time"),
                closed="left",
            )
        )
    )
    assert history["patient_id"].n_unique() > 0.5 * first.height


@pytest.mark.parametrize("condition", ["heart_failure", "copd", "diabetes"])
def test_synonymous_condition_codes_cooccur(cohort: Cohort, condition: str) -> None:
    dx_codes = next(c for c in CONDITIONS if c.name == condition).dx_family
    # Outpatient history only: leave out patients ever admitted (inpatient discharge diagnoses).
    admitted = cohort.events.filter(pl.col("code") == "ADMIT//INPATIENT")["patient_id"]
    history = cohort.events.filter(~pl.col("patient_id").is_in(admitted.implode()))
    codes_per_patient = (
        history.filter(pl.col("code").is_in(dx_codes))
        .group_by("patient_id")
        .agg(pl.col("code").unique())
    )
    n_patients = history["patient_id"].n_unique()
    top = dx_codes[0]
    with_top = codes_per_patient.filter(pl.col("code").list.contains(top))
    others = pl.col("code").list.set_difference(pl.lit([top])).list.len() > 0
    p_other_given_top = with_top.select(others.mean()).item()
    p_other = codes_per_patient.filter(others).height / n_patients
    assert with_top.height >= 10
    assert p_other_given_top > 3 * p_other
    # The condition is spread over dozens of codes in use, each rarer than the condition.
    used = history.filter(pl.col("code").is_in(dx_codes))["code"].n_unique()
    assert used >= 30


def test_recorded_conditions_raise_the_true_risk(cohort: Cohort) -> None:
    heart_failure = next(c for c in CONDITIONS if c.name == "heart_failure")
    coded = set(cohort.events.filter(pl.col("code").is_in(heart_failure.dx_family))["patient_id"])
    risk = cohort.visits.join(cohort.oracle, on="visit_id").with_columns(
        coded=pl.col("patient_id").is_in(list(coded))
    )
    means = risk.group_by("coded").agg(pl.col("admission_probability").mean())
    by_coded = dict(zip(means["coded"], means["admission_probability"], strict=True))
    assert by_coded[True] > by_coded[False] + 0.1


def test_long_tail_of_rare_codes(cohort: Cohort) -> None:
    patients_per_code = cohort.events.group_by("code").agg(pl.col("patient_id").n_unique())
    assert patients_per_code.height > 1000
    assert (patients_per_code["patient_id"] < 5).sum() > 100
    assert patients_per_code.filter(pl.col("code").str.starts_with("PROC//")).height > 100
    noise = set(synthetic.noise_codes())
    assert noise.isdisjoint(c for cond in CONDITIONS for c in cond.dx_family + cond.med_family)
    families = [c for cond in CONDITIONS for c in cond.dx_family]
    assert len(families) == len(set(families))  # no code belongs to two conditions


def test_a_single_visit() -> None:
    one = generate_cohort(1, labeled_frac=1.0, seed=0)
    assert one.visits.height == one.oracle.height == one.labels.height == 1
    assert one.events.height > 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_visits": 0}, "n_visits"),
        ({"n_visits": -3}, "n_visits"),
        ({"n_visits": 2.5}, "n_visits"),
        ({"n_visits": 10, "labeled_frac": -0.1}, "labeled_frac"),
        ({"n_visits": 10, "labeled_frac": 1.5}, "labeled_frac"),
        ({"n_visits": 10, "labeled_frac": float("nan")}, "labeled_frac"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    n_visits = kwargs.pop("n_visits")
    with pytest.raises(ValueError, match=match):
        generate_cohort(n_visits, **kwargs)


@pytest.fixture(scope="module")
def small() -> Cohort:
    return generate_cohort(500, labeled_frac=0.2, seed=11)


def test_write_cohort_one_events_file(small: Cohort, tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    write_cohort(small, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            schema.VISITS.filename,
            schema.EVENTS.filename,
            schema.LABELS.filename,
            schema.ORACLE_FILENAME,
            OUTPUT_MARKER_FILE,
        ]
    )
    assert output_kind(out) == "dataset"
    assert_frame_equal(pl.read_parquet(out / schema.VISITS.filename), small.visits)
    assert_frame_equal(pl.read_parquet(out / schema.EVENTS.filename), small.events)
    assert_frame_equal(pl.read_parquet(out / schema.LABELS.filename), small.labels)
    assert_frame_equal(pl.read_parquet(out / schema.ORACLE_FILENAME), small.oracle)


def test_write_cohort_shards_by_patient(small: Cohort, tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    write_cohort(small, out, shards=3)
    assert not (out / schema.EVENTS.filename).exists()
    files = sorted((out / schema.EVENTS.name).iterdir())
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(3)]
    parts = [pl.read_parquet(f) for f in files]
    assert all(part.height > 0 for part in parts)
    assert_frame_equal(pl.concat(parts), small.events)
    patient_sets = [set(part["patient_id"]) for part in parts]
    assert sum(len(s) for s in patient_sets) == len(set().union(*patient_sets))


def test_write_cohort_more_shards_than_patients(tmp_path: Path) -> None:
    one = generate_cohort(1, seed=0)
    write_cohort(one, tmp_path / "cohort", shards=4)
    parts = [pl.read_parquet(f) for f in sorted((tmp_path / "cohort" / "events").iterdir())]
    assert len(parts) == 4
    assert_frame_equal(pl.concat(parts), one.events)
    assert all(part.schema == one.events.schema for part in parts)


def test_write_cohort_refuses_an_existing_directory(small: Cohort, tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_cohort(small, out)
    with pytest.raises(InputError, match="not an ehr-ssl output"):  # not even with overwrite
        write_cohort(small, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    write_cohort(small, out)  # an empty directory is used
    (out / "extra.txt").write_text("x")
    write_cohort(small, out, overwrite=True)  # a synthetic dataset is replaced
    assert not (out / "extra.txt").exists()
    assert (out / schema.VISITS.filename).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]  # no lock, no temporaries


def test_a_failed_write_leaves_nothing(
    small: Cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic_writer, "_write_events", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_cohort(small, tmp_path / "cohort", shards=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shards", [0, -1])
def test_write_cohort_rejects_bad_shards(small: Cohort, tmp_path: Path, shards: int) -> None:
    with pytest.raises(ValueError, match="shards"):
        write_cohort(small, tmp_path / "cohort", shards=shards)
    assert not (tmp_path / "cohort").exists()


@pytest.mark.parametrize(
    "n_visits,labeled_frac,shards", [(200, 0.0, 1), (10, 0.01, 1), (3, 0.5, 8), (300, 0.1, 3)]
)
def test_written_cohort_reads_back_through_the_contract(tmp_path, n_visits, labeled_frac, shards):
    """Whatever synth writes, the readers accept (no empty labels table, empty shards skipped)."""
    from ehr_ssl.config import DataConfig
    from ehr_ssl.data.readers import read_dataset

    cohort = generate_cohort(n_visits, labeled_frac=labeled_frac, seed=2)
    write_cohort(cohort, tmp_path / "c", shards=shards)
    dataset = read_dataset(tmp_path / "c", DataConfig())
    assert dataset.visits.height == n_visits
    assert dataset.events.height == cohort.events.height
    assert (dataset.labels is None) == (cohort.labels.height == 0)
