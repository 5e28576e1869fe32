"""MEDS in: a MEDS root read as it is makes the tokens and labels of its contract form, its
static rows, birth events and splits become visit columns, and bad MEDS input stops with one
line naming the user's file (never the temporary contract copy)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from ehr_ssl.cli import main
from ehr_ssl.config import MedsConfig, TokenizeConfig
from ehr_ssl.data.meds_input import contract_data, is_meds_root, static_columns
from ehr_ssl.data.parquet import write_parquet
from ehr_ssl.data.synthetic import generate_cohort, write_cohort, write_meds_cohort
from ehr_ssl.data.synthetic.writer import MEDS_LABELS_FILE, MEDS_VISITS_FILE
from ehr_ssl.errors import InputError
from ehr_ssl.tokens.hierarchy import read_parent_codes
from ehr_ssl.tokens.shards import read_split
from ehr_ssl.tokens.tokenize import tokenize_dataset

T0 = datetime(2023, 5, 1, 12, 0)


@pytest.fixture(scope="module")
def cohort():
    return generate_cohort(600, labeled_frac=0.4, seed=7)


def _tokens(directory: Path) -> pl.DataFrame:
    frames = [
        read_split(directory, s).with_columns(split=pl.lit(s)) for s in ("train", "val", "test")
    ]
    return pl.concat(frames).select("visit_id", "input_ids", "split", "labeled", "label")


def _meds_config(root: Path, arrival_code: str | None) -> TokenizeConfig:
    meds = MedsConfig(labels=str(root / MEDS_LABELS_FILE), arrival_code=arrival_code,
                      prediction_times=str(root / MEDS_VISITS_FILE))  # fmt: skip
    return TokenizeConfig(meds=meds)


@pytest.mark.parametrize("arrival_code", ["ENC//ED", None])
def test_a_meds_root_makes_the_tokens_and_labels_of_its_contract_form(
    cohort, tmp_path, arrival_code
):
    # MEDS stores values as float32: the contract form gets the same values.
    as_stored = pl.col("numeric_value").cast(pl.Float32).cast(pl.Float64)
    contract = cohort.__class__(
        **{**cohort.__dict__, "events": cohort.events.with_columns(as_stored)}
    )
    write_cohort(contract, tmp_path / "contract")
    write_meds_cohort(cohort, tmp_path / "meds", shards=2)
    assert is_meds_root(tmp_path / "meds") and not is_meds_root(tmp_path / "contract")
    tokenize_dataset(tmp_path / "contract", tmp_path / "t_contract", TokenizeConfig())
    config = _meds_config(tmp_path / "meds", arrival_code)
    with contract_data(tmp_path / "meds", config) as (data_dir, config.data):
        tokenize_dataset(data_dir, tmp_path / "t_meds", config)
    # tokens, splits and labels alike; visit ids differ (MEDS has none: the points' order),
    # so a visit is its patient and time
    keys = cohort.visits.select("visit_id", "patient_id", "prediction_time")
    ours = _tokens(tmp_path / "t_contract").join(keys, on="visit_id").drop("visit_id")
    meds_keys = pl.read_parquet(tmp_path / "meds" / MEDS_VISITS_FILE).sort(
        "subject_id", "prediction_time"
    )
    meds_keys = meds_keys.with_row_index("visit_id").select(
        pl.col("visit_id").cast(pl.Int64),
        patient_id="subject_id",
        prediction_time="prediction_time",
    )
    theirs = _tokens(tmp_path / "t_meds").join(meds_keys, on="visit_id").drop("visit_id")
    on = ["patient_id", "prediction_time"]
    assert ours.sort(on).equals(theirs.sort(on))
    assert ours.height == cohort.visits.height
    assert ours["labeled"].sum() == cohort.labels.height
    # the cohort's code hierarchy (a diagnosis's category) reaches the tokens directory
    parents = read_parent_codes(tmp_path / "t_meds")
    dotted = [code for code in parents if "." in code]
    assert dotted and all(parents[code] == [code.split(".")[0]] for code in dotted)
    assert all(parents[code] == [] for code in parents if "." not in code)


def _meds_root(root: Path, rows: list[tuple], points: list[tuple], splits=None) -> Path:
    """A hand-made MEDS root: data rows (subject_id, time, code, numeric_value), a label file
    of points (subject_id, prediction_time, boolean_value) and optional subject splits."""
    (root / "data" / "train").mkdir(parents=True)
    schema = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String,
              "numeric_value": pl.Float32}  # fmt: skip
    write_parquet(pl.DataFrame(rows, schema=schema, orient="row"), root / "data/train/0.parquet")
    point_schema = {"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"),
                    "boolean_value": pl.Boolean}  # fmt: skip
    write_parquet(pl.DataFrame(points, schema=point_schema, orient="row"), root / "labels.parquet")
    if splits is not None:
        (root / "metadata").mkdir()
        frame = pl.DataFrame(splits, schema=["subject_id", "split"], orient="row")
        write_parquet(frame, root / "metadata" / "subject_splits.parquet")
    return root


def _rows(n_subjects: int = 4) -> list[tuple]:
    rows = []
    for s in range(n_subjects):
        rows += [
            (s, None, "GENDER//F" if s % 2 else "GENDER//M", None),
            (s, None, "RACE//WHITE", None),
            (s, T0 - timedelta(days=365.25 * (30 + s)), "MEDS_BIRTH", None),
            (s, T0 - timedelta(days=20), "DX//I10", None),
            (s, T0, "ED_REGISTRATION", None),
            (s, T0 + timedelta(minutes=20), "LAB//LACTATE", 1.5 + s),
        ]
    return rows + [(0, None, "RACE//ASIAN", None), (1, None, "FRAIL", None)]


def _points(n_subjects: int = 4) -> list[tuple]:
    return [(s, T0 + timedelta(hours=1), s % 2 == 0) for s in range(n_subjects)]


def _read(root: Path, **meds) -> tuple[pl.DataFrame, pl.DataFrame | None, TokenizeConfig]:
    from ehr_ssl.data.readers import read_dataset

    config = TokenizeConfig(meds=MedsConfig(labels=str(root / "labels.parquet"), **meds))
    with contract_data(root, config) as (data_dir, data_config):
        dataset = read_dataset(data_dir, data_config)
    return dataset.visits, dataset.labels, data_config


def test_static_rows_birth_arrival_and_splits_become_visit_columns(tmp_path):
    splits = [(0, "train"), (1, "tuning"), (2, "held_out"), (3, "train")]
    root = _meds_root(tmp_path / "m", _rows(), _points(), splits)
    visits, labels, data_config = _read(root, arrival_code="ED_REGISTRATION")
    assert data_config.static_columns == ["age", "sex", "static_frail", "static_race"]
    assert data_config.drop_null_time_events  # static rows are read as columns, not events
    assert visits["arrival_time"].to_list() == [T0] * 4
    assert visits["age"].round(6).to_list() == [30.0, 31.0, 32.0, 33.0]
    assert visits["sex"].to_list() == ["M", "F", "M", "F"]
    assert visits["static_race"].to_list() == ["ASIAN|WHITE", "WHITE", "WHITE", "WHITE"]
    assert visits["static_frail"].to_list() == [None, "present", None, None]
    assert visits["split"].to_list() == ["train", "val", "test", "train"]
    assert labels.sort("visit_id")["label"].to_list() == [True, False, True, False]


def test_static_columns_one_per_prefix():
    static = pl.DataFrame({"subject_id": [1, 1, 2], "code": ["SEX//F", "INSURANCE//A//B", "X"]})
    frame = static_columns(static).sort("subject_id")
    assert set(frame.columns) == {"subject_id", "sex", "static_insurance", "static_x"}
    assert frame.filter(pl.col("subject_id") == 1)["static_insurance"].item() == "A//B"
    assert frame.filter(pl.col("subject_id") == 2)["static_x"].item() == "present"


def test_a_second_file_adds_unlabeled_points_and_labels_win(tmp_path):
    root = _meds_root(tmp_path / "m", _rows(), _points(2))  # subjects 0 and 1 labeled
    every = pl.DataFrame(
        [(s, T0 + timedelta(hours=1)) for s in range(4)],
        schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us")},
        orient="row",
    )
    write_parquet(every, tmp_path / "every.parquet")
    visits, labels, _ = _read(root, prediction_times=str(tmp_path / "every.parquet"))
    assert visits.height == 4 and labels.height == 2
    assert visits["arrival_time"].to_list() == [T0] * 4  # prediction_time - 60 minutes


def _refused(root: Path, match: str, **meds) -> InputError:
    with pytest.raises(InputError, match=match) as raised:
        _read(root, **meds)
    assert "ehr-ssl-meds-" not in str(raised.value)  # the user's files, not the temporary copy
    return raised.value


def test_bad_meds_input_is_one_line_naming_the_users_file(tmp_path):
    root = _meds_root(tmp_path / "a", _rows(), _points() + [_points()[0]])
    _refused(root, r"labels.parquet: column 'prediction_time': 2 rows share their")
    rows = [r for r in _rows() if not (r[0] >= 2 and r[2] == "ED_REGISTRATION")]
    root = _meds_root(tmp_path / "b", rows, _points())
    _refused(
        root, "2 of 4 prediction points have no ED_REGISTRATION", arrival_code="ED_REGISTRATION"
    )
    root = _meds_root(tmp_path / "c", _rows(), _points(), [(0, "train"), (1, "dev")])
    _refused(root, r"subject_splits.parquet: column 'split': 1 rows name a split other than")
    root = _meds_root(tmp_path / "d", _rows(), _points(), [(0, "train"), (1, "train")])
    _refused(root, r"subject_splits.parquet: column 'subject_id': 2 prediction points belong")
    root = _meds_root(tmp_path / "e", _rows(), _points())
    pl.read_parquet(root / "data/train/0.parquet").rename({"numeric_value": "value"}).write_parquet(
        root / "data/train/0.parquet"
    )
    error = _refused(root, r"column 'value': looks like the contract's 'numeric_value'")
    assert error.file == str((root / "data/train/0.parquet").resolve())
    root = _meds_root(tmp_path / "g", _rows(), _points())
    (root / "data" / "train" / "1.parquet").write_bytes(b"not parquet")
    _refused(root, r"data/train/1.parquet: not a readable Parquet file")
    root = _meds_root(tmp_path / "f", _rows(), _points())
    pl.read_parquet(root / "labels.parquet").drop("prediction_time").write_parquet(
        root / "labels.parquet"
    )
    _refused(root, r"labels.parquet: column 'prediction_time': missing: a MEDS LabelSchema")
    no_points = pytest.raises(InputError, match="name its ED visits with --meds-labels")
    with no_points, contract_data(root, TokenizeConfig()):
        pass


def test_an_error_about_every_shard_names_the_roots_data_directory(tmp_path):
    """The leak screen names the events directory of several shards: for a MEDS root, that is
    its data/ (once the label file, where no code is), never the temporary copy."""
    root = _meds_root(tmp_path / "s", _rows(), _points())
    config = TokenizeConfig(meds=MedsConfig(labels=str(root / "labels.parquet")))
    with pytest.raises(InputError) as raised, contract_data(root, config) as (work, _):
        raise InputError("code 'ORDER//X' nearly separates", file=str(work / "events"),
                         column="code")  # fmt: skip
    assert raised.value.file == str(root / "data") and raised.value.column == "code"


def test_the_leak_screens_warning_names_no_temporary_path(tmp_path, caplog):
    """An accepted code that matches nothing is warned of without the temporary contract copy
    that links to a MEDS root's shards (a path the user never gave)."""
    from ehr_ssl.config import load_pipeline_config
    from ehr_ssl.data.leakage import screen_dataset
    from ehr_ssl.data.readers import read_dataset

    root = _meds_root(tmp_path / "w", _rows(), _points())
    config = load_pipeline_config(None, {"leakage.accept": ["NOPE//"]})
    meds = TokenizeConfig(meds=MedsConfig(labels=str(root / "labels.parquet")))
    with contract_data(root, meds) as (work, data_config), caplog.at_level("WARNING"):
        screen_dataset(read_dataset(work, data_config), config)
    assert "NOPE// match no code of the events (a typo?)" in caplog.text
    assert str(work) not in caplog.text


