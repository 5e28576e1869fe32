"""Scheduled retraining and the registry: warm start and promotion, the gate refusing a worse
candidate, a retrain SIGKILLed at several points, and concurrent retrains."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import tomllib
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from ehr_ssl.cli import main
from ehr_ssl.config import SplitConfig, load_pipeline_config
from ehr_ssl.data.splits import temporal_splits
from ehr_ssl.data.synthetic import generate_cohort, write_cohort
from ehr_ssl.deploy.registry import Registry
from ehr_ssl.deploy.retraining import (
    _screen_for_leaks,
    gate,
    next_step,
    retrain,
    shifted_dates_warning,
)
from ehr_ssl.errors import InputError
from ehr_ssl.settings import to_dict

SETTINGS = {
    "preset": "tiny",
    "train.max_steps": 10,
    "tokenizer.max_length": 64,
    "finetune.max_epochs": 2,
    "finetune.patience": 1,
    "finetune.cv_folds": 3,  # cv selection at a test's cost
    "finetune.cv_repeats": 1,
    "evaluate.n_boot": 50,
    "retrain.test_fraction": 0.2,
    # A 10-step tiny model is as overconfident as chance makes it (slopes near 0.5 both sides of
    # the default bound): these tests are about the registry, so the gate here checks AUROC and
    # that a calibration fit exists; test_the_gate_checks_calibration covers the bounds.
    "retrain.calibration_slope_min": 0.0,
    "retrain.calibration_slope_max": 100.0,
    "retrain.max_abs_calibration_intercept": 100.0,
    "retrain.min_auroc": 0.5,  # a 10-step tiny model; the default floor is tested below
}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("retrain")
    write_cohort(generate_cohort(1500, labeled_frac=0.5, seed=11), root / "data")
    return root / "data"


@pytest.fixture(scope="module")
def registry(data, tmp_path_factory) -> Path:
    """A registry after one retrain (version 1 in production)."""
    path = tmp_path_factory.mktemp("reg") / "registry"
    retrain(data, path, load_pipeline_config(None, SETTINGS))
    return path


def _state(path: Path) -> tuple:
    """What must not change when a retrain fails: history, pointer and the versions present."""
    return (
        (path / "history.jsonl").read_text(),
        (path / "production").read_text(),
        sorted(p.name for p in (path / "versions").iterdir()),
    )


def _leftovers(path: Path) -> list[str]:
    """What a finished or failed retrain must not leave: tmp/ and work/ entries."""
    return [p.name for d in ("tmp", "work") if (path / d).is_dir() for p in (path / d).iterdir()]


def test_first_retrain_promotes_and_a_second_warm_starts(registry, data, tmp_path, caplog):
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    assert Registry(reg).production_version() == 1
    assert json.loads((reg / "production").read_text()) == {"version": 1}
    record = retrain(data, reg, load_pipeline_config(None, SETTINGS))
    assert record["version"] == 2 and record["warm_start_from"] == 1
    assert record["production"] is not None and record["candidate_minus_production"] is not None
    assert record["drift"]["unknown_code_share"]["current"] >= 0
    history = Registry(reg).history()
    assert [r["version"] for r in history] == [1, 2]
    report = (reg / "versions" / "2" / "retrain_report.md").read_text()
    assert "## Gate" in report and "## Drift" in report
    test = record["data"]["splits"]["test"]
    assert f"{test['visits']} visits of {test['patients']} patients" in report
    assert 0 < test["patients"] <= test["visits"] and record["data"]["dates_warning"] is None
    # the version's bundle carries the comparison with the baselines on the same test window
    evaluation = json.loads((reg / "versions" / "2" / "report.json").read_text())
    baselines = ["counts_logistic", "counts_gbm", "tabular_logistic", "tabular_gbm"]
    assert list(evaluation["models"]) == ["candidate", "production", *baselines]
    assert evaluation["models"]["candidate"]["auroc"] == record["candidate"]["auroc"]
    assert "counts_logistic" in (reg / "versions" / "2" / "MODEL_CARD.md").read_text()
    assert Registry(reg).production_version() == (2 if record["promoted"] else 1)
    # the same data again, under the same tokenizer: nothing to tokenize (incremental)
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        retrain(data, reg, load_pipeline_config(None, SETTINGS))
    assert "tokenize: 0 visits tokenized, 1500 reused from the cache" in caplog.text
    visits = pl.read_parquet(data / "visits.parquet")
    left_out = _window_split(visits).null_count()  # a window patient's visits before it
    assert (
        0 < left_out == 1500 - sum(split["visits"] for split in record["data"]["splits"].values())
    )
    assert f"tokenize: {left_out} visits left out by the split" in caplog.text


def test_a_retrain_reads_a_meds_root_as_it_is(tmp_path, caplog):
    """As `run` does: the MEDS tools' output in, its label file naming the ED visits; the
    work's key is the root's own files, not the temporary contract-form copy."""
    from ehr_ssl.data.synthetic import write_meds_cohort
    from ehr_ssl.data.synthetic.writer import MEDS_LABELS_FILE, MEDS_VISITS_FILE

    root = tmp_path / "meds"
    write_meds_cohort(generate_cohort(1500, labeled_frac=0.5, seed=11), root)
    argv = ["-q", "retrain", "--data", str(root), "--registry", str(tmp_path / "registry"),
            "--meds-labels", str(root / MEDS_LABELS_FILE),
            "--meds-prediction-times", str(root / MEDS_VISITS_FILE)]  # fmt: skip
    for dotted, value in SETTINGS.items():
        argv += ["--set", f"{dotted}={json.dumps(value)}"]
    assert main(argv) == 0
    record = Registry(tmp_path / "registry").history()[0]
    assert record["version"] == 1 and record["promoted"]
    assert record["data"]["splits"]["test"]["labeled"] > 0
    assert main(argv) == 0  # warm: its tokens cached under version 1's tokenizer
    config = load_pipeline_config(None, SETTINGS | {
        "meds.labels": str(root / MEDS_LABELS_FILE),
        "meds.prediction_times": str(root / MEDS_VISITS_FILE)})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):  # a new temporary copy, same root
        retrain(root, tmp_path / "registry", config)
    # the contract-form copy links the MEDS shards: the same files, so nothing is tokenized
    assert "tokenize: 0 visits tokenized, 1500 reused from the cache" in caplog.text
    assert [r["version"] for r in Registry(tmp_path / "registry").history()] == [1, 2, 3]


def test_the_gate_refuses_a_worse_candidate(registry, data, tmp_path, capsys):
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    before = _state(reg)
    # Replace the labels the candidate learns from (every visit before the test window) with
    # their opposite; keep the window's true labels: the candidate must lose there. (Labels
    # merely unrelated to risk were not enough: a warm start keeps most of its ranking.)
    worse = tmp_path / "worse"
    shutil.copytree(data, worse)
    visits = pl.read_parquet(worse / "visits.parquet")
    cutoff = visits["arrival_time"].quantile(0.7)
    early = visits.filter(pl.col("arrival_time") < cutoff)["visit_id"].implode()
    labels = pl.read_parquet(worse / "labels.parquet")
    is_early = labels["visit_id"].is_in(early)
    noise = labels.filter(is_early).with_columns(label=~pl.col("label"))
    pl.concat([noise, labels.filter(~is_early)]).write_parquet(worse / "labels.parquet")
    argv = ["retrain", "--data", str(worse), "--registry", str(reg), "--preset", "tiny",
            "--max-steps", "10", "--test-fraction", "0.2", "--n-boot", "50"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "not promoted" in out and "FAILED candidate AUROC" in out
    assert "next: production stays version 1" in out
    history = Registry(reg).history()
    assert history[-1]["promoted"] is False and history[-1]["version"] == 2
    assert (reg / "production").read_text() == before[1]


def test_the_gate_checks_calibration():
    config = load_pipeline_config(None, {})  # default gate: AUROC >= 0.7, slope in [0.7, 1.4]
    good = {"auroc": 0.8, "calibration_slope": 1.0, "calibration_intercept": -0.5}
    assert gate(good, None, config) == (True, [
        "passed candidate AUROC 0.800 vs minimum 0.700",
        "passed calibration slope 1.000 in [0.7, 1.4]",
        "passed |calibration intercept| -0.500 <= 1.5",
    ])  # fmt: skip
    for change, failed in [
        ({"auroc": 0.505}, "FAILED candidate AUROC 0.505 vs minimum 0.700"),
        ({"calibration_slope": 0.69}, "FAILED calibration slope 0.690 in [0.7, 1.4]"),
        ({"calibration_slope": 1.5}, "FAILED calibration slope 1.500 in [0.7, 1.4]"),
        ({"calibration_slope": None}, "FAILED calibration slope none in [0.7, 1.4]"),
        ({"calibration_intercept": 1.6}, "FAILED |calibration intercept| 1.600 <= 1.5"),
        ({"calibration_intercept": None}, "FAILED |calibration intercept| none <= 1.5"),
    ]:
        promote, reasons = gate({**good, **change}, None, config)
        assert not promote and reasons[0] == failed
    # with a production model, the candidate may fall at most max_auroc_drop below it
    assert gate(good, {"auroc": 0.805}, config)[0]
    assert not gate(good, {"auroc": 0.82}, config)[0]


def test_promotions_each_within_the_tolerance_cannot_add_up():
    """Six candidates each 0.0099 below production once all passed, 0.800 falling to 0.741."""
    from ehr_ssl.deploy.retraining import _Production, anchor_version

    config = load_pipeline_config(None, {})  # max_auroc_drop 0.01
    calibrated = {"calibration_slope": 1.0, "calibration_intercept": 0.0}
    window = {1: 0.800}  # each version's AUROC on the (same) test window
    production = _Production(1, None)
    for version in range(2, 8):
        window[version] = window[production.version] - 0.0099
        anchor = production.anchor
        promote, reasons = gate(
            {"auroc": window[version], **calibrated}, {"auroc": window[production.version]},
            config, anchor=None if anchor is None else {"auroc": window[anchor]},
            anchor_version=anchor,
        )  # fmt: skip
        if not promote:
            break
        models = {"candidate": {"auroc": window[version]},
                  "production": {"auroc": window[production.version]}}  # fmt: skip
        production = _Production(version, None, anchor_version(promote, models, production))
    assert version == 3 and production.version == 2  # one step down, never a second
    assert reasons[0].startswith("FAILED candidate AUROC 0.780 vs version 1 0.800")
    assert window[production.version] >= window[1] - config.retrain.max_auroc_drop
    # a drop and a hair of gain, alternating, cannot reset the anchor either
    production = _Production(1, None)
    for version in range(2, 12):
        step = -0.0099 if version % 2 == 0 else 0.0001
        window[version] = window[production.version] + step
        anchor = production.anchor
        anchor_figures = None if anchor is None else {"auroc": window[anchor]}
        promote, _ = gate({"auroc": window[version], **calibrated},
                          {"auroc": window[production.version]}, config,
                          anchor=anchor_figures, anchor_version=anchor)  # fmt: skip
        if promote:
            models = {"candidate": {"auroc": window[version]},
                      "production": {"auroc": window[production.version]},
                      "anchor": anchor_figures}  # fmt: skip
            production = _Production(version, None, anchor_version(promote, models, production))
    assert window[production.version] >= window[1] - config.retrain.max_auroc_drop
    # a promotion that does not fall below production makes the new version its own anchor
    better = {"candidate": {"auroc": 0.81}, "production": {"auroc": 0.80}}
    assert anchor_version(True, better, _Production(2, None, 1)) is None
    assert anchor_version(False, better, _Production(2, None, 1)) == 1


_KILLER = """
import os, signal, sys
from pathlib import Path
import ehr_ssl.deploy.registry as registry_module
import ehr_ssl.training.pretrain as train_module
from ehr_ssl.config import SplitConfig, load_pipeline_config
from ehr_ssl.deploy.retraining import gate, retrain

