"""The `ehr-ssl` command: the synth -> validate -> tokenize chain, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import polars as pl
import pytest

from ehr_ssl.cli import build_parser, main
from ehr_ssl.tokens.shards import read_manifest, read_split
from tests.conftest import make_tables, write_tables


def test_chain_on_a_small_synthetic_cohort(tmp_path, capsys):
    data, tokens = tmp_path / "data", tmp_path / "tokens"
    assert main(["synth", str(data), "--visits", "1500", "--seed", "3", "--shards", "2"]) == 0
    assert len(list((data / "events").glob("*.parquet"))) == 2
    assert main(["validate", str(data), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["visits"] == 1500
    assert summary["labeled_visits"] == round(1500 * 0.05)
    assert main(["tokenize", str(data), "--out", str(tokens), "--max-length", "64"]) == 0
    printed = capsys.readouterr().out
    assert "tokenized cohort" in printed and "train" in printed
    manifest = read_manifest(tokens)
    assert sum(s["visits"] for s in manifest["splits"].values()) == 1500
    splits = {name: read_split(tokens, name) for name in ("train", "val", "test")}
    patients = [set(frame["patient_id"].to_list()) for frame in splits.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert max(frame["length"].max() or 0 for frame in splits.values()) <= 64
    config = json.loads((tokens / "config.json").read_text())
    assert config["tokenizer"]["max_length"] == 64


def test_bad_input_exit_2_one_line_no_output(tmp_path):
    tables = make_tables()
    tables["visits"] = tables["visits"].drop("patient_id")
    data = write_tables(tmp_path / "data", tables)
    out = tmp_path / "tokens"
    result = subprocess.run(
        [sys.executable, "-m", "ehr_ssl.cli", "tokenize", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert errors == [
        f"ehr-ssl: error: {data}/visits.parquet: column 'patient_id': missing (columns present: "
        "visit_id, arrival_time, prediction_time, age, sex)"
    ]
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_existing_output_and_bad_config(tmp_path, capsys):
    data = write_tables(tmp_path / "data", make_tables())
    (tmp_path / "tokens").mkdir()  # an empty directory is used
    assert main(["-q", "tokenize", str(data), "--out", str(tmp_path / "tokens")]) == 0
    assert main(["tokenize", str(data), "--out", str(tmp_path / "tokens")]) == 2
    assert "already exists (use --overwrite)" in capsys.readouterr().err
    config = tmp_path / "run.toml"
    config.write_text("[tokenizer]\nmax_lenght = 10\n")
    assert (
        main(["tokenize", str(data), "--out", str(tmp_path / "t2"), "--config", str(config)]) == 2
    )
    assert "unknown key 'max_lenght' (did you mean 'max_length'?)" in capsys.readouterr().err
    assert not (tmp_path / "t2").exists()


def test_config_file_and_flags_resolve_in_order(tmp_path):
    data = write_tables(tmp_path / "data", make_tables())
    config = tmp_path / "run.toml"
    config.write_text("[tokenizer]\nmax_length = 40\nn_bins = 4\n[split]\nseed = 5\n")
    out = tmp_path / "tokens"
    args = ["tokenize", str(data), "--out", str(out), "--config", str(config), "--n-bins", "3"]
    assert main(args) == 0
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["tokenizer"]["max_length"] == 40  # from the file
    assert resolved["tokenizer"]["n_bins"] == 3  # the flag wins
    assert resolved["split"]["seed"] == 5


def test_chunk_visits_from_the_file_or_the_flag(tmp_path):
    data = write_tables(tmp_path / "data", make_tables())
    config = tmp_path / "run.toml"
    config.write_text("chunk_visits = 30\n")
    for out, flags, expected in (("a", [], 30), ("b", ["--chunk-visits", "20"], 20)):
        argv = ["-q", "tokenize", str(data), "--out", str(tmp_path / out), "--config", str(config)]
        assert main(argv + flags) == 0
        assert json.loads((tmp_path / out / "config.json").read_text())["chunk_visits"] == expected
    splits = ("train", "val", "test")
    tokens = [
        pl.concat(read_split(tmp_path / out, s) for s in splits).sort("visit_id")
        for out in ("a", "b")
    ]
    assert tokens[0].equals(tokens[1])


@pytest.mark.parametrize(
    "command", [None, "synth", "validate", "tokenize", "pretrain", "finetune", "run", "evaluate",
                "bundle", "predict", "embed", "retrain", "registry", "demo"]
)  # fmt: skip
def test_help_explains_every_option(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = build_parser()
    if command is not None:
        parser = parser._subparsers._group_actions[0].choices[command]
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command}: {action.option_strings} has no help"
            assert action.option_strings[-1] in text
    assert "(default" not in text  # defaults are shown once, in brackets, from the settings


def test_validate_reports_oddities(tmp_path, capsys):
    tables = make_tables()
    orphan = pl.DataFrame(
        {
            "patient_id": [999],
            "time": tables["events"]["time"][:1],
            "code": ["DX//X"],
            "numeric_value": [None],
        },
        schema=tables["events"].schema,
    )
    tables["events"] = pl.concat([tables["events"], orphan, tables["events"].head(2)])
    data = write_tables(tmp_path / "data", tables)
    assert main(["validate", str(data), "--json"]) == 0
    oddities = json.loads(capsys.readouterr().out)["oddities"]
    assert oddities["events_of_patients_without_visits"] == 1
    assert oddities["duplicate_event_rows"] == 2
    assert oddities["visits_without_events"] == 0


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["synth", "OUT", "--visits", "0"], "argument --visits: must be >= 1, got 0"),
        (["synth", "OUT", "--labeled-frac", "1.5"], "must be in [0, 1], got 1.5"),
        (["tokenize", "DATA"], "the following arguments are required: --out"),
        (["validate", "DATA", "--lookback-days", "x"], "invalid float value: 'x'"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, argv, expected):
    argv = [str(tmp_path / a) if a in ("OUT", "DATA") else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "--help" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["validate", "tokenize"])
def test_every_data_command_rejects_bad_input_with_one_line(tmp_path, capsys, command):
    tables = make_tables()
    tables["events"] = tables["events"].with_columns(pl.col("time").cast(pl.String))
    data = write_tables(tmp_path / "data", tables)
    argv = [command, str(data)] + (
        ["--out", str(tmp_path / "out")] if command == "tokenize" else []
    )
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"ehr-ssl: error: {data}/events.parquet: column 'time': expected a timestamp, found String"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_environment_problems_are_one_line_exit_2(tmp_path, capsys):
    data = write_tables(tmp_path / "data", make_tables())
    (tmp_path / "file").write_text("x")
    cases = [
        (["tokenize", str(data), "--out", str(tmp_path / "file" / "sub")], "file: File exists"),
        (["tokenize", str(data), "--out", str(data), "--overwrite"], "--out is the input DATA"),
        (
            ["tokenize", str(data), "--out", str(tmp_path / "t"), "--config", str(tmp_path)],
            "is a directory, expected a TOML file",
        ),
        (["validate", str(data), "--lookback-days", "nan"], "got nan"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (argv, err)
    assert (data / "visits.parquet").exists()


def test_data_commands_never_import_torch():
    """validate/tokenize start in a fraction of a second: torch and transformers stay unloaded
    (import ehr_ssl registers the encoder only once transformers is imported)."""
    code = (
        "import sys, ehr_ssl, ehr_ssl.cli, ehr_ssl.tokens.tokenizer, ehr_ssl.data.synthetic, "
        "ehr_ssl.data.summary; print(sorted(m for m in ('torch', 'transformers') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]"


def test_demo_runs_every_stage(tmp_path, capsys):
    argv = [
        "-q",
        "demo",
        "--out",
        str(tmp_path),
        "--visits",
        "4000",
        "--epochs",
        "1",
        "--label-budgets",
        "100",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for model in ("ssl", "ssl_linear_probe", "scratch", "counts_logistic", "counts_gbm"):
        assert f"\n{model} " in out  # a row of the report table
    for name in ("report.json", "report.md", "predictions.parquet", "label_efficiency.png"):
        assert (tmp_path / "run" / name).exists()


def test_demo_defaults_yield_to_its_config_file_and_flags_beat_both(tmp_path):
    from ehr_ssl.cli.run import DEMO_LABEL_BUDGETS, _demo_settings
    from ehr_ssl.pipeline import load_checked_config

    path = tmp_path / "demo.toml"
    path.write_text('preset = "tiny"\n[train]\nepochs = 1\n[evaluate]\nlabel_budgets = ["50"]\n')

    def resolved(**flags):
        args = argparse.Namespace(
            **({"config": path, "epochs": None, "label_budgets": None} | flags)
        )
        config = load_checked_config(args.config, _demo_settings(args))
        return config.preset, config.train.epochs, config.evaluate.label_budgets

    assert resolved() == ("tiny", 1, ["50"])  # the file, not the demo's small / 3 / 100,300
    assert resolved(epochs=2, label_budgets="70,90") == ("tiny", 2, ["70", "90"])
    assert resolved(config=None) == ("small", 3, DEMO_LABEL_BUDGETS)
