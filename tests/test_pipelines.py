"""Every config under pipelines/ loads and validates, so a shipped config cannot rot."""

from pathlib import Path

import pytest

from ehr_ssl.config import PRESETS, TokenizeConfig, load_pipeline_config

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.toml")), ids=lambda p: p.name)
def test_pipeline_config_loads(path):
    config = load_pipeline_config(path, {})
    assert config.tokenizer.max_length > 0
    assert "ssl" in config.evaluate.models


def test_hospital_config_spells_out_the_defaults():
    config = load_pipeline_config(PIPELINES / "hospital.toml", {})
    assert config.tokenize_config() == TokenizeConfig()
    assert config.preset == "base"
    for key, value in PRESETS["base"]["model"].items():
        assert config.model[key] == value


def test_demo_config_is_what_the_demo_runs():
    config = load_pipeline_config(PIPELINES / "demo.toml", {})
    assert config.preset == "small" and config.train.epochs == 3
    assert config.evaluate.budgets == ["all", "100", "300"]