point = sys.argv[3]
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if point == "pretraining":
    train_module.save_checkpoint = die
elif point == "after-second-checkpoint":
    save, calls = train_module.save_checkpoint, []
    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            die()
    train_module.save_checkpoint = save_then_die
elif point == "after-version-moved":
    registry_module.atomic_write_text = die  # the history write, right after the move
elif point == "after-history-written":  # the pointer's rewrite in commit (not at the lock)
    write_pointer, calls = registry_module.Registry._write_pointer, []
    def pointer_then_die(self):
        calls.append(1)
        if len(calls) == 2:
            die()
        write_pointer(self)
    registry_module.Registry._write_pointer = pointer_then_die
retrain(Path(sys.argv[1]), Path(sys.argv[2]), load_pipeline_config(None, {settings}))
"""


def _kill_retrain(data: Path, reg: Path, point: str, settings: dict) -> None:
    script = _KILLER.replace("{settings}", repr(settings))
    done = subprocess.run(
        [sys.executable, "-c", script, str(data), str(reg), point], cwd=ROOT, capture_output=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]


@pytest.mark.parametrize("point", ["pretraining", "after-version-moved", "after-history-written"])
def test_a_killed_retrain_leaves_the_registry_consistent(registry, data, tmp_path, point, caplog):
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    before = _state(reg)
    _kill_retrain(data, reg, point, SETTINGS)
    if point == "after-history-written":  # killed after the commit: recorded in full
        assert len(Registry(reg).history()) == 2
        assert (reg / "production").read_text() == before[1]  # the pointer lags ...
    else:
        assert _state(reg)[:2] == before[:2]  # history and production untouched
    # ... and the next retrain recovers: no orphan version, pointer = history's production
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        retrain(data, reg, load_pipeline_config(None, SETTINGS))
    # killed before its commit, after scoring the window: the window is not scored again
    kept = "test window's comparison of the interrupted retrain kept" in caplog.text
    assert kept == (point == "after-version-moved")
    registry_now = Registry(reg)
    recorded = [r["version"] for r in registry_now.history()]
    assert sorted(int(p.name) for p in (reg / "versions").iterdir()) == recorded
    assert json.loads((reg / "production").read_text())["version"] == (
        registry_now.production_version()
    )
    assert _leftovers(reg) == []  # the work of a retrain killed after its commit: removed


CHECKPOINTED = SETTINGS | {"train.checkpoint_every": 4}  # of 10 steps: killed after step 8


def test_a_retrain_killed_in_pretraining_resumes_to_the_same_record(
    registry, data, tmp_path, caplog, capsys
):
    uninterrupted, resumed = tmp_path / "a", tmp_path / "b"
    shutil.copytree(registry, uninterrupted)
    shutil.copytree(registry, resumed)
    expected = retrain(data, uninterrupted, load_pipeline_config(None, CHECKPOINTED))
    _kill_retrain(data, resumed, "after-second-checkpoint", CHECKPOINTED)
    (work,) = Registry(resumed).unfinished_work()
    assert (work / "pretrain" / "checkpoints" / "step-00000008").is_dir()
    assert len(Registry(resumed).history()) == 1  # nothing committed
    assert main(["registry", str(resumed)]) == 0
    assert f"unfinished retrain: {work.name} (tokenize finished" in capsys.readouterr().out

    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        record = retrain(data, resumed, load_pipeline_config(None, CHECKPOINTED))
    messages = [r.getMessage() for r in caplog.records]
    assert any("resumed from step-00000008" in m for m in messages)
    assert any("tokens of the interrupted retrain kept" in m for m in messages)
    drop = ("time", "next_step")
    assert {k: v for k, v in record.items() if k not in drop} == {
        k: v for k, v in expected.items() if k not in drop
    }  # the same figures, gate and decision: the resume continued bit for bit
    history = [Registry(p).history()[-1] for p in (uninterrupted, resumed)]
    each = [{k: v for k, v in h.items() if k not in ("time", "work")} for h in history]
    assert each[0] == each[1] and history[1]["work"] == work.name  # the attempt committed
    assert _leftovers(resumed) == []


@pytest.mark.parametrize("change", ["data", "setting", "fresh"])
def test_a_killed_retrains_work_is_not_reused_for_other_inputs(
    registry, data, tmp_path, caplog, change
):
    reg, changed = tmp_path / "registry", tmp_path / "data"
    shutil.copytree(registry, reg)
    shutil.copytree(data, changed)
    _kill_retrain(changed, reg, "after-second-checkpoint", CHECKPOINTED)
    (killed,) = Registry(reg).unfinished_work()
    settings = CHECKPOINTED | ({"train.max_steps": 12} if change == "setting" else {})
    if change == "data":  # a file rewritten since: the data's fingerprint changes
        stat = (changed / "events.parquet").stat()
        os.utime(changed / "events.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        retrain(changed, reg, load_pipeline_config(None, settings), fresh=change == "fresh")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("resumed" in m or "interrupted retrain" in m for m in messages)
    assert not killed.exists() and _leftovers(reg) == []
    assert len(Registry(reg).history()) == 2


def test_work_is_kept_only_to_resume(tmp_path):
    registry = Registry.open(tmp_path / "reg", create=True)

    def interrupted(key: str, *, finished: bool = True, fresh: bool = False) -> Path:
        with registry.lock(), pytest.raises(KeyboardInterrupt), registry.work_dir(
            key, fresh=fresh
        ) as work:  # fmt: skip
            if finished:
                (work / "stages.json").write_text("{}")  # a stage finished, then a kill
            raise KeyboardInterrupt
        return work

    k1 = interrupted("k1")
    assert registry.unfinished_work() == [k1] and k1.name.startswith("retrain-k1-")
    assert interrupted("k1") == k1  # the same inputs resume it
    interrupted("k2", finished=False)  # nothing finished: nothing kept
    assert registry.unfinished_work() == [k1]  # nor pruned: k2 never checked its input
    with registry.lock(), pytest.raises(KeyboardInterrupt), registry.work_dir("k2") as k2:
        (k2 / "stages.json").write_text("{}")
        registry.prune_work(keep=k2)  # its input checked: the other inputs' work goes
        raise KeyboardInterrupt
    assert registry.unfinished_work() == [k2]
    with registry.lock(), pytest.raises(InputError), registry.work_dir("k2"):
        raise InputError("bad input", file="x")  # a rerun would fail the same way
    assert registry.unfinished_work() == []
    k4 = interrupted("k4")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    with registry.lock():  # killed right after its commit: the next lock removes its work
        registry.commit(bundle, {"work": k4.name}, promote=True)
        assert registry.unfinished_work() == [k4]
    with registry.lock():
        assert registry.unfinished_work() == []
    again = interrupted("k4")  # the same inputs again: another attempt, not the committed one
    with registry.lock():
        assert again != k4 and registry.unfinished_work() == [again]
    fresh = interrupted("k4", fresh=True)
    assert fresh != again and registry.unfinished_work() == [fresh]


def test_a_second_retrain_waits_or_fails_clearly(registry, data, tmp_path, capsys):
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    before = _state(reg)
    with Registry(reg).lock():
        argv = ["retrain", "--data", str(data), "--registry", str(reg), "--preset", "tiny"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "locked by another retrain" in err and f"pid {os.getpid()}" in err
    assert _state(reg) == before
    # two at once, the second waiting for the first: both recorded, one after the other
    script = textwrap.dedent(
        f"""
        import sys
        from ehr_ssl.config import SplitConfig, load_pipeline_config
        from ehr_ssl.deploy.retraining import gate, retrain
        retrain(sys.argv[1], sys.argv[2], load_pipeline_config(None, {SETTINGS!r}), wait=300)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(data), str(reg)], cwd=ROOT, stderr=subprocess.PIPE
        )  # fmt: skip
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    assert [r["version"] for r in Registry(reg).history()] == [1, 2, 3]
    assert sorted(p.name for p in (reg / "versions").iterdir()) == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["retrain", "--data", "{missing}", "--registry", "{reg}"], "dataset directory not found"),
        (["retrain", "--data", "{data}", "--registry", "{reg}", "--test-fraction", "1.5"],
         "setting 'retrain.test_fraction': must be in (0, 1)"),
        (["retrain", "--data", "{data}", "--registry", "{notreg}"],
         "is not empty: refusing to make a registry there"),
        (["retrain", "--data", "{data}", "--registry", "{reg}",
          "--set", "train.include_test_unlabeled=true"],
         "setting 'train.include_test_unlabeled': a retrain never pretrains on its test window"),
        (["retrain", "--data", "{data}", "--registry", "{reg}", "--meds-labels", "{missing}"],
         "not a MEDS root (no data/ directory, or a visits.parquet beside it), so meds.labels"),
        (["registry", "{notreg}"], "not a model registry"),
        (["bundle", "{notreg}", "--out", "{out}"], "not a run directory"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(registry, data, tmp_path, capsys, argv, expected):
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    before = _state(reg)
    notreg = tmp_path / "notreg"
    notreg.mkdir()
    (notreg / "something").write_text("x")
    paths = {"missing": tmp_path / "nope", "reg": reg, "data": data, "notreg": notreg,
             "out": tmp_path / "out"}  # fmt: skip
    assert main([a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ehr-ssl: error: ") and expected in err[0], err
    assert _state(reg) == before and not (tmp_path / "out").exists()


def test_a_retrain_on_bad_data_leaves_the_registry_untouched(registry, data, tmp_path, capsys):
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    before = _state(reg)
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    pl.read_parquet(bad / "events.parquet").drop("time").write_parquet(bad / "events.parquet")
    assert main(["retrain", "--data", str(bad), "--registry", str(reg)]) == 2
    assert "column 'time': missing" in capsys.readouterr().err
    assert _state(reg) == before and _leftovers(reg) == []  # bad input: nothing to resume


def _window_split(visits: pl.DataFrame) -> pl.Series:
    """The retrain's temporal split of `visits` under SETTINGS."""
    window = SplitConfig(test_fraction=SETTINGS["retrain.test_fraction"])
    return temporal_splits(visits["patient_id"], visits["prediction_time"], window)


def _with_code_in_admitted_visits(data: Path, out: Path, code: str, *, window: bool) -> Path:
    """A copy of `data` with `code` recorded 30 minutes after arrival (before the prediction
    time) in every admitted labeled visit of the test window (`window`) or of the others."""
    shutil.copytree(data, out)
    visits, labels = (
        pl.read_parquet(out / "visits.parquet"),
        pl.read_parquet(out / "labels.parquet"),
    )
    split = _window_split(visits)
    chosen = visits.filter((split == "test") if window else split.is_in(["train", "val"]))
    admitted = chosen.join(labels.filter(pl.col("label")), on="visit_id")
    events = pl.read_parquet(out / "events.parquet")
    planted = admitted.select("patient_id", time=pl.col("arrival_time") + timedelta(minutes=30),
                              code=pl.lit(code))  # fmt: skip
    pl.concat([events, planted], how="diagonal_relaxed").write_parquet(out / "events.parquet")
    return out


def test_a_retrain_screens_its_training_labels_for_leaks(registry, data, tmp_path, capsys, caplog):
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    before = _state(reg)
    leaky = _with_code_in_admitted_visits(data, tmp_path / "leaky", "ORDER//BED_REQUEST",
                                          window=False)  # fmt: skip
    assert main(["retrain", "--data", str(leaky), "--registry", str(reg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "column 'code': suspected label leak" in err[0], err
    assert "--accept-leaks ORDER//BED_REQUEST" in err[0]
    assert _state(reg) == before and _leftovers(reg) == []
    # accepted after review, the same data passes the screen (and goes on to tokenize)
    config = load_pipeline_config(None, SETTINGS | {"leakage.accept": ["ORDER//BED_REQUEST"]})
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        _screen_for_leaks(leaky, config, _window_split)
    assert "leak screen flags: ORDER//BED_REQUEST" in caplog.text
    # the test window's labels are never read: the same code in its admitted visits only passes
    in_window = _with_code_in_admitted_visits(data, tmp_path / "window", "ORDER//BED_REQUEST",
                                              window=True)  # fmt: skip
    _screen_for_leaks(in_window, load_pipeline_config(None, SETTINGS), _window_split)
    # control: those window labels, were they read, would be flagged
    every_label = lambda v: pl.Series(["train"] * v.height, dtype=pl.Enum(["train", "val", "test"]))  # noqa: E731
    with pytest.raises(InputError, match="suspected label leak"):
        _screen_for_leaks(in_window, load_pipeline_config(None, SETTINGS), every_label)


def test_no_identifier_reaches_the_versions_the_history_or_the_log(finished_run, tmp_path, caplog):
    from tests.conftest import PATIENT_PREFIX, VISIT_PREFIX

    data, _ = finished_run  # string identifiers with distinctive prefixes
    reg = tmp_path / "registry"
    with caplog.at_level(logging.INFO, logger="ehr_ssl"):
        retrain(data, reg, load_pipeline_config(None, SETTINGS))
        retrain(data, reg, load_pipeline_config(None, SETTINGS))
    # (the pointer exists only once a version passed the gate)
    shipped = [p for p in (reg / "history.jsonl", reg / "production") if p.exists()]
    shipped += [p for p in (reg / "versions").rglob("*") if p.is_file()]
    for path in shipped:
        content = path.read_bytes()
        assert PATIENT_PREFIX.encode() not in content and VISIT_PREFIX.encode() not in content, path
    assert PATIENT_PREFIX not in caplog.text and VISIT_PREFIX not in caplog.text


GOOD_HISTORY = '{"version": 1, "promoted": true}\n{"version": 2, "promoted": false}\n'


@pytest.mark.parametrize(
    ("file", "content", "expected"),
    [
        ("history.jsonl", '{"promoted": true}\n', "history.jsonl: line 1: no integer 'version'"),
        ("history.jsonl", GOOD_HISTORY + "garbage\n", "line 3: not valid JSON"),
        ("history.jsonl", "[1, 2]\n", "line 1: not a JSON object"),
        ("history.jsonl", GOOD_HISTORY + '{"version": 2, "promoted": true}\n',
         "line 3: version 2 after version 2"),
        ("history.jsonl", '{"version": 1}\n', "line 1: 'promoted' is not true or false"),
        ("production", "garbage", "production pointer is not valid JSON"),
        ("production", "[1]", "production pointer is a JSON list"),
        ("production", '{"version": "1"}', 'production pointer is not {"version": N}'),
        ("production", '{"version": 2}', "names version 2, which history.jsonl never promoted"),
        ("registry.json", "[]", "registry marker is a JSON list"),
        ("registry.json", '{"format": "other"}', "registry format 'other' version None"),
    ],
)  # fmt: skip
def test_a_damaged_registry_file_exits_2_with_one_line(tmp_path, capsys, file, content, expected):
    """A history record without a version gave KeyError; a garbage pointer or registry file
    was accepted without a word."""
    import ehr_ssl
    from ehr_ssl.errors import InputError

    reg = Registry.open(tmp_path / "registry", create=True).root
    (reg / "history.jsonl").write_text(GOOD_HISTORY)
    (reg / "production").write_text('{"version": 1}\n')
    assert main(["registry", str(reg)]) == 0
    assert "production: version 1" in capsys.readouterr().out
    (reg / file).write_text(content)
    assert main(["registry", str(reg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(reg / file) in err[0] and expected in err[0], err
    with pytest.raises(InputError, match=re.escape(expected)):
        ehr_ssl.load(reg)


def test_a_version_bundle_holds_its_retrain_report_in_its_checksums(registry):
    files = json.loads((registry / "versions" / "1" / "bundle.json").read_text())["files"]
    assert {"retrain_report.md", "retrain_report.json"} <= set(files)


@pytest.mark.parametrize("section", ["retrain", "leakage"])
def test_the_documented_gate_is_the_default(section):
    """pipelines/hospital.toml spells out the gates' defaults: they must be the defaults."""
    documented = tomllib.loads((ROOT.parent / "pipelines" / "hospital.toml").read_text())
    defaults = to_dict(getattr(load_pipeline_config(None, {}), section))
    assert documented[section] == {k: defaults[k] for k in documented[section]}


@pytest.mark.parametrize(
    "first,last,warned",
    [
        ("2021-01-01 00:00:00", "2023-12-31 23:00:00", None),
        ("2110-03-01 00:00:00", "2214-07-01 00:00:00", "after today"),  # MIMIC-IV's shift
        ("1940-01-01 00:00:00", "2024-01-01 00:00:00", "spanning 1940-01-01 to 2024-01-01"),
    ],
)
def test_dates_shifted_per_patient_are_flagged(first, last, warned):
    today = datetime(2026, 12, 4)
    warning = shifted_dates_warning(first, last, today=today)
    assert warning is None if warned is None else warned in warning


def test_a_retrain_not_promoted_says_what_to_do_next():
    assert next_step(True, None, "R.md") is None
    first = next_step(False, None, "R.md")
    assert "no model is in production yet" in first and "R.md" in first
    assert "retrain.label_budget" in first and "ehr-ssl retrain" in first
    assert next_step(False, 3, "R.md").startswith("production stays version 3")


def test_a_deleted_version_number_is_never_reused(tmp_path):
    registry = Registry.open(tmp_path / "reg", create=True)

    def commit() -> int:
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        with registry.lock():
            return registry.commit(bundle, {"test_auroc": 0.8}, promote=True)

    assert [commit(), commit(), commit()] == [1, 2, 3]
    shutil.rmtree(registry.version_path(3))  # an operator freeing space
    assert commit() == 4
    assert [r["version"] for r in registry.history()] == [1, 2, 3, 4]


def test_a_registry_another_first_retrain_is_making_is_finished_not_refused(tmp_path):
    root = tmp_path / "reg"
    (root / "versions").mkdir(parents=True)  # the other job's state before its marker
    (root / ".lock").touch()
    (root / ".registry.json.tmp-123-abc").touch()  # its marker half-written when killed
    assert Registry.is_registry(Registry.open(root, create=True).root)
    (tmp_path / "other" / "versions" / "1").mkdir(parents=True)  # not a registry's beginning
    with pytest.raises(InputError, match="exists and is not empty"):
        Registry.open(tmp_path / "other", create=True)


def test_a_window_reaching_into_productions_training_is_refused(registry, data, tmp_path):
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    (record,) = Registry(reg).history()
    assert record["data"]["trained_until"] is not None  # recorded for the next retrain
    # exact in the history, a date in the version's shared retrain report
    shipped = json.loads((reg / "versions" / "1" / "retrain_report.json").read_text())
    assert len(record["data"]["trained_until"]) > 10
    assert shipped["data"]["trained_until"] == record["data"]["trained_until"][:10]
    before = _state(reg)
    wider = load_pipeline_config(None, SETTINGS | {"retrain.test_fraction": 0.4})  # was 0.2
    with pytest.raises(InputError, match=r"setting 'retrain.test_fraction': the test window start"):
        retrain(data, reg, wider)
    assert _state(reg) == before


def test_the_window_check_by_prediction_time_and_older_records_skipped(tmp_path, caplog):
    from ehr_ssl.deploy.retraining import check_window_after_production

    reg = Registry.open(tmp_path / "reg", create=True)
    records = [{"data": {"trained_until": "2024-06-01 00:30:00"}},
               {"data": {"test_window_from": "2024-06-01 00:00:00"}}, {"data": None}]  # fmt: skip
    for number, record in enumerate(records):
        (tmp_path / f"b{number}").mkdir()
        with reg.lock():
            reg.commit(tmp_path / f"b{number}", record, promote=True)
    window = {"prediction_time_range": ["2024-06-01 01:00:00", "2024-07-01 01:00:00"]}
    manifest = {"splits": {"test": window}}
    check_window_after_production(manifest, reg, 1)  # the window after what version 1 learned
    window["prediction_time_range"][0] = "2024-06-01 00:30:00"
    with pytest.raises(InputError, match="within what production version 1 trained on"):
        check_window_after_production(manifest, reg, 1)
    with caplog.at_level(logging.WARNING, logger="ehr_ssl"):  # older records: not decided
        check_window_after_production(manifest, reg, 2)
        check_window_after_production(manifest, reg, 3)
    assert caplog.text.count("has no trained_until") == 2
    check_window_after_production(manifest, reg, None)  # no production: nothing to check


def test_a_rollback_serves_an_earlier_production_version_again(tmp_path, capsys):
    from ehr_ssl.deploy.registry import rollback

    reg = Registry.open(tmp_path / "reg", create=True)
    for number, promote in ((1, True), (2, True), (3, False)):
        bundle = tmp_path / f"b{number}"
        bundle.mkdir()
        (bundle / "weights").write_text(f"model {number}")
        with reg.lock():
            reg.commit(bundle, {"candidate": {"auroc": 0.8}, "data": {}}, promote=promote)
    assert reg.production_version() == 2
    assert main(["registry", str(reg.root), "--rollback", "1"]) == 0
    assert "version 4 (a copy of version 1) is in production" in capsys.readouterr().out
    assert reg.production_version() == 4
    assert (reg.version_path(4) / "weights").read_text() == "model 1"
    assert reg.history()[-1]["rollback_of"] == 1
    assert json.loads((reg.root / "production").read_text()) == {"version": 4}
    for version, problem in ((3, "never served"), (4, "in production already"), (9, "no version")):
        with pytest.raises(InputError, match=problem), reg.lock():
            rollback(reg, version)
    assert main(["registry", str(reg.root), "--rollback", "3"]) == 2
    assert "version 3 never served" in capsys.readouterr().err
    assert reg.history()[-1]["production_version"] == 2  # the version it replaced
    shutil.rmtree(reg.version_path(2))
    with pytest.raises(InputError, match="version 2's directory was deleted"), reg.lock():
        rollback(reg, 2)


def test_a_retrain_scores_the_anchor_on_the_window_and_gates_against_it(registry, data, tmp_path):
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    (first,) = Registry(reg).history()
    shutil.copytree(reg / "versions" / "1", tmp_path / "copy")
    with Registry(reg).lock():  # version 2: promoted within the tolerance of version 1
        Registry(reg).commit(tmp_path / "copy", {**first, "anchor_version": 1}, promote=True)
    record = retrain(data, reg, load_pipeline_config(None, SETTINGS))
    assert record["production_version"] == 2
    assert any("vs version 1 " in reason for reason in record["reasons"])
    evaluation = json.loads((reg / "versions" / "3" / "report.json").read_text())
    assert {"candidate", "production", "anchor"} <= set(evaluation["models"])
    # version 2 is version 1's copy: the same scores on the same window
    assert evaluation["models"]["anchor"]["auroc"] == evaluation["models"]["production"]["auroc"]
