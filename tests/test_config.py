"""Typed configs: checks with clear errors, TOML loading, command-line overrides."""

import json
import re

import pytest

from ehr_ssl.cli import main
from ehr_ssl.config import (
    DataConfig,
    EvaluateConfig,
    FinetuneConfig,
    ObjectiveConfig,
    PipelineConfig,
    SplitConfig,
    TokenizeConfig,
    TokenizerConfig,
    TrainConfig,
    load_pipeline_config,
    read_run_config,
)
from ehr_ssl.errors import InputError
from ehr_ssl.outputs import write_marker
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
        (lambda: TokenizeConfig(chunk_visits=0), "setting 'chunk_visits': must be >= 1, got 0"),
        (lambda: TokenizeConfig(chunk_events=0), "setting 'chunk_events': must be >= 1, got 0"),
        (lambda: TokenizeConfig(shard_visits=0), "setting 'shard_visits': must be >= 1, got 0"),
        (
            lambda: ObjectiveConfig(contrastive_views="both"),
            "setting 'objective.contrastive_views': must be one of augment, disjoint, patient, "
            "got 'both'",
        ),
        (
            lambda: ObjectiveConfig(mask_unit="day"),
            "setting 'objective.mask_unit': must be one of token, encounter, got 'day'",
        ),
        (
            lambda: ObjectiveConfig(forecast_frame="day"),
            "setting 'objective.forecast_frame': must be one of visit, cut, got 'day'",
        ),
        (
            lambda: ObjectiveConfig(forecast_horizon_days=0),
            "setting 'objective.forecast_horizon_days': must be a number in [1, 36500], got 0",
        ),
        (
            lambda: ObjectiveConfig(forecast_target="week"),
            "setting 'objective.forecast_target': must be one of encounter, next_day, horizon",
        ),
        (
            lambda: ObjectiveConfig(forecast_frame="cut", forecast_current_share=0.5),
            "setting 'objective.forecast_current_share': forecast_frame = \"cut\" draws no cut",
        ),
        (
            lambda: ObjectiveConfig(forecast_share=0.0),
            "'objective.forecast_share': must be in (0, 1]",
        ),
        (
            lambda: ObjectiveConfig(forecast_share=1.5),
            "'objective.forecast_share': must be in (0, 1]",
        ),
        (
            lambda: FinetuneConfig(readout="cls"),
            "setting 'finetune.readout': must be one of pooled, segments, windows, forecast, "
            "got 'cls'",
        ),
        (
            lambda: FinetuneConfig(cv_rule="1se"),
            "setting 'finetune.cv_rule': must be one of best, one_se, got '1se'",
        ),
        (
            lambda: FinetuneConfig(cv_metric="deviance"),
            "setting 'finetune.cv_metric': must be one of auroc, log_loss, got 'deviance'",
        ),
        (
            lambda: FinetuneConfig(penalty_selection="aic"),
            "setting 'finetune.penalty_selection': must be one of cv, evidence, got 'aic'",
        ),
    ],
)
def test_invalid_values_raise_clear_errors(make, message):
    with pytest.raises(InputError, match=re.escape(message)):
        make()


@pytest.mark.parametrize("views", ["augment", "disjoint", "patient"])
def test_every_contrastive_view_is_accepted_from_a_file(tmp_path, views):
    from ehr_ssl.config import load_pretrain_config

    path = tmp_path / "c.toml"
    path.write_text(f'[objective]\ncontrastive_views = "{views}"\n')
    assert load_pretrain_config(path, {}).objective.contrastive_views == views
    assert ObjectiveConfig(contrastive_views=views).contrastive_views == views


@pytest.mark.parametrize(
    ("flag", "expected"),
    [("tokenizer.foo", "setting 'tokenizer': unknown key 'foo'"),
     ("tokenizer.n_bins", "setting 'tokenizer.n_bins': must be int, got str 'abc'")],
)  # fmt: skip
def test_a_bad_flag_names_the_setting_not_the_file(tmp_path, flag, expected):
    path = tmp_path / "c.toml"
    path.write_text("[tokenizer]\nmax_length = 64\n")
    for source in (path, None):  # a file beside the flag, or none: blamed neither way
        with pytest.raises(InputError) as raised:
            load_config(TokenizeConfig, source, {flag: "abc"})
        assert str(raised.value) == expected
    path.write_text("[tokenizer]\nfoo = 1\n")  # the file's own bad key names the file
    with pytest.raises(InputError, match=rf"^{path}: setting 'tokenizer': unknown key 'foo'"):
        load_config(TokenizeConfig, path, {})


