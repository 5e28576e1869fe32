"""Every config under pipelines/ loads and validates, so a shipped config cannot rot."""

from pathlib import Path

import pytest

from ehr_ssl.config import TokenizeConfig, load_config

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.toml")), ids=lambda p: p.name)
def test_pipeline_config_loads(path):
    config = load_config(TokenizeConfig, path, {})
    assert config.tokenizer.max_length > 0


def test_hospital_config_spells_out_the_defaults():
    assert load_config(TokenizeConfig, PIPELINES / "hospital.toml", {}) == TokenizeConfig()