@pytest.mark.parametrize(
    ("column", "cast"),
    [("subject_id", pl.Float64), ("subject_id", pl.String), ("time", pl.String), ("code", pl.Int8)],
)
def test_a_shard_key_of_another_type_is_refused_naming_it(tmp_path, column, cast):
    root = _meds_root(tmp_path / "k", _rows(), _points())
    shard = root / "data/train/0.parquet"
    frame = pl.read_parquet(shard)
    if cast == pl.Int8:
        frame = frame.with_columns(pl.col("code").rank("dense").cast(pl.Int8))
    pl.read_parquet(shard).with_columns(frame[column].cast(cast)).write_parquet(shard)
    error = _refused(root, rf"column '{column}': type .* \(MEDS: ")
    assert error.file == str(shard.resolve()) or error.file == str(shard)


def test_errors_name_the_meds_column_and_no_row_of_the_sorted_copy(tmp_path):
    rows = _rows() + [(None, T0, "DX//I10", None)]
    root = _meds_root(tmp_path / "n", rows, _points())
    _refused(root, r"0.parquet: column 'subject_id': 1 null")
    points = _points()
    points[2] = (2, datetime(9999, 12, 31), True)
    root = _meds_root(tmp_path / "t", _rows(), points)
    error = _refused(root, r"labels.parquet: column 'prediction_time': ")
    assert "row index" not in str(error)  # the visits are the points sorted, not the file's rows


