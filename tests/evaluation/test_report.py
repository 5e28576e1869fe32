"""The evaluation report on small synthetic predictions built in conftest.py (a good, a worse and a
random model, two budgets, two seeds), and the seed-mean bootstrap against a slow reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from ehr_ssl.errors import InputError
from ehr_ssl.evaluation.metrics import (
    auroc,
    bootstrap_ci,
    paired_bootstrap_difference,
    seed_mean_bootstrap_ci,
)
from ehr_ssl.evaluation.render import format_report_markdown
from ehr_ssl.evaluation.report import build_report, write_report
from tests.evaluation.conftest import MODELS, N_BOOT, make_predictions


def aligned(predictions: pl.DataFrame, model: str, budget: str, seed: int) -> pl.DataFrame:
    part = predictions.filter(model=model, budget=budget, seed=seed)
    return part.sort("visit_id")


def assert_plain_json(value, where: str = "report") -> None:
    """Only dict (str keys), list, str, int, float, bool and None: what json round-trips."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), where
            assert_plain_json(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_plain_json(item, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (str, int, float, bool), (where, type(value))


# ----------------------------------------------------------------------------------------------
# seed_mean_bootstrap_ci


def grouped_case(seed: int, n_patients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, 3 seeds' tied scores (3, n) and unsorted patient ids with 1-4 visits each."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, 5, size=n_patients)
    groups = np.repeat(rng.permutation(1000)[:n_patients], rows)
    risk = np.repeat(rng.random(n_patients), rows)
    y = rng.random(len(groups)) < 0.2 + 0.5 * risk
    scores = np.clip(risk + rng.normal(0, 0.3, (3, len(groups))), 0, 1).round(1)
    return y, scores, groups


def reference_seed_mean_ci(y, scores, groups, n_boot: int, seed: int) -> tuple[list[float], int]:
    """Per replicate: draw patients (sorted id order) with the same rng calls, concatenate each
    drawn patient's rows, average scikit-learn's AUROC over seeds; skip single-class replicates."""
    rng = np.random.default_rng(seed)
    patients = np.unique(groups)
    rows_of = {g: np.flatnonzero(groups == g) for g in patients}
    means = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(patients), size=len(patients))
        idx = np.concatenate([rows_of[patients[k]] for k in drawn])
        if len(np.unique(y[idx])) < 2:
            continue
        means.append(np.mean([roc_auc_score(y[idx], s[idx]) for s in scores]))
    return list(np.quantile(means, [0.025, 0.975])), len(means)


@pytest.mark.parametrize(("seed", "n_patients"), [(0, 6), (1, 25)])
def test_seed_mean_ci_equals_slow_reference(seed: int, n_patients: int) -> None:
    y, scores, groups = grouped_case(seed, n_patients)
    result = seed_mean_bootstrap_ci(auroc, y, scores, groups, n_boot=150, seed=seed)
    expected_ci, kept = reference_seed_mean_ci(y, scores, groups, 150, seed)
    per_seed = [roc_auc_score(y, s) for s in scores]
    assert result["ci95"] == pytest.approx(expected_ci, abs=1e-12)
    assert result["mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert result["min"] == pytest.approx(min(per_seed), abs=1e-12)
    assert result["max"] == pytest.approx(max(per_seed), abs=1e-12)
    assert result["n_seeds"] == 3
    assert_plain_json(result)
    if n_patients == 6:
        assert kept < 150  # dropping single-class replicates is exercised (and matches)


def test_seed_mean_ci_with_one_seed_equals_bootstrap_ci() -> None:
    y, scores, groups = grouped_case(2, 40)
    result = seed_mean_bootstrap_ci(auroc, y, scores[:1], groups, n_boot=300, seed=7)
    assert result["ci95"] == list(bootstrap_ci(auroc, y, scores[0], groups, n_boot=300, seed=7))
    assert result["mean"] == result["min"] == result["max"] == auroc(y, scores[0])
    assert result["n_seeds"] == 1


def test_seed_mean_ci_rejects_bad_scores() -> None:
    y, scores, groups = grouped_case(3, 20)
    with pytest.raises(ValueError, match=r"shape \(S, n\)"):
        seed_mean_bootstrap_ci(auroc, y, scores[0], groups, n_boot=10)
    with pytest.raises(ValueError, match=r"shape \(S, n\)"):
        seed_mean_bootstrap_ci(auroc, y, scores[:0], groups, n_boot=10)
    with pytest.raises(ValueError, match="different lengths"):
        seed_mean_bootstrap_ci(auroc, y, scores[:, 1:], groups, n_boot=10)
    bad = scores.copy()
    bad[1, 0] = 1.5
    with pytest.raises(ValueError, match=r"scores\[1\]"):
        seed_mean_bootstrap_ci(auroc, y, bad, groups, n_boot=10)


def test_paired_seed_mean_difference_equals_slow_reference() -> None:
    """Two models of 3 and 2 seeds: each replicate draws patients once and takes the difference
    of the two models' seed-mean AUROCs on that same resample."""
    y, scores, groups = grouped_case(4, 30)
    other = np.clip(scores[:2] + np.random.default_rng(4).normal(0, 0.3, scores[:2].shape), 0, 1)
    result = paired_bootstrap_difference(auroc, y, scores, other, groups, n_boot=150, seed=2)
    rng = np.random.default_rng(2)
    patients = np.unique(groups)
    rows_of = {g: np.flatnonzero(groups == g) for g in patients}
    differences = []
    for _ in range(150):
        idx = np.concatenate(
            [rows_of[patients[k]] for k in rng.integers(0, len(patients), size=len(patients))]
        )
        if len(np.unique(y[idx])) < 2:
            continue
        a = np.mean([roc_auc_score(y[idx], s[idx]) for s in scores])
        b = np.mean([roc_auc_score(y[idx], s[idx]) for s in other])
        differences.append(a - b)
    full = np.mean([roc_auc_score(y, s) for s in scores]) - np.mean(
        [roc_auc_score(y, s) for s in other]
    )
    assert result["difference"] == pytest.approx(full, abs=1e-12)
    assert result["ci95"] == pytest.approx(
        list(np.quantile(differences, [0.025, 0.975])), abs=1e-12
    )
    # One seed as a (1, n) matrix is the plain paired difference.
    one = paired_bootstrap_difference(auroc, y, scores[:1], other[:1], groups, n_boot=80, seed=1)
    assert one == paired_bootstrap_difference(
        auroc, y, scores[0], other[0], groups, n_boot=80, seed=1
    )
    with pytest.raises(ValueError, match=r"p_b must have shape"):
        paired_bootstrap_difference(auroc, y, scores, other[:0], groups, n_boot=10)


# ----------------------------------------------------------------------------------------------
# build_report


def test_report_keys_types_and_json_round_trip(report: dict) -> None:
    assert {
        "models",
        "reference",
        "label_budget",
        "seed",
        "oracle_auroc",
        "oracle_auroc_ci95",
        "label_efficiency",
        "n_test",
        "test_prevalence",
        "n_boot",
        "settings",
        "selection",
    } <= set(report)
    assert_plain_json(report)
    assert json.loads(json.dumps(report)) == report
    assert report["reference"] == "ssl"
    assert report["label_budget"] == "100"
    assert report["seed"] == 0
    assert report["n_test"] == 200
    assert report["n_test_patients"] == 120
    assert report["n_boot"] == N_BOOT
    assert report["settings"] == {"out": "runs/x", "lr": 1e-3, "sizes": [1, 2]}
    assert report["selection"] == {"ssl": {"val_auroc": 0.8}}
    assert list(report["models"]) == list(MODELS)  # order of first appearance
    for name, metrics in report["models"].items():
        assert {
            "auroc",
            "auroc_ci95",
            "auprc",
            "brier",
            "calibration_slope",
            "calibration_intercept",
            "n",
            "prevalence",
            "n_patients",
            "train_labels",
            "reference_minus_this",
            "relative_gain",
            "gap_to_oracle",
        } <= set(metrics), name
        assert isinstance(metrics["auroc_ci95"], list) and len(metrics["auroc_ci95"]) == 2
        low, high = metrics["auroc_ci95"]
        assert low <= metrics["auroc"] <= high
        assert metrics["train_labels"] == 100
        assert metrics["n"] == 200 and metrics["n_patients"] == 120


def test_models_table_uses_main_budget_and_smallest_seed(predictions, report) -> None:
    label = aligned(predictions, "ssl", "100", 0)["label"].to_numpy()
    for name, metrics in report["models"].items():
        score = aligned(predictions, name, "100", 0)["score"].to_numpy()
        assert metrics["auroc"] == pytest.approx(roc_auc_score(label, score), abs=1e-12)
    assert report["test_prevalence"] == pytest.approx(label.mean())


def test_reference_minus_this_and_relative_gain(report: dict) -> None:
    models = report["models"]
    assert models["ssl"]["reference_minus_this"] is None
    assert models["ssl"]["relative_gain"] is None
    versus_random = models["random"]["reference_minus_this"]
    assert versus_random["difference"] == pytest.approx(
        models["ssl"]["auroc"] - models["random"]["auroc"], abs=1e-12
    )
    assert versus_random["difference"] > 0
    assert versus_random["ci95"][0] > 0  # the interval excludes 0
    assert versus_random["p_value"] < 0.05
    assert models["scratch"]["reference_minus_this"]["difference"] > 0
    for name in ("scratch", "random"):
        expected = (models["ssl"]["auroc"] - 0.5) / (models[name]["auroc"] - 0.5) - 1
        if models[name]["auroc"] > 0.5:
            assert models[name]["relative_gain"] == pytest.approx(expected, abs=1e-12)


def test_relative_gain_is_none_below_chance(cohort: pl.DataFrame) -> None:
    frame = make_predictions(cohort, budgets=("100",), seeds=(0,), models=("ssl", "inverted"))
    result = build_report(frame, main_budget="100", n_boot=20)
    assert result["models"]["inverted"]["auroc"] < 0.5
    assert result["models"]["inverted"]["relative_gain"] is None
    assert result["models"]["inverted"]["reference_minus_this"]["difference"] > 0


def test_oracle(cohort: pl.DataFrame, predictions: pl.DataFrame, report: dict) -> None:
    expected = roc_auc_score(cohort["label"].to_numpy(), cohort["risk"].to_numpy())
    assert report["oracle_auroc"] == pytest.approx(expected, abs=1e-12)
    low, high = report["oracle_auroc_ci95"]
    assert low <= report["oracle_auroc"] <= high
    for metrics in report["models"].values():
        assert metrics["gap_to_oracle"] == pytest.approx(
            report["oracle_auroc"] - metrics["auroc"], abs=1e-12
        )


def test_oracle_missing_a_visit_or_absent_gives_none(
    cohort: pl.DataFrame, predictions: pl.DataFrame, oracle: pl.DataFrame
) -> None:
    small = predictions.filter(pl.col("budget") == "100", pl.col("seed") == 0)
    for oracle_frame in (oracle.slice(1), None):
        result = build_report(small, main_budget="100", oracle=oracle_frame, n_boot=20)
        assert result["oracle_auroc"] is None
        assert result["oracle_auroc_ci95"] is None
        assert all(m["gap_to_oracle"] is None for m in result["models"].values())
    with pytest.raises(InputError, match="oracle.parquet: lacks column"):
        build_report(small, main_budget="100", oracle=oracle.rename({"visit_id": "v"}), n_boot=20)


def test_an_oracle_of_another_id_type_is_bad_input(
    predictions: pl.DataFrame, oracle: pl.DataFrame
) -> None:
    small = predictions.filter(pl.col("budget") == "100", pl.col("seed") == 0)
    renamed = oracle.with_columns(pl.format("V{}", "visit_id").alias("visit_id"))
    with pytest.raises(InputError, match="column 'visit_id': type String cannot be") as info:
        build_report(small, main_budget="100", oracle=renamed, n_boot=20)
    assert info.value.file == "oracle.parquet"


def test_label_efficiency_means_over_seeds(predictions: pl.DataFrame, report: dict) -> None:
    efficiency = report["label_efficiency"]
    assert [e["budget"] for e in efficiency] == ["100", "all"]
    assert [e["train_labels"] for e in efficiency] == [100, 4001]  # median of 4000 and 4002
    for entry in efficiency:
        assert list(entry["models"]) == list(MODELS)
        for name, value in entry["models"].items():
            per_seed = []
            for seed in (0, 1):
                part = aligned(predictions, name, entry["budget"], seed)
                per_seed.append(roc_auc_score(part["label"], part["score"]))
            assert value["mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
            assert value["min"] == pytest.approx(min(per_seed), abs=1e-12)
            assert value["max"] == pytest.approx(max(per_seed), abs=1e-12)
            assert value["n_seeds"] == 2
            assert value["ci95"][0] <= value["mean"] <= value["ci95"][1]
            if name == report["reference"]:
                assert value["reference_minus_this"] is None
                continue
            scores = {
                m: np.stack([aligned(predictions, m, entry["budget"], s)["score"] for s in (0, 1)])
                for m in (report["reference"], name)
            }
            part = aligned(predictions, name, entry["budget"], 0)
            expected = paired_bootstrap_difference(
                auroc,
                part["label"].to_numpy(),
                scores[report["reference"]],
                scores[name],
                part["patient_id"].to_numpy(),
                n_boot=report["n_boot"],
                seed=report["bootstrap_seed"],
            )
            got = value["reference_minus_this"]
            assert got["difference"] == pytest.approx(expected["difference"], abs=1e-12)
            assert got["ci95"] == pytest.approx(expected["ci95"], abs=1e-12)
            assert got["p_value"] == pytest.approx(expected["p_value"], abs=1e-12)
    ssl = [e["models"]["ssl"]["mean"] for e in efficiency]
    assert ssl[1] > ssl[0]  # more labels, less noise


def test_curve_differences_use_common_seeds_and_need_the_reference(cohort: pl.DataFrame) -> None:
    """Seed s of every model shares one label subset: a model with fewer seeds is compared with
    the reference on those seeds only; a budget without the reference has no difference."""
    full = make_predictions(cohort, seeds=(0, 1, 2))
    fewer = full.filter((pl.col("model") != "scratch") | (pl.col("seed") == 1))
    without_ref = make_predictions(cohort, budgets=("20",), models=("scratch", "random"))
    result = build_report(pl.concat([fewer, without_ref]), main_budget="100", n_boot=N_BOOT, seed=0)
    cells = {e["budget"]: e["models"] for e in result["label_efficiency"]}
    diff = cells["100"]["scratch"]["reference_minus_this"]
    y = aligned(full, "ssl", "100", 1)
    expected = auroc(y["label"].to_numpy(), y["score"].to_numpy()) - auroc(
        y["label"].to_numpy(), aligned(full, "scratch", "100", 1)["score"].to_numpy()
    )
    assert diff["n_seeds"] == 1
    assert diff["difference"] == pytest.approx(expected, abs=1e-12)
    assert diff["min"] == diff["max"] == pytest.approx(expected, abs=1e-12)
    assert cells["100"]["random"]["reference_minus_this"]["n_seeds"] == 3
    assert cells["100"]["ssl"]["reference_minus_this"] is None
    assert all(cell["reference_minus_this"] is None for cell in cells["20"].values())
    assert "| 20 |" in format_report_markdown(result)


def test_budgets_sorted_numerically_with_all_last(cohort: pl.DataFrame) -> None:
    frame = make_predictions(cohort, budgets=("all", "100", "20"), seeds=(1,), models=("ssl",))
    result = build_report(frame, main_budget="20", n_boot=20)
    assert [e["budget"] for e in result["label_efficiency"]] == ["20", "100", "all"]
    assert result["seed"] == 1


def test_non_test_rows_are_ignored(predictions: pl.DataFrame) -> None:
    small = predictions.filter(pl.col("budget") == "100", pl.col("seed") == 0)
    val = small.head(50).with_columns(split=pl.lit("val"), visit_id=pl.col("visit_id") + 10**6)
    expected = build_report(small, main_budget="100", n_boot=20)
    assert build_report(pl.concat([small, val]), main_budget="100", n_boot=20) == expected


def test_bad_inputs_raise(predictions: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"main_budget '1000' is not among"):
        build_report(predictions, main_budget="1000", n_boot=20)
    with pytest.raises(ValueError, match=r"reference model 'gbm' has no predictions"):
        build_report(predictions, main_budget="100", reference="gbm", n_boot=20)
    with pytest.raises(ValueError, match=r"lack required column\(s\) \['train_labels'\]"):
        build_report(predictions.drop("train_labels"), main_budget="100", n_boot=20)
    # One group misses a visit: the groups no longer score the same test visits.
    group = (pl.col("model") == "scratch") & (pl.col("budget") == "all") & (pl.col("seed") == 1)
    first = predictions.filter(group)["visit_id"][0]
    dropped = predictions.filter(~(group & (pl.col("visit_id") == first)))
    with pytest.raises(ValueError, match=r"'scratch', budget 'all', seed 1 scores 199 of the 200"):
        build_report(dropped, main_budget="100", n_boot=20)
    duplicated = pl.concat([predictions, predictions.filter(group).head(1)])
    with pytest.raises(ValueError, match="more than once"):
        build_report(duplicated, main_budget="100", n_boot=20)
    with pytest.raises(ValueError, match="null"):
        build_report(
            predictions.with_columns(score=pl.when(group).then(None).otherwise(pl.col("score"))),
            main_budget="100",
            n_boot=20,
        )


# ----------------------------------------------------------------------------------------------
# files


def test_write_report_writes_every_file_and_no_temporaries(
    tmp_path: Path, predictions: pl.DataFrame, report: dict
) -> None:
    out = tmp_path / "report"
    write_report(predictions, report, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "calibration.png",
        "decision_curve.png",
        "label_efficiency.png",
        "predictions.parquet",
        "report.json",
        "report.md",
        "roc.png",
    ]
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "report.md").read_text() == format_report_markdown(report)
    written = pl.read_parquet(out / "predictions.parquet")
    assert written.columns == [
        "visit_id",
        "patient_id",
        "split",
        "model",
        "score",
        "label",
        "budget",
        "seed",
        "train_labels",
    ]
    assert written.equals(predictions.select(written.columns))
    write_report(predictions, report, out)  # overwriting works and still leaves no temporaries
    assert len(list(out.iterdir())) == 7


def test_a_write_that_fails_part_way_leaves_no_report_json(
    tmp_path: Path, predictions: pl.DataFrame, report: dict, monkeypatch
) -> None:
    """report.json is written last: one that exists describes predictions and plots in place."""
    import ehr_ssl.evaluation.report as report_module

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "write_plots", full_disk)
    with pytest.raises(OSError):
        write_report(predictions, report, tmp_path / "report")
    assert not (tmp_path / "report" / "report.json").exists()


def test_importing_report_does_not_import_matplotlib() -> None:
    code = "import sys, ehr_ssl.evaluation.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