def test_toml_types_are_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[tokenizer]\nmax_length = "long"\n')
    with pytest.raises(InputError) as raised:
        load_config(TokenizeConfig, path, {})
    assert (
        str(raised.value) == f"{path}: setting 'tokenizer.max_length': must be int, got str 'long'"
    )
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


@pytest.mark.parametrize(
    "make,message",
    [
        # once passed tokenize, then pretraining asked for a 12.8 TB position table
        (lambda: TokenizerConfig(max_length=100_000_000_000),
         "setting 'tokenizer.max_length': must be <= 8192 (attention memory grows with its "
         "square), got 100000000000"),
        (lambda: TokenizerConfig(max_length=3), "must be >= 4, got 3"),
        (lambda: TokenizerConfig(min_count=10**30), "must be <= 1000000000"),
        (lambda: TokenizeConfig(chunk_visits=10**30), "setting 'chunk_visits': must be <="),
        (lambda: TrainConfig(batch_size=10**9), "setting 'train.batch_size': must be <= 65536"),
        (lambda: TrainConfig(epochs=10**12), "setting 'train.epochs': must be <= 100000"),
        (lambda: TrainConfig(max_steps=10**12), "setting 'train.max_steps': must be <="),
        (lambda: TrainConfig(num_workers=10**6), "setting 'train.num_workers': must be <= 256"),
        (lambda: TrainConfig(warmup_steps=-1), "setting 'train.warmup_steps': must be >= 0"),
        (lambda: TrainConfig(pad_to_multiple_of=10**5), "'train.pad_to_multiple_of': must be <="),
        (lambda: FinetuneConfig(batch_size=10**9), "setting 'finetune.batch_size': must be <="),
        (lambda: FinetuneConfig(max_epochs=10**9), "setting 'finetune.max_epochs': must be <="),
        (lambda: FinetuneConfig(warmup_epochs=-1), "setting 'finetune.warmup_epochs': must be "),
        (lambda: EvaluateConfig(n_boot=10**12), "setting 'evaluate.n_boot': must be <= 1000000"),
    ],
)  # fmt: skip
def test_absurd_sizes_stop_at_configuration_time(make, message):
    with pytest.raises(InputError, match=re.escape(message)):
        make()


def test_the_forecast_readout_without_the_forecast_term_is_refused_before_pretraining():
    """By the commands that run both stages; pretraining alone without the term is fine."""
    settings = {"finetune.readout": "forecast", "objective.forecast_weight": 0.0}
    with pytest.raises(InputError, match=r"setting 'finetune.readout': reads the forecast term"):
        load_pipeline_config(None, settings).check_stages_fit()
    load_pipeline_config(None, settings | {"finetune.readout": "segments"}).check_stages_fit()
    load_pipeline_config(None, {"finetune.readout": "forecast"}).check_stages_fit()
    from ehr_ssl.config import load_pretrain_config

    assert load_pretrain_config(None, settings).objective.forecast_weight == 0.0


def test_the_scratch_model_reads_the_segment_readout_where_the_forecast_readout_is_asked():
    """In its settings, not only in its fine-tuning: the pipeline fingerprints a fine-tuning by
    its settings, so a scratch model fitted when it read a random forecast state is refit."""
    config = load_pipeline_config(None, {"finetune.readout": "forecast"})
    assert config.finetune_config("scratch", 0).readout == "segments"
    assert config.finetune_config("full", 0).readout == "forecast"
    assert config.finetune_config("linear-probe", 0).readout == "forecast"
    assert FinetuneConfig(mode="scratch", readout="forecast").readout == "segments"
    assert FinetuneConfig(mode="scratch", readout="windows").readout == "windows"


