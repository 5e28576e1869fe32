"""The whole pipeline on a small synthetic cohort: outputs, stage skipping, resume, and the
leakage checks (future events change no prediction of any model; test labels change no choice)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ehr_ssl.cli import main
from ehr_ssl.config import load_pipeline_config
from ehr_ssl.data.synthetic import generate_cohort, write_cohort
from ehr_ssl.errors import InputError
from ehr_ssl.pipeline import load_checked_config, run_pipeline
from ehr_ssl.tokens.shards import read_split

MODELS = ["ssl", "ssl_linear_probe", "scratch", "counts_logistic", "counts_gbm", "ssl_plus_counts",
          "tabular_logistic", "tabular_gbm"]  # fmt: skip


def _config(**overrides):
    values = {
        "preset": "tiny",
        "train.max_steps": 12,
        "train.checkpoint_every": 5,
        "tokenizer.max_length": 64,
        "finetune.max_epochs": 2,
        "finetune.patience": 1,
        "finetune.cv_folds": 3,  # cv selection at a test's cost
        "finetune.cv_repeats": 1,
        "evaluate.label_budgets": ["60"],
        "evaluate.n_boot": 50,
    }
    return load_pipeline_config(None, values | overrides)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    write_cohort(generate_cohort(1500, labeled_frac=0.4, seed=3), root / "data")
    return root / "data"


@pytest.fixture(scope="module")
def first_run(cohort_dir) -> Path:
    run_dir = cohort_dir.parent / "run"
    run_pipeline(cohort_dir, run_dir, _config(), device="cpu")
    return run_dir


def _scores(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "predictions.parquet").sort("model", "budget", "visit_id")


def test_outputs_of_a_run(first_run, cohort_dir):
    report = json.loads((first_run / "report.json").read_text())
    assert list(report["models"]) == MODELS
    for metrics in report["models"].values():
        assert 0.0 <= metrics["auroc"] <= 1.0
        assert len(metrics["auroc_ci95"]) == 2
        for key in ("auprc", "brier", "calibration_slope", "calibration_intercept", "n"):
            assert key in metrics
        assert 0 < metrics["prevalence"] < 1
    assert report["label_budget"] == "all"
    assert 0.5 < report["oracle_auroc"] <= 1.0  # the synthetic cohort ships oracle.parquet
    assert [entry["budget"] for entry in report["label_efficiency"]] == ["60", "all"]
    predictions = pl.read_parquet(first_run / "predictions.parquet")
    assert predictions.columns[:6] == ["visit_id", "patient_id", "split", "model", "score", "label"]
    test = read_split(first_run / "tokens", "test").filter(pl.col("labeled"))
    assert set(predictions["visit_id"]) == set(test["visit_id"])
    assert set(predictions["split"]) == {"test"}
    for name in ("report.md", "roc.png", "calibration.png", "label_efficiency.png",
                 "decision_curve.png"):  # fmt: skip
        assert (first_run / name).stat().st_size > 0
    # the operating thresholds come from validation scores of the reference, never the test
    validation = pl.read_parquet(first_run / "validation_predictions.parquet")
    assert set(validation["split"]) == {"val"} and set(validation["model"]) == {"ssl"}
    assert not set(validation["visit_id"]) & set(test["visit_id"])
    points = report["operating_points"]
    assert points["thresholds_from"]["n"] == validation.filter(seed=report["seed"]).height
    assert [p["target"] for p in points["points"]] == [0.8, 0.9, 0.05, 0.1, 0.2]
    for column in ("age", "sex"):  # the synthetic cohort's statics
        groups = report["subgroups"]["columns"][column]
        shown = [g for g in groups if not g.get("suppressed")]  # cells of 11 patients or more
        assert all(g["n_patients"] >= 11 for g in shown)
        assert sum(g["n"] for g in shown) == report["n_test"] or len(shown) < len(groups)
        assert sum(g["n"] for g in shown) <= report["n_test"]
    text = (first_run / "report.md").read_text()
    assert "## Operating points of ssl" in text and "## Subgroups of ssl" in text
    saved = json.loads((first_run / "run_config.json").read_text())
    assert saved["evaluate"]["label_budgets"] == ["60"]


def test_no_patient_is_in_two_splits(first_run):
    splits = [read_split(first_run / "tokens", s) for s in ("train", "val", "test")]
    patients = [set(s["patient_id"]) for s in splits]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])


def test_a_rerun_skips_every_complete_stage(first_run, cohort_dir, caplog):
    before = {p: p.stat().st_mtime_ns for p in first_run.rglob("*") if p.is_file()}
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        run_pipeline(cohort_dir, first_run, _config(), device="cpu")
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 + 1 + 6 + 1  # tokenize, pretrain, 2 budgets x 3 models, evaluate
    changed = [
        p.name
        for p, mtime in before.items()
        if p.stat().st_mtime_ns != mtime and p.name != "run_config.json"
    ]
    assert changed == []


def test_a_changed_setting_reruns_only_what_depends_on_it(cohort_dir, first_run, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        run_pipeline(cohort_dir, run_dir, _config(**{"finetune.learning_rate": 3e-3}))
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("validate + tokenize: unchanged") for m in messages)
    assert any(m.startswith("pretrain: unchanged") for m in messages)
    assert not any(m.startswith("finetune") and "skipped" in m for m in messages)
    assert not any(m.startswith("evaluate: unchanged") for m in messages)


def test_a_new_pretraining_keeps_the_scratch_models_and_a_new_shape_does_not(
    cohort_dir, first_run, tmp_path, caplog
):
    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        run_pipeline(cohort_dir, run_dir, _config(**{"train.seed": 1}), device="cpu")
    skipped = {r.getMessage().split(":")[0] for r in caplog.records if "skipped" in r.getMessage()}
    finetunes = {m for m in skipped if m.startswith("finetune")}
    assert finetunes == {f"finetune scratch {b}-seed0" for b in ("all", "60")}
    before, after = _scores(first_run), _scores(run_dir)
    assert after.filter(model="scratch")["score"].equals(before.filter(model="scratch")["score"])
    assert not after.filter(model="ssl")["score"].equals(before.filter(model="ssl")["score"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):  # the architecture scratch copies
        run_pipeline(cohort_dir, run_dir, _config(**{"model.intermediate_size": 48}), device="cpu")
    assert not any(r.getMessage().startswith("finetune scratch") and "skipped" in r.getMessage()
                   for r in caplog.records)  # fmt: skip


def test_an_interrupted_pretraining_resumes(cohort_dir, first_run, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    # What a kill before the end leaves: checkpoints, no summary, no completion record.
    (run_dir / "pretrain" / "pretrain_summary.json").unlink()
    stages = json.loads((run_dir / "stages.json").read_text())
    del stages["pretrain"]
    (run_dir / "stages.json").write_text(json.dumps(stages))
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        run_pipeline(cohort_dir, run_dir, _config(), device="cpu")
    assert any("(resumed)" in r.getMessage() for r in caplog.records)
    assert _scores(run_dir)["score"].equals(_scores(first_run)["score"])


def _perturb_future_events(data_dir: Path, out_dir: Path) -> None:
    """Change, delete and add events after each patient's last prediction time: disposition,
    admission and discharge codes of the last visit are all there, so the outcome leaks if any
    stage reads past the cutoff."""
    shutil.copytree(data_dir, out_dir)
    visits = pl.read_parquet(data_dir / "visits.parquet")
    events = pl.read_parquet(data_dir / "events.parquet")
    last = visits.group_by("patient_id").agg(pl.col("prediction_time").max().alias("cutoff"))
    events = events.join(last, on="patient_id", how="left")
    future = pl.col("cutoff").is_not_null() & (pl.col("time") > pl.col("cutoff"))
    assert events.filter(future).height > 100
    rng = np.random.default_rng(0)
    keep = pl.Series(rng.random(events.height) > 0.3)
    changed = events.with_columns(
        code=pl.when(future).then(pl.lit("LEAK//") + pl.col("code")).otherwise(pl.col("code")),
        numeric_value=pl.when(future).then(pl.lit(1e6)).otherwise(pl.col("numeric_value")),
    ).filter(~future | keep)
    added = (
        last.with_columns(time=pl.col("cutoff") + pl.duration(seconds=1), code=pl.lit("ADMIT//X"))
        .with_columns(numeric_value=pl.lit(None, dtype=pl.Float64))
        .select("patient_id", "time", "code", "numeric_value")
    )
    frame = pl.concat([changed.drop("cutoff"), added]).sort("patient_id", "time")
    frame.write_parquet(out_dir / "events.parquet")


def test_future_events_change_no_prediction_of_any_model(cohort_dir, first_run, tmp_path):
    perturbed = tmp_path / "data"
    _perturb_future_events(cohort_dir, perturbed)
    run_pipeline(perturbed, tmp_path / "run", _config(), device="cpu")
    a, b = _scores(first_run), _scores(tmp_path / "run")
    assert set(a["model"]) == set(MODELS)
    assert a.select("model", "budget", "visit_id").equals(b.select("model", "budget", "visit_id"))
    assert (a["score"] == b["score"]).all()  # bitwise, every model


def test_changed_test_labels_change_no_choice(cohort_dir, first_run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cohort_dir, data)
    test_ids = read_split(first_run / "tokens", "test")["visit_id"]
    labels = pl.read_parquet(cohort_dir / "labels.parquet")
    values = labels["label"].to_numpy().copy()
    rows = np.flatnonzero(labels["visit_id"].is_in(test_ids.implode()).to_numpy())
    values[rows] = ~values[rows]  # every test label flipped: the strongest shuffle
    assert len(rows) > 30
    labels.with_columns(label=pl.Series(values)).write_parquet(data / "labels.parquet")
    run_pipeline(data, tmp_path / "run", _config(), device="cpu")
    first = json.loads((first_run / "report.json").read_text())
    second = json.loads((tmp_path / "run" / "report.json").read_text())
    assert second["selection"] == first["selection"]  # epochs, probe C, baseline grids
    assert _scores(tmp_path / "run")["score"].equals(_scores(first_run)["score"])


def test_cli_run_prints_the_table_and_rejects_bad_input(cohort_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(cohort_dir, bad)
    pl.read_parquet(bad / "visits.parquet").drop("arrival_time").write_parquet(
        bad / "visits.parquet"
    )
    assert main(["-q", "run", "--data", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "visits.parquet" in err[0] and "arrival_time" in err[0]
    assert not (tmp_path / "r" / "report.json").exists()
    assert not (tmp_path / "r" / "tokens").exists()


@pytest.mark.parametrize(
    ("labels", "expected"),
    [(None, "labels.parquet: no labeled visits: `run` fine-tunes"),
     (False, "labels.parquet: column 'label': the train split has .* all negative")],
)  # fmt: skip
def test_cli_run_without_both_classes_stops_before_writing(cohort_dir, tmp_path, capsys, labels,
                                                           expected):  # fmt: skip
    data = tmp_path / "data"
    shutil.copytree(cohort_dir, data)
    if labels is None:
        (data / "labels.parquet").unlink()
    else:
        frame = pl.read_parquet(data / "labels.parquet").with_columns(label=pl.lit(labels))
        frame.write_parquet(data / "labels.parquet")
    out = tmp_path / "r"
    assert main(["-q", "run", "--data", str(data), "--out", str(out), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(expected, err[0]) and str(data) in err[0]
    assert not out.exists() or not any(out.iterdir())  # no marker, config or tokens


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--label-budget", "lots"], "label_budget"),
        (["--label-budgets", "100,0"], "label_budget"),
        (["--label-budget", "1.5"], "label_budget"),
        (["--seeds", "x"], "seeds"),
        (["--val-fraction", "0.6", "--test-fraction", "0.5"], "must leave patients for training"),
        (["--split-seed", "-1"], "setting 'split.seed': must be a non-negative integer"),
        (["--set", "model.dropout=0.1"], "setting 'model': unknown key 'dropout'"),
        (["--set", "model.hidden_size=31"], "not a multiple of num_attention_heads"),
    ],
)
def test_cli_run_rejects_bad_settings(cohort_dir, tmp_path, capsys, argv, expected):
    out = tmp_path / "r"
    try:
        code = main(["-q", "run", "--data", str(cohort_dir), "--out", str(out), *argv])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not out.exists()


def test_cli_evaluate_rewrites_the_report(first_run, cohort_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    (run_dir / "report.json").unlink()
    assert main(["-q", "evaluate", str(run_dir), "--data", str(cohort_dir)]) == 0
    assert "counts_gbm" in capsys.readouterr().out
    assert json.loads((run_dir / "report.json").read_text())["models"].keys() == set(MODELS)
    assert main(["-q", "evaluate", str(tmp_path / "nothing")]) == 2
    # visits of another dataset: one line naming the visits file, and nothing rewritten
    other = tmp_path / "other"
    shutil.copytree(cohort_dir, other)
    test_visit = pl.read_parquet(run_dir / "predictions.parquet").filter(pl.col("split") == "test")
    visits = pl.read_parquet(other / "visits.parquet")
    visits.filter(pl.col("visit_id") != test_visit["visit_id"][0]).write_parquet(
        other / "visits.parquet"
    )
    written = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["-q", "evaluate", str(run_dir), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "visits.parquet: column 'visit_id': 1 test visits of the run" in err[0]
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == written
    # a MEDS root for a run made on a dataset directory: one line, nothing written
    from ehr_ssl.data.synthetic import write_meds_cohort

    write_meds_cohort(generate_cohort(300, labeled_frac=0.4, seed=1), tmp_path / "meds")
    assert main(["-q", "evaluate", str(run_dir), "--data", str(tmp_path / "meds")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the run was made on a dataset directory" in err[0]
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == written
    # the same ids on other patients (a MEDS root's row-number ids shifted): refused alike
    first = test_visit["visit_id"][0]
    other_patient = visits.filter(pl.col("patient_id") != test_visit["patient_id"][0])[0]
    visits.with_columns(
        patient_id=pl.when(pl.col("visit_id") == first)
        .then(pl.lit(other_patient["patient_id"].item()))
        .otherwise(pl.col("patient_id"))
    ).write_parquet(other / "visits.parquet")
    assert main(["-q", "evaluate", str(run_dir), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "column 'patient_id': 1 test visits of the run belong to" in err[0]
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == written
    # ids of another type (another dataset's): the same one line, nothing written
    named = visits.with_columns(visit_id="v" + pl.col("visit_id").cast(pl.String))
    named.write_parquet(other / "visits.parquet")
    labels = pl.read_parquet(other / "labels.parquet")
    labels.with_columns(visit_id="v" + pl.col("visit_id").cast(pl.String)).write_parquet(
        other / "labels.parquet"
    )
    assert main(["-q", "evaluate", str(run_dir), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "column 'visit_id': type String cannot be the run's" in err[0], err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == written


def test_cli_finetune(first_run, tmp_path, capsys):
    base = ["-q", "finetune", "--tokens", str(first_run / "tokens")]
    argv = [*base, "--encoder", str(first_run / "pretrain"), "--out", str(tmp_path / "ft")]
    assert main([*argv, "--mode", "scratch", "--label-budget", "60", "--max-epochs", "1"]) == 0
    assert "scratch: 60 train" in capsys.readouterr().out
    summary = json.loads((tmp_path / "ft" / "finetune_summary.json").read_text())
    assert summary["train_labeled"] == 60 and summary["config"]["max_epochs"] == 1
    for budget, problem in (("100000", "budget 100000 exceeds the"), ("1", "both classes")):
        assert main([*argv, "--label-budget", budget]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "setting 'finetune.label_budget'" in err[0] and problem in err[0]
    missing = [*base, "--encoder", str(tmp_path), "--out", str(tmp_path / "x")]
    assert main(missing) == 2
    assert "not a pretrained encoder" in capsys.readouterr().err


def test_a_bad_model_setting_names_its_file_or_flag(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("[model]\nhidden_size = 100000\n")
    with pytest.raises(InputError) as error:
        load_checked_config(path, {})
    assert str(error.value) == f"{path}: setting 'model': hidden_size must be <= 16384, got 100000"
    with pytest.raises(InputError) as error:
        load_checked_config(path, {"model.hidden_size": 200000})
    assert str(error.value) == "setting 'model': hidden_size must be <= 16384, got 200000"


def test_budgets_the_labels_cannot_meet_stop_the_run_before_pretraining(cohort_dir, tmp_path):
    """Such a budget was once found only after pretraining."""
    out = tmp_path / "run"
    cases = [
        ({"evaluate.label_budgets": ["60", "100000"]},
         r"setting 'evaluate.label_budgets': budget 100000 exceeds the \d+ labeled visits"),
        ({"evaluate.label_budget": "1"},
         r"setting 'evaluate.label_budget': budget 1 leaves 1 labeled train visits, [01] of them"),
    ]  # fmt: skip
    for overrides, message in cases:
        with pytest.raises(InputError, match=message):
            run_pipeline(cohort_dir, out, _config(**overrides), device="cpu")
        assert (out / "tokens" / "manifest.json").exists() and not (out / "pretrain").exists()


def test_cli_evaluate_refuses_an_incomplete_run(first_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    shutil.rmtree(run_dir / "models" / "60-seed0" / "scratch")
    (run_dir / "report.json").unlink()
    assert main(["-q", "evaluate", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "incomplete run" in err[0]
    assert not (run_dir / "report.json").exists()


def test_a_run_on_a_meds_root_reads_it_as_it_is_and_reruns_nothing(tmp_path, caplog, capsys):
    from ehr_ssl.data.synthetic import write_meds_cohort
    from ehr_ssl.data.synthetic.writer import MEDS_LABELS_FILE, MEDS_VISITS_FILE

    root = tmp_path / "meds"
    write_meds_cohort(generate_cohort(500, labeled_frac=0.4, seed=5), root)
    meds = {"meds.labels": str(root / MEDS_LABELS_FILE),
            "meds.prediction_times": str(root / MEDS_VISITS_FILE),
            "evaluate.models": ["ssl", "counts_logistic"]}  # fmt: skip
    report = run_pipeline(root, tmp_path / "run", _config(**meds), device="cpu")
    assert list(report["models"]) == ["ssl", "counts_logistic"]
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert saved["data"]["static_columns"] == ["age", "sex"]  # from MEDS_BIRTH and GENDER//
    # MEDS out: the test predictions as meds-evaluation reads them, with the report's AUROC
    from meds_evaluation.evaluate import evaluate_binary_classification

    files = sorted(p.relative_to(tmp_path / "run" / "meds_predictions").as_posix()
                   for p in (tmp_path / "run" / "meds_predictions").rglob("*.parquet"))  # fmt: skip
    assert files == [
        f"{m}/{b}-seed0.parquet" for m in ("counts_logistic", "ssl") for b in ("60", "all")
    ]
    table = pl.read_parquet(tmp_path / "run" / "meds_predictions" / "ssl" / "all-seed0.parquet")
    metrics = evaluate_binary_classification(table)["samples_equally_weighted"]
    assert metrics["roc_auc_score"] == pytest.approx(report["models"]["ssl"]["auroc"], abs=1e-6)
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):  # a new temporary copy, same data
        run_pipeline(root, tmp_path / "run", _config(**meds), device="cpu")
    assert "validate + tokenize: unchanged since the last run, skipped" in caplog.text
    # evaluate reads the root as its run did (the run's [meds]): the MEDS predictions again
    shutil.rmtree(tmp_path / "run" / "meds_predictions")
    assert main(["-q", "evaluate", str(tmp_path / "run"), "--data", str(root)]) == 0
    again = pl.read_parquet(tmp_path / "run" / "meds_predictions" / "ssl" / "all-seed0.parquet")
    assert again.equals(table)
    write_cohort(generate_cohort(500, labeled_frac=0.4, seed=5), tmp_path / "contract")
    assert (
        main(["-q", "evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "contract")]) == 2
    )
    assert "the run was made on a MEDS root" in capsys.readouterr().err