@pytest.mark.parametrize("setting", ["labels", "prediction_times", "arrival_code"])
def test_a_meds_setting_for_a_contract_dataset_is_refused(tmp_path, cohort, setting):
    data = tmp_path / "contract"
    write_cohort(cohort, data)
    config = TokenizeConfig(meds=MedsConfig(**{setting: "X"}))
    refused = pytest.raises(InputError, match=rf"not a MEDS root .* meds.{setting} .* ignored")
    with refused, contract_data(data, config):
        pass


def test_code_metadata_is_checked_and_kept(tmp_path):
    root = _meds_root(tmp_path / "m", _rows(), _points())
    (root / "metadata").mkdir()
    codes = pl.DataFrame({"code": ["DX//I10", "DX//I1"], "parent_codes": [["DX//I1"], None]})
    write_parquet(codes, root / "metadata" / "codes.parquet")
    config = TokenizeConfig(meds=MedsConfig(labels=str(root / "labels.parquet")))
    with contract_data(root, config) as (data_dir, _):
        assert pl.read_parquet(data_dir / "codes.parquet").equals(codes)
        summary = json.loads((data_dir / "meds.json").read_text())
    assert summary["codes"] == {"codes": 2, "with_parent_codes": 1}
    write_parquet(codes.rename({"code": "concept"}), root / "metadata" / "codes.parquet")
    _refused(root, r"codes.parquet: column 'code': missing: a MEDS CodeMetadataSchema")