def test_value_errors_name_the_file_they_come_from(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("[train]\nepochs = 0\n[tokenizer]\nmax_length = 100000000000\n")
    with pytest.raises(InputError) as error:
        load_pipeline_config(path, {"train.epochs": 2})
    assert str(error.value).startswith(f"{path}: setting 'tokenizer.max_length': must be <= 8192")
    with pytest.raises(InputError) as error:
        load_pipeline_config(path, {"tokenizer.max_length": 64})
    assert str(error.value) == f"{path}: setting 'train.epochs': must be >= 1, got 0"
    # a flag's bad value names the setting, not the file it overrode
    with pytest.raises(InputError) as error:
        load_pipeline_config(path, {"tokenizer.max_length": 64, "train.epochs": -3})
    assert str(error.value) == "setting 'train.epochs': must be >= 1, got -3"
    # settings of one section (ehr-ssl finetune): the flag "max_epochs" is finetune.max_epochs
    base = {"max_epochs": 0}
    with pytest.raises(InputError, match=re.escape(f"{path}: setting 'finetune.max_epochs'")):
        load_config(FinetuneConfig, None, {}, base=base, source=str(path))
    with pytest.raises(InputError) as error:
        load_config(FinetuneConfig, None, {"max_epochs": 0}, base={}, source=str(path))
    assert str(error.value) == "setting 'finetune.max_epochs': must be >= 1, got 0"
    path.write_text('preset = "huge"\n')
    with pytest.raises(InputError, match=re.escape(f"{path}: setting 'preset': unknown preset")):
        load_pipeline_config(path, {})


def test_the_cli_names_the_file_of_a_bad_value(dataset_dir, tmp_path, capsys):
    config = tmp_path / "x.toml"
    config.write_text("[tokenizer]\nmax_length = 100000000000\n")
    argv = ["tokenize", str(dataset_dir), "--out", str(tmp_path / "t"), "--config", str(config)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"ehr-ssl: error: {config}: setting 'tokenizer.max_length': must be <= 8192 (attention "
        "memory grows with its square), got 100000000000"
    ]
    assert not (tmp_path / "t").exists()


def _fake_run(root):
    """A run directory's records and its nested outputs, as far as read_run_config looks."""
    root.mkdir()
    write_marker(root, "run")
    (root / "run_config.json").write_text(json.dumps(to_dict(PipelineConfig())))
    (root / "stages.json").write_text("{}")
    for name, kind in (
        ("pretrain", "pretrain"),
        ("tokens", "tokens"),
        ("models/all/ssl", "finetune"),
    ):
        (root / name).mkdir(parents=True)
        write_marker(root / name, kind)
    record = {"config": {}, "init_encoder": None, "data": {}}
    (root / "pretrain" / "run_config.json").write_text(json.dumps(record))
    (root / "bundle").mkdir()
    (root / "bundle" / "bundle.json").write_text("{}")
    return root


@pytest.mark.parametrize(
    "where,message",
    [
        ("pretrain", "pretrain: is an ehr-ssl pretraining directory (ehr-ssl pretrain), not a "
                     "run directory: give the run directory it lies in, {run} (`ehr-ssl "
                     "finetune --encoder` takes this one)"),
        ("tokens", "is an ehr-ssl tokens directory (ehr-ssl tokenize), not a run directory: give "
                   "the run directory it lies in, {run} (`ehr-ssl pretrain --tokens`"),
        ("models/all/ssl", "is an ehr-ssl fine-tuning directory (ehr-ssl finetune), not a run "
                           "directory: give the run directory it lies in, {run}"),
        ("models", "not a run directory (no run_config.json): give the run directory it lies"),
        ("bundle", "(`ehr-ssl predict --model` takes this one)"),
        ("elsewhere", "run directory not found"),
    ],
)  # fmt: skip
def test_evaluate_says_what_it_was_given_instead_of_a_run(tmp_path, capsys, where, message):
    """`ehr-ssl evaluate RUN/pretrain` once said "unknown key 'config'"."""
    run = _fake_run(tmp_path / "run")
    assert read_run_config(run) == PipelineConfig()
    with pytest.raises(InputError, match=re.escape(message.format(run=run.resolve()))):
        read_run_config(run / where)
    for command in (["evaluate", str(run / where)],
                    ["bundle", str(run / where), "--out", str(tmp_path / "b")]):  # fmt: skip
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("a run directory" in err[0] or "not found" in err[0])


def test_the_small_preset_pretrains_three_epochs_unless_told_otherwise():
    """Every recorded figure pretrains `small` for 3 epochs; one epoch of a small cohort is
    mostly warmup. The other presets keep the TrainConfig default; flags win over presets."""
    assert load_pipeline_config(None, {"preset": "small"}).train.epochs == 3
    assert load_pipeline_config(None, {}).train.epochs == 3  # small is the default preset
    assert load_pipeline_config(None, {"preset": "base"}).train.epochs == TrainConfig().epochs
    assert load_pipeline_config(None, {"preset": "small", "train.epochs": 1}).train.epochs == 1


def test_the_main_seed_is_the_smallest_whatever_the_order():
    """The report's main table picks the smallest seed every model has; the bundle and a
    retrain's candidate must describe that same model, so "2,0" and "0,2" agree."""
    assert EvaluateConfig(seeds=[2, 0, 1]).main_seed == 0
    assert EvaluateConfig(seeds=[0, 2]).main_seed == EvaluateConfig(seeds=[2, 0]).main_seed
    with pytest.raises(InputError, match=r"setting 'evaluate.seeds': a seed is repeated"):
        EvaluateConfig(seeds=[1, 1])
