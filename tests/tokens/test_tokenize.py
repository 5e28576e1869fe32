"""The tokenize stage's split sanity: each split's labels must hold both classes before a run
trains, and the message names the setting that sizes the split."""

from __future__ import annotations

import logging

import polars as pl
import pytest

from ehr_ssl.config import TokenizeConfig
from ehr_ssl.errors import InputError
from ehr_ssl.tokens.tokenize import SPLIT_SETTINGS, check_split_classes, tokenize_dataset
from tests.conftest import make_tables, write_tables

IDS = pl.Series("visit_id", range(8))
SPLIT = pl.Series("split", ["train"] * 4 + ["val"] * 2 + ["test"] * 2)


def _labels(values: dict[int, bool]) -> pl.DataFrame:
    return pl.DataFrame({"visit_id": list(values), "label": list(values.values())})


def test_both_classes_in_every_split_pass():
    labels = _labels({0: True, 1: False, 4: True, 5: False, 6: False, 7: True, 99: True})
    check_split_classes(IDS, SPLIT, labels, settings=SPLIT_SETTINGS, required=True)


@pytest.mark.parametrize(
    "values,message",
    [
        ({0: True, 1: False, 4: True, 5: True, 6: False, 7: True},
         "the val split has 2 labeled visits, all positive: every split needs both classes "
         "among its labels before training; change split.val_fraction (--val-fraction)"),
        ({0: True, 1: False, 4: True, 5: False},
         "the test split has no labeled visits"),
        ({0: False, 1: False, 4: True, 5: False, 6: False, 7: True},
         "the train split has 2 labeled visits, all negative"),
    ],
)  # fmt: skip
def test_a_split_missing_a_class_is_named_with_its_setting(values, message, caplog):
    with pytest.raises(InputError, match="labels.parquet: column 'label'") as raised:
        check_split_classes(IDS, SPLIT, _labels(values), settings=SPLIT_SETTINGS, required=True)
    assert message in str(raised.value)
    with caplog.at_level(logging.WARNING, logger="ehr_ssl"):  # tokenize alone: a warning
        check_split_classes(IDS, SPLIT, _labels(values), settings=SPLIT_SETTINGS, required=False)
    assert message in caplog.text


def test_a_run_stops_at_tokenize_and_writes_nothing(tmp_path):
    tables = make_tables()
    tables["labels"] = tables["labels"].with_columns(label=pl.lit(False))
    data = write_tables(tmp_path / "data", tables)
    with pytest.raises(InputError, match="the train split has .* all negative"):
        tokenize_dataset(data, tmp_path / "tokens", TokenizeConfig(), require_classes=True)
    assert not (tmp_path / "tokens").exists() or not any((tmp_path / "tokens").iterdir())
    tokenize_dataset(data, tmp_path / "tokens2", TokenizeConfig())  # tokenize alone goes on
    # the data's own split: that is what to change, not the split settings
    tables["visits"] = tables["visits"].with_columns(split=pl.lit("train"))
    own = write_tables(tmp_path / "own", tables)
    with pytest.raises(InputError, match="change the data's own split") as raised:
        tokenize_dataset(own, tmp_path / "tokens3", TokenizeConfig(), require_classes=True)
    assert "val_fraction" not in str(raised.value)
