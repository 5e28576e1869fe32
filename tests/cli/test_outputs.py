"""The `ehr-ssl` commands never lose a user's data: they write only into new, empty or their own
output directories of the same kind, never at, inside or above an input, one process at a time;
they remove what killed runs left; and a full disk is one line naming the output, exit 2, with
nothing partial left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ehr_ssl
from ehr_ssl.cli import main
from ehr_ssl.errors import InputError
from ehr_ssl.outputs import OutputLocked, output_lock
from tests.conftest import make_tables, write_tables


def _tree(root) -> dict[str, bytes]:
    """Every file under `root` with its bytes: to show that nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def foreign_dir(tmp_path):
    """A directory of someone's files that happens to hold tokens/ and pretrain/."""
    foreign = tmp_path / "mine"
    for name in ("notes.txt", "tokens/keep.csv", "pretrain/keep.csv"):
        (foreign / name).parent.mkdir(parents=True, exist_ok=True)
        (foreign / name).write_text("precious")
    return foreign


def test_finetune_into_a_foreign_directory_exits_2_and_keeps_its_files(
    finished_run, foreign_dir, capsys
):
    _, run = finished_run
    before = _tree(foreign_dir)
    argv = ["finetune", "--tokens", str(run / "tokens"), "--encoder", str(run / "pretrain"),
            "--out", str(foreign_dir), "--mode", "linear-probe"]  # fmt: skip
    assert main(argv) == 2
    assert "mine: exists and is not empty and not an ehr-ssl output" in _error_line(capsys)
    assert _tree(foreign_dir) == before


def test_run_into_a_foreign_directory_exits_2_and_keeps_its_files(tmp_path, foreign_dir, capsys):
    data = write_tables(tmp_path / "data", make_tables())
    before = _tree(foreign_dir)
    assert main(["run", "--data", str(data), "--out", str(foreign_dir), "--preset", "tiny"]) == 2
    assert "not an ehr-ssl output, not a run directory" in _error_line(capsys)
    with pytest.raises(InputError, match="not a run directory"):  # the Python API alike
        ehr_ssl.run(data, foreign_dir, preset="tiny")
    assert _tree(foreign_dir) == before


def test_no_command_writes_at_inside_or_above_its_input(finished_run, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(finished_run[0], data)
    bundle = finished_run[1] / "bundle"
    before = _tree(data)
    cases = [
        (["predict", "--model", str(bundle), "--data", str(data), "--out",
          str(data / "visits.parquet")], "--out lies inside the input --data"),
        (["embed", "--model", str(bundle), "--data", str(data), "--out",
          str(bundle / "x.parquet")], "--out lies inside the input --model"),
        (["tokenize", str(data), "--out", str(data / "events")], "lies inside the input DATA"),
        (["run", "--data", str(data), "--out", str(data / "run")], "lies inside the input --data"),
        (["run", "--data", str(data), "--out", str(tmp_path)], "--out contains the input --data"),
        (["bundle", str(finished_run[1]), "--out", str(finished_run[1] / "b")], "input RUN"),
        (["retrain", "--data", str(data), "--registry", str(data / "reg")], "--registry lies"),
    ]  # fmt: skip
    for argv, expected in cases:
        assert main(["-q", *argv]) == 2, argv
        assert expected in _error_line(capsys), argv
    assert _tree(data) == before
    assert not (finished_run[1] / "b").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--data", "DATA", "--out", "FILE"],
        ["tokenize", "DATA", "--out", "FILE"],
        ["pretrain", "--tokens", "DATA", "--out", "FILE"],
        ["finetune", "--tokens", "DATA", "--encoder", "DATA", "--out", "FILE"],
        ["bundle", "DATA", "--out", "FILE", "--overwrite"],
        ["synth", "FILE", "--overwrite"],
        ["demo", "--out", "FILE"],
    ],
)
def test_an_output_directory_that_is_a_file_fails_at_once(tmp_path, capsys, argv):
    """Before anything else is read: DATA is not even there."""
    file = tmp_path / "out.txt"
    file.write_text("mine")
    argv = [str(file) if a == "FILE" else str(tmp_path / "missing") if a == "DATA" else a
            for a in argv]  # fmt: skip
    assert main(argv) == 2
    assert f"{file}: exists and is not a directory" in _error_line(capsys)
    assert file.read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_a_second_run_into_the_same_directory_fails_at_once(tmp_path, capsys):
    data = write_tables(tmp_path / "data", make_tables())
    run = tmp_path / "run"
    with output_lock(run):  # the first run, writing
        assert main(["run", "--data", str(data), "--out", str(run), "--preset", "tiny"]) == 2
    assert f"{run}: another ehr-ssl process (pid {os.getpid()}" in _error_line(capsys)
    assert not run.exists()


