"""Flags derived from the settings: help from the field docstrings, one resolution order
(defaults, preset, file, flags and --set), and every setting documented where it is declared."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from ehr_ssl.cli import build_parser, main
from ehr_ssl.cli.options import overrides
from ehr_ssl.config import PipelineConfig, load_pipeline_config
from ehr_ssl.errors import InputError
from ehr_ssl.settings import field_docs, parse_assignment
from tests.conftest import make_tables, write_tables


def _settings_classes(cls: type) -> set[type]:
    """`cls` and every settings table nested in it."""
    hints = typing.get_type_hints(cls)
    nested = [hints[f.name] for f in dataclasses.fields(cls)]
    return {cls}.union(*(_settings_classes(h) for h in nested if dataclasses.is_dataclass(h)))


def test_every_setting_has_a_docstring():
    """Help text comes from the declaration, so an undocumented setting is a help-less flag."""
    for cls in _settings_classes(PipelineConfig):
        docs = field_docs(cls)
        for field in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(typing.get_type_hints(cls)[field.name]):
                assert docs.get(field.name), f"{cls.__name__}.{field.name} has no docstring"


def test_help_comes_from_the_field_docstring_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Peak learning rate, reached after warmup. [preset: small 0.001, base 0.0003" in text
    assert "(default: None)" not in text


@pytest.mark.parametrize(
    "text,expected",
    [
        ("train.learning_rate=3e-4", ("train.learning_rate", 3e-4)),
        ("model.pooling=cls", ("model.pooling", "cls")),  # not TOML: a plain string
        ('model.pooling="cls"', ("model.pooling", "cls")),
        ("evaluate.seeds=[0, 1]", ("evaluate.seeds", [0, 1])),
        ("train.compile=true", ("train.compile", True)),
    ],
)
def test_set_reads_toml_values(text, expected):
    assert parse_assignment(text) == expected


def test_set_and_flags_override_the_file_in_order(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('preset = "tiny"\n[train]\nepochs = 5\nlearning_rate = 0.01\n')
    argv = ["run", "--data", "D", "--out", "O", "--config", str(config), "--epochs", "2",
            "--set", "train.learning_rate=0.02", "--set", "model.hidden_size=48"]  # fmt: skip
    args = build_parser().parse_args(argv)
    resolved = load_pipeline_config(args.config, overrides(args))
    assert resolved.train.epochs == 2  # the flag wins over the file
    assert resolved.train.learning_rate == 0.02  # --set wins over the file
    assert resolved.model["hidden_size"] == 48  # and reaches settings without a flag
    assert resolved.model["num_hidden_layers"] == 2  # the preset's, untouched


def test_set_rejects_unknown_keys_with_one_line(tmp_path, capsys):
    data = write_tables(tmp_path / "data", make_tables())
    argv = ["tokenize", str(data), "--out", str(tmp_path / "t"), "--set", "tokenizer.max_lenght=9"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'max_lenght' (did you mean 'max_length'?)" in err[0]
    assert not (tmp_path / "t").exists()
    assert main(["tokenize", str(data), "--out", str(tmp_path / "t"), "--set", "nonsense"]) == 2
    assert "expected section.key=value" in capsys.readouterr().err


def test_set_reaches_a_setting_without_a_flag(tmp_path):
    data = write_tables(tmp_path / "data", make_tables())
    out = tmp_path / "tokens"
    argv = ["-q", "tokenize", str(data), "--out", str(out)]
    assert main([*argv, "--set", "data.prediction_offset_minutes=30"]) == 0
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["data"]["prediction_offset_minutes"] == 30.0


def test_list_flags_split_on_commas():
    args = build_parser().parse_args(["validate", "D", "--static-columns", "age,sex"])
    assert overrides(args) == {"data.static_columns": ["age", "sex"]}
    args = build_parser().parse_args(["run", "--data", "D", "--out", "O", "--seeds", "0,1,2"])
    assert overrides(args) == {"evaluate.seeds": [0, 1, 2]}


def test_set_of_a_budget_number_and_into_a_value(tmp_path):
    args = build_parser().parse_args(["run", "--data", "D", "--out", "O",
                                      "--set", "evaluate.label_budget=1000"])  # fmt: skip
    assert load_pipeline_config(None, overrides(args)).evaluate.label_budget == "1000"
    args = build_parser().parse_args(["run", "--data", "D", "--out", "O",
                                      "--set", "train.epochs.x=1"])  # fmt: skip
    with pytest.raises(InputError, match="'epochs' is a value, not a table"):
        load_pipeline_config(None, {"train.epochs": 2, **overrides(args)})