def test_the_cli_reads_a_meds_root(tmp_path, capsys):
    root = tmp_path / "meds"
    assert main(["synth", str(root), "--visits", "400", "--format", "meds"]) == 0
    labels, every = str(root / MEDS_LABELS_FILE), str(root / MEDS_VISITS_FILE)
    args = ["--meds-labels", labels, "--meds-prediction-times", every]
    assert main(["validate", str(root), "--json", *args]) == 0
    assert '"visits": 400' in capsys.readouterr().out
    assert main(["validate", str(root)]) == 2
    assert "--meds-labels" in capsys.readouterr().err


def test_the_code_hierarchy_of_codes_parquet_reaches_the_tokens_and_the_rollups(tmp_path):
    from ehr_ssl.evaluation.tabular import TabularSpec

    root = _meds_root(tmp_path / "meds", _rows(12), _points(12))
    (root / "metadata").mkdir()
    codes = pl.DataFrame({"code": ["DX//I10", "LAB//LACTATE", "DX//HTN"],
                          "parent_codes": [["DX//HTN"], ["DX//HTN"], None]})  # fmt: skip
    write_parquet(codes, root / "metadata" / "codes.parquet")
    config = TokenizeConfig(meds=MedsConfig(labels=str(root / "labels.parquet")))
    with contract_data(root, config) as (data_dir, config.data):
        tokenize_dataset(data_dir, tmp_path / "tokens", config)
    spec = TabularSpec.from_tokens(tmp_path / "tokens")
    assert spec.ancestors == ("DX//HTN",) and spec.rollup.sum() == 2
