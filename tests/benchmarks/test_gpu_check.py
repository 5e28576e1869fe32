"""The prepared GPU check cannot rot: its dry run on CPU takes the same steps at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def test_the_gpu_check_dry_run_takes_every_step_on_cpu(tmp_path):
    env = os.environ | {"PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--dry-run", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    check = report["correctness"]
    assert check["passed"] and check["precision"] == "bf16"
    assert check["resume_bitwise"] and check["weights_fp32"] and check["losses_finite"]
    rows = report["throughput"]
    assert [(r["batch_size"], r["compile"], r["status"]) for r in rows] == [
        (16, False, "ok"),
        (64, False, "ok"),
        (64, True, "ok"),
    ]
    assert all(r["tokens_per_s"] > 0 and 0 <= r["encoder_padding_fraction"] < 1 for r in rows)
    epoch = report["epoch_8m"]
    best = max(r["tokens_per_s"] for r in rows)
    expected_hours = 8_000_000 * report["data"]["mean_tokens_per_visit"] / best / 3600
    assert abs(epoch["hours"] - expected_hours) < 0.01
    assert "PASSED" in done.stdout and "| batch_size |" in done.stdout


def test_a_missing_package_without_wheels_exits_2_with_one_line(tmp_path):
    # A Python that finds no polars: the venv's interpreter with site-packages hidden.
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    fake.chmod(0o755)
    env = os.environ | {"PYTHON": str(fake), "GPU_CHECK_WHEELS": str(tmp_path / "none")}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "missing Python packages (polars" in done.stderr and "no wheels in" in done.stderr
