"""Typed configs: checks with clear errors, TOML loading, command-line overrides."""

import re

import pytest

from ehr_ssl.config import (
    DataConfig,
    SplitConfig,
    TokenizeConfig,
    TokenizerConfig,
)
from ehr_ssl.errors import InputError
from ehr_ssl.settings import from_dict, load_config, to_dict


def test_defaults_round_trip_through_dict():
    config = TokenizeConfig()
    assert load_config(TokenizeConfig, None, {}) == config
    assert from_dict(TokenizeConfig, to_dict(config)) == config


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: SplitConfig(val_fraction=0.6, test_fraction=0.4), "must leave patients"),
        (lambda: SplitConfig(test_fraction=-0.1), "must be in [0, 1)"),
        (lambda: SplitConfig(seed=-1), "non-negative"),
        (lambda: TokenizerConfig(min_count=0), "must be >= 1"),
        (lambda: TokenizerConfig(n_bins=0), "must be in [1, 100]"),
        (lambda: TokenizerConfig(lookback_days=-1), "must be a number in [0, 36500], got -1"),
        (lambda: TokenizerConfig(lookback_days=float("nan")), "got nan"),
        (lambda: DataConfig(prediction_offset_minutes=float("inf")), "got inf"),
        (lambda: TokenizeConfig(chunk_visits=0), "column 'chunk_visits': must be >= 1, got 0"),
        (lambda: TokenizeConfig(shard_visits=0), "column 'shard_visits': must be >= 1, got 0"),
    ],
)
def test_invalid_values_raise_clear_errors(make, message):
    with pytest.raises(InputError, match=re.escape(message)):
        make()


def test_toml_types_are_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[tokenizer]\nmax_length = "long"\n')
    with pytest.raises(InputError, match="'max_length' must be int, got str"):
        load_config(TokenizeConfig, path, {})
    path.write_text("[tokenizer\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(TokenizeConfig, path, {})
    path.write_text("[data]\nstatic_columns = ['age']\nprediction_offset_minutes = 30\n")
    config = load_config(TokenizeConfig, path, {"tokenizer.n_bins": 5, "split.seed": None})
    assert config.data.static_columns == ["age"]
    assert config.data.prediction_offset_minutes == 30.0
    assert config.tokenizer.n_bins == 5
    with pytest.raises(InputError, match="file not found"):
        load_config(TokenizeConfig, tmp_path / "missing.toml", {})
