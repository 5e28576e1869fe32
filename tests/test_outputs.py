"""Where ehr-ssl may write: output markers, outputs outside the inputs, the output lock, and the
removal of what killed writers left."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ehr_ssl.atomic import make_temporary_dir
from ehr_ssl.errors import InputError
from ehr_ssl.layout import OUTPUT_MARKER_FILE
from ehr_ssl.outputs import (
    OutputLocked,
    check_output_dir,
    check_outside_inputs,
    mark_output_dir,
    output_kind,
    output_lock,
    write_marker,
)


def dead_pid() -> int:
    """The id of a process that has ended (a killed writer's)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_directory_is_reused_only_when_it_is_ours_and_of_the_same_kind(tmp_path):
    check_output_dir(tmp_path / "absent", "run")
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "run")
    mark_output_dir(tmp_path / "run", "run")
    check_output_dir(tmp_path / "run", "run")
    with pytest.raises(InputError, match="is an ehr-ssl run directory .*, not a fine-tuning"):
        check_output_dir(tmp_path / "run", "finetune")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and not an ehr-ssl output"):
        check_output_dir(foreign, "finetune")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="file: exists and is not a directory"):
        check_output_dir(tmp_path / "file", "run")
    (foreign / OUTPUT_MARKER_FILE).write_text("{not json")
    with pytest.raises(InputError, match="marker is not valid JSON"):
        check_output_dir(foreign, "run")


@pytest.mark.parametrize(
    ("kind", "files"),
    [
        ("run", ["run_config.json", "stages.json", "tokens/manifest.json"]),
        ("pretrain", ["run_config.json", "checkpoints/step-00000005/state.pt"]),
        ("finetune", ["finetune_summary.json", "model/config.json"]),
        ("tokens", ["manifest.json", "tokenizer.json"]),
        ("bundle", ["bundle.json", "head.safetensors"]),
        ("dataset", ["visits.parquet", "oracle.parquet", "events.parquet"]),
    ],
)
def test_outputs_of_earlier_versions_are_known_by_their_files(tmp_path, kind, files):
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    assert output_kind(tmp_path) == kind
    check_output_dir(tmp_path, kind)
    if kind != "bundle":
        mark_output_dir(tmp_path, kind)  # reused: it gains its marker
        marker = json.loads((tmp_path / OUTPUT_MARKER_FILE).read_text())
        assert marker["format"] == "ehr-ssl-output" and marker["kind"] == kind


def test_the_marker_wins_over_the_files(tmp_path):
    (tmp_path / "finetune_summary.json").write_text("{}")
    write_marker(tmp_path, "tokens")
    assert output_kind(tmp_path) == "tokens"


def test_outputs_at_inside_or_above_an_input_are_refused(tmp_path):
    data = tmp_path / "data"
    (data / "events").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    cases = [
        (data, "--out is the input --data"),
        (data / "visits.parquet", "--out lies inside the input --data"),
        (tmp_path / "link" / "x", "--out lies inside the input --data"),  # symlinks followed
        (tmp_path, "--out contains the input --data"),
    ]
    for out, expected in cases:
        with pytest.raises(InputError, match=expected):
            check_outside_inputs(out, {"--data": data, "--model": None})
    check_outside_inputs(tmp_path / "scores.parquet", {"--data": data})
    check_outside_inputs(tmp_path / "data2", {"--data": data})  # a common prefix is no parent


def test_a_second_writer_is_refused_at_once_and_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "runs" / "r1"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ehr_ssl.outputs import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        expected = f"pid {holder.pid} .*is writing this output"
        with pytest.raises(OutputLocked, match=expected), output_lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # a killed holder's lock is free
        pass
    assert os.listdir(tmp_path / "runs") == []  # the lock file is removed on release


def test_a_lock_in_this_process_refuses_a_second_one_too(tmp_path):
    with output_lock(tmp_path / "out"), pytest.raises(OutputLocked), output_lock(tmp_path / "out"):
        pass
    with output_lock(tmp_path / "out", enabled=False):  # a torchrun rank other than 0
        assert os.listdir(tmp_path) == []


def test_a_failed_block_leaves_no_directory_made_for_the_lock(tmp_path):
    with pytest.raises(RuntimeError), output_lock(tmp_path / "a" / "b" / "out"):
        raise RuntimeError("bad input")
    assert os.listdir(tmp_path) == []


def test_the_lock_removes_what_killed_writers_left(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    stale = [
        f".out.tmp-{dead}-k2j3",
        f".out.chunks-{dead}-x9",
        f".out.old-{dead}",
        f".out.work-{dead}-a1",
        ".out.tmp-k2j3h4q1",
        f".out.tmp-{os.getpid()}-same",
    ]  # fmt: skip  (no pid; this process's id, which did not make it: a killed namesake's)
    kept = [f".out.tmp-{alive}-live", f".other.tmp-{dead}-q", "out.tmp-1-notours", "out"]
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "chunk-00000.parquet").write_text("ids")
    inside = [f".stages.json.tmp-{dead}-z", f".bundle.tmp-{dead}-y"]
    for name in inside:
        (tmp_path / "out" / name).write_text("x")
    ours = make_temporary_dir(tmp_path / "out", "work")  # this process's: kept
    kept.append(ours.name)
    with output_lock(tmp_path / "out"):
        assert sorted(os.listdir(tmp_path)) == sorted(kept + [".out.lock"])
        assert sorted(os.listdir(tmp_path / "out")) == sorted(["chunk-00000.parquet", *inside])
    with output_lock(tmp_path / "out", clean_inside=True):  # a directory written in place
        assert os.listdir(tmp_path / "out") == ["chunk-00000.parquet"]
