"""The leakage screen: a code planted in admitted visits' prediction windows is found, with its
figures; the clean synthetic cohort has none; accepting it lets validate and run go on; a code
after prediction_time, or one that only a few patients carry, is never flagged."""

from __future__ import annotations

import json
from datetime import timedelta

import polars as pl
import pytest

from ehr_ssl.cli import main
from ehr_ssl.config import LeakageConfig, load_pipeline_config
from ehr_ssl.data.leakage import CURRENT, check_leaks, screen_leaks
from ehr_ssl.data.readers import read_dataset
from ehr_ssl.data.synthetic import generate_cohort, write_cohort
from ehr_ssl.errors import InputError

LOOKBACK = 365.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A 3,000-visit synthetic cohort, 60% labeled (so that its test patients alone hold more
    admitted patients than the screen's minimum), read as the pipeline reads it."""
    root = tmp_path_factory.mktemp("leak")
    write_cohort(generate_cohort(3000, labeled_frac=0.6, seed=7), root / "data")
    return root, read_dataset(root / "data", load_pipeline_config(None, {}).data)


def _plant(dataset, code: str, *, share: float, minutes: float) -> pl.DataFrame:
    """The events plus `code` at arrival + `minutes` in `share` of the admitted visits."""
    admitted = dataset.labels.filter(pl.col("label")).sample(fraction=share, seed=0)
    visits = admitted.join(dataset.visits, on="visit_id")
    planted = visits.select(
        "patient_id",
        time=pl.col("arrival_time") + timedelta(minutes=minutes),
        code=pl.lit(code),
        numeric_value=pl.lit(None, dtype=pl.Float64),
    )
    return pl.concat([dataset.events, planted.cast(dataset.events.schema)])


def _screen(dataset, events, **config):
    return screen_leaks(dataset.visits, events, dataset.labels, lookback_days=LOOKBACK,
                        config=LeakageConfig(**config))  # fmt: skip


def test_the_clean_cohort_has_no_suspected_leak(cohort):
    _, dataset = cohort
    assert _screen(dataset, dataset.events) == []


def test_a_code_planted_in_admitted_windows_is_found_with_its_figures(cohort):
    _, dataset = cohort
    leaks = _screen(dataset, _plant(dataset, "ORDER//BED_REQUEST", share=0.5, minutes=30))
    assert [leak.code for leak in leaks] == ["ORDER//BED_REQUEST"]  # its prefix only echoes it
    leak = leaks[0]
    positives = int(dataset.labels["label"].sum())
    assert leak.where == CURRENT and leak.admission_rate == 1.0
    assert leak.visits == leak.admitted == int(positives * 0.5)  # the planted visits
    assert leak.auroc == pytest.approx(0.5 + 0.5 * leak.visits / positives)
    # every admitted visit: presence alone separates the classes
    (full,) = _screen(dataset, _plant(dataset, "ORDER//BED_REQUEST", share=1.0, minutes=30))
    assert full.auroc == pytest.approx(1.0)


def test_what_the_model_never_reads_or_chance_explains_is_not_flagged(cohort):
    _, dataset = cohort
    after = _plant(dataset, "DISP//ADMIT", share=1.0, minutes=120)  # after prediction_time
    assert _screen(dataset, after) == []
    few = _plant(dataset, "ORDER//RARE", share=0.01, minutes=30)  # a handful of patients
    assert _screen(dataset, few) == []


def test_a_prefix_accepts_its_codes_and_the_error_names_the_numbers(cohort):
    _, dataset = cohort
    leaks = _screen(dataset, _plant(dataset, "ORDER//BED_REQUEST", share=0.5, minutes=30))
    with pytest.raises(InputError) as raised:
        check_leaks(leaks, [], "events.parquet")
    message = str(raised.value)
    assert message.startswith("events.parquet: column 'code': suspected label leak: ")
    assert "'ORDER//BED_REQUEST' in the current visit" in message and "100% admitted" in message
    assert "--accept-leaks ORDER//BED_REQUEST" in message
    check_leaks(leaks, ["ORDER//"], "events.parquet")
    check_leaks(leaks, ["ORDER//BED_REQUEST"], "events.parquet")


def test_validate_exits_2_on_a_leak_and_lists_it_once_accepted(cohort, tmp_path, capsys):
    root, dataset = cohort
    data = tmp_path / "data"
    write_cohort(generate_cohort(3000, labeled_frac=0.4, seed=7), data)
    events = _plant(dataset, "ORDER//BED_REQUEST", share=0.5, minutes=30)
    for path in data.glob("events*"):
        path.unlink() if path.is_file() else None
    events.write_parquet(data / "events.parquet")
    assert main(["validate", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "suspected label leak" in err[0] and "events.parquet" in err[0]
    assert main(["validate", str(data), "--json", "--accept-leaks", "ORDER//BED_REQUEST"]) == 0
    (leak,) = json.loads(capsys.readouterr().out)["suspected_leaks"]
    assert leak["code"] == "ORDER//BED_REQUEST" and leak["accepted"] is True
    # a run stops before it writes anything
    out = tmp_path / "run"
    assert main(["-q", "run", "--data", str(data), "--out", str(out), "--preset", "tiny"]) == 2
    assert "suspected label leak" in capsys.readouterr().err
    assert not (out / "tokens").exists()


def test_the_screen_of_a_run_never_reads_test_labels(cohort):
    """A code planted only in test patients' admitted visits is invisible to the screen."""
    from ehr_ssl.data.leakage import screen_dataset
    from ehr_ssl.data.readers import Dataset
    from ehr_ssl.data.splits import assign_splits

    _, dataset = cohort
    config = load_pipeline_config(None, {})
    split = assign_splits(dataset.visits["patient_id"], config.split)
    test_visits = dataset.visits.filter(split == "test")["visit_id"].implode()
    only_test = Dataset(**{**vars(dataset), "labels": dataset.labels.filter(
        pl.col("visit_id").is_in(test_visits))})  # fmt: skip
    events = _plant(only_test, "ORDER//BED_REQUEST", share=1.0, minutes=30)
    assert _screen(only_test, events)  # the bare screen sees it ...
    planted = Dataset(**{**vars(dataset), "events": events})
    assert screen_dataset(planted, config) == []  # ... the run's screen reads no test label


def test_an_accepted_code_that_matches_nothing_is_warned_of(cohort, caplog):
    from ehr_ssl.data.leakage import screen_dataset, unmatched_accepts

    _, dataset = cohort
    codes = dataset.events["code"]
    some = codes[0]
    prefix = some.split("//")[0] + "//"
    accept = [some, prefix, "ORDER//BED_REQEUST", "NOPE//"]
    assert unmatched_accepts(codes, accept) == ["ORDER//BED_REQEUST", "NOPE//"]
    config = load_pipeline_config(None, {"leakage.accept": accept})
    with caplog.at_level("WARNING", logger="ehr_ssl"):
        screen_dataset(dataset, config)
    assert "ORDER//BED_REQEUST, NOPE// match no code" in caplog.text