def test_pretrain_and_finetune_lock_their_outputs(tmp_path):
    from ehr_ssl.config import FinetuneConfig, load_pretrain_config
    from ehr_ssl.training.finetune import finetune
    from ehr_ssl.training.pretrain import pretrain

    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(OutputLocked):
            pretrain(tmp_path / "tokens", out, load_pretrain_config(None, {"preset": "tiny"}))
        with pytest.raises(OutputLocked):
            finetune(tmp_path / "tokens", tmp_path / "encoder", out, FinetuneConfig())


def test_a_rerun_removes_what_a_killed_tokenize_left(tmp_path):
    data = write_tables(tmp_path / "data", make_tables())
    dead = _dead_pid()
    for name in (
        f".tokens.tmp-{dead}-a1",
        f".tokens.work-{dead}-b2",
        f".tokens.old-{dead}",
        ".tokens.tmp-k2j3h4q1",
    ):  # fmt: skip  (the last, an earlier version's)
        (tmp_path / name / "train").mkdir(parents=True)
        (tmp_path / name / "train" / "part-00000.arrow").write_text("ids")
    assert main(["-q", "tokenize", str(data), "--out", str(tmp_path / "tokens")]) == 0
    assert sorted(os.listdir(tmp_path)) == ["data", "tokens"]


def test_a_rerun_removes_what_a_killed_predict_left(finished_run, tmp_path):
    data, run = finished_run
    dead, out = _dead_pid(), tmp_path / "scores.parquet"
    for name in (f".scores.parquet.chunks-{dead}-x9", ".scores.parquet.chunks-q8w7e6r5"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "chunk-00000.parquet").write_text("events with patient ids")
    (tmp_path / f".scores.parquet.tmp-{dead}-y7").write_text("part of the scores")
    argv = ["-q", "predict", "--model", str(run / "bundle"), "--data", str(data), "--out", str(out)]
    assert main(argv) == 0
    assert os.listdir(tmp_path) == ["scores.parquet"]


def _full_disk(monkeypatch, target: str) -> None:
    """Writes through pyarrow to a path holding `target` fail as a full disk does (pyarrow's
    error: an OSError without errno or path)."""
    write_table = pq.ParquetWriter.write_table

    def full(self, table, *args, **kwargs):
        if target in str(self.where):
            raise OSError("IOError: No space left on device")
        return write_table(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)


@pytest.mark.parametrize("where", ["tokens", "work"])
def test_a_full_disk_during_tokenize_names_the_output(tmp_path, monkeypatch, capsys, where):
    data = write_tables(tmp_path / "data", make_tables())
    out = tmp_path / "tokens"
    if where == "tokens":  # writing a shard: named by its place in the output
        monkeypatch.setattr(pa.ipc, "new_file", lambda *a, **k: _raise_full())
        argv, named = ["tokenize", str(data), "--out", str(out)], out / "train/part-00000.arrow"
    else:  # writing the streamed tokenization's chunk files, scratch work for the output
        _full_disk(monkeypatch, ".tokens.work-")
        argv, named = ["tokenize", str(data), "--out", str(out), "--chunk-visits", "20"], out
    assert main(argv) == 2
    assert _error_line(capsys) == f"ehr-ssl: error: {named}: No space left on device"
    assert sorted(os.listdir(tmp_path)) == ["data"]


def _raise_full():
    raise OSError("IOError: [Errno 28] No space left on device")


@pytest.mark.parametrize("where", [".scores.parquet.chunks-", ".scores.parquet.tmp-"])
def test_a_full_disk_during_predict_names_the_output(
    finished_run, tmp_path, monkeypatch, capsys, where
):
    data, run = finished_run
    out = tmp_path / "scores.parquet"
    _full_disk(monkeypatch, where)
    argv = ["predict", "--model", str(run / "bundle"), "--data", str(data), "--out", str(out)]
    assert main(["-q", *argv]) == 2
    assert _error_line(capsys) == f"ehr-ssl: error: {out}: No space left on device"
    assert os.listdir(tmp_path) == []
    assert pl.read_parquet(data / "visits.parquet").height > 0
