"""The training loop: schedule and parameter groups, outputs of a run, the stop on a non-finite
loss, and a resume after SIGKILL that ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from ehr_ssl.cli import main
from ehr_ssl.config import PretrainConfig, TrainConfig, load_pretrain_config
from ehr_ssl.errors import InputError, TrainingError
from ehr_ssl.model.encoder import EHREncoder
from ehr_ssl.model.pretraining import PretrainingModel
from ehr_ssl.training.optim import learning_rate, param_groups
from ehr_ssl.training.pretrain import pretrain
from tests.conftest import copy_as_killed


def test_learning_rate_schedule():
    config = TrainConfig(learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    rates = [learning_rate(s, config, 100) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(rates[:10], rates[1:10], strict=False))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert learning_rate(100, config, 100) == pytest.approx(1e-4)  # floor at the end
    assert learning_rate(55, config, 100) == pytest.approx(1e-4 + 0.5 * 9e-4)  # cosine midpoint


def test_no_decay_on_biases_norms_and_embeddings(cohort_tokens):
    config = load_pretrain_config(None, {"preset": "tiny"})
    from ehr_ssl.tokens.tokenizer import Tokenizer
    from ehr_ssl.training.pretrain import encoder_config

    model = PretrainingModel(
        EHREncoder(encoder_config(Tokenizer.load(cohort_tokens), config)), config.objective
    )
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith("weight") for n in decayed)
    assert not any("embeddings" in n or "norm" in n for n in decayed)
    assert {names[id(p)] for p in no_decay["params"]} | decayed == set(names.values())
    assert no_decay["weight_decay"] == 0.0


def _tiny(**train) -> PretrainConfig:
    config = load_pretrain_config(None, {"preset": "tiny"})
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def test_a_run_writes_its_outputs(cohort_tokens, tmp_path):
    out = tmp_path / "run"
    summary = pretrain(cohort_tokens, out, _tiny(max_steps=12, log_every=4, checkpoint_every=5))
    assert summary["steps"] == 12 and summary["transductive"] is False
    for name in (
        "encoder/config.json",
        "encoder/model.safetensors",
        "tokenizer.json",
        "run_config.json",
        "metrics.jsonl",
        "pretraining_heads.safetensors",
        "pretrain_summary.json",
    ):
        assert (out / name).exists(), name
    # every head the run trained is kept (the forecast term's code bias; its state map is the
    # encoder's, saved with it)
    heads = {k.split(".")[0] for k in load_file(out / "pretraining_heads.safetensors")}
    assert heads == {"masked_head", "projection", "forecast_code_bias"}
    assert EHREncoder.load_checked(out / "encoder").config.forecast_state
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12]
    for key in (
        "masked_code",
        "masked_bin",
        "forecast",
        "loss",
        "lr",
        "tokens_per_s",
        "padding_fraction",
        "data_s",
        "compute_s",
    ):
        assert key in records[-1], key
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000010",
        "step-00000012",
    ]
    assert isinstance(AutoModel.from_pretrained(out / "encoder"), EHREncoder)
    with pytest.raises(InputError, match="not empty"):
        pretrain(cohort_tokens, out, _tiny(max_steps=12))
    with pytest.raises(
        InputError, match=r"differs from the run being resumed \(config.train.max_steps\)"
    ):
        pretrain(
            cohort_tokens, out, _tiny(max_steps=13, log_every=4, checkpoint_every=5), resume=True
        )


def test_non_finite_loss_stops_with_a_clear_error(cohort_tokens, tmp_path, monkeypatch):
    forward = PretrainingModel.forward

    def poisoned(self, batch, generator, rows=None):
        losses = forward(self, batch, generator, rows)
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(PretrainingModel, "forward", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss .* at step 0"):
        pretrain(cohort_tokens, tmp_path / "run", _tiny(max_steps=5))
    assert not (tmp_path / "run" / "encoder").exists()


def _cli(tokens: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ehr_ssl.cli",
        "-q",
        "pretrain",
        "--tokens",
        str(tokens),
        "--out",
        str(out),
        "--config",
        str(config),
        *extra,
    ]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    weights = load_file(run / "encoder" / "model.safetensors")
    weights.update(load_file(run / "pretraining_heads.safetensors"))
    return weights


def test_resume_after_sigkill_ends_with_identical_weights(cohort_tokens, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        'preset = "tiny"\n[train]\nmax_steps = 30\ncheckpoint_every = 4\nlog_every = 2\n'
        "batch_size = 8\n"  # ~100 batches per epoch: the run crosses no epoch, resume mid-epoch
        "[model]\nhidden_dropout_prob = 0.1\n"  # draws from the global RNG: its restore is tested
    )
    reference = tmp_path / "reference"
    subprocess.run(_cli(cohort_tokens, reference, config), check=True)

    for kill_after_checkpoint in ("step-00000008", "step-00000020"):
        run = tmp_path / f"killed-{kill_after_checkpoint}"
        process = subprocess.Popen(_cli(cohort_tokens, run, config))
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / kill_after_checkpoint).exists():
            assert process.poll() is None, "run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert not (run / "pretrain_summary.json").exists()
        subprocess.run(_cli(cohort_tokens, run, config, "--resume"), check=True)
        resumed, expected = _weights(run), _weights(reference)
        assert resumed.keys() == expected.keys()
        for name in expected:
            assert torch.equal(resumed[name], expected[name]), name
        steps = [
            json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
        ]
        assert steps == list(range(2, 31, 2))  # no duplicate lines from the killed part


@pytest.mark.parametrize(
    "flag,value,terms",
    [
        (None, None, {"masked_code", "forecast"}),  # the defaults
        ("--masked-weight", "0", {"forecast"}),
        ("--forecast-weight", "0", {"masked_code"}),
        ("--contrastive-weight", "1", {"masked_code", "forecast", "contrastive"}),
    ],
)
def test_cli_pretrain_variants_are_one_flag_apart(cohort_tokens, tmp_path, flag, value, terms):
    out = tmp_path / "run"
    argv = ["-q", "pretrain", "--tokens", str(cohort_tokens), "--out", str(out), "--preset",
            "tiny", "--max-steps", "4", *([flag, value] if flag else [])]  # fmt: skip
    assert main(argv) == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "loss" in last
    assert set(last) & {"masked_code", "contrastive", "forecast"} == terms


def test_a_refused_start_leaves_nothing(cohort_tokens, tmp_path):
    with pytest.raises(InputError, match="fewer than one batch"):
        pretrain(cohort_tokens, tmp_path / "run", _tiny(batch_size=5000))
    assert not (tmp_path / "run").exists()
    bad_model = dataclasses.replace(_tiny(), model={"hidden_size": 31})
    with pytest.raises(InputError, match="not a multiple of num_attention_heads"):
        pretrain(cohort_tokens, tmp_path / "run", bad_model)
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match="needs batch_size >= 2"):
        contrastive = _tiny(batch_size=1)
        contrastive.objective.contrastive_weight = 1.0
        contrastive.__post_init__()


def test_a_pretraining_failed_before_any_checkpoint_never_blocks_a_plain_rerun(
    cohort_tokens, tmp_path, monkeypatch
):
    """An allocation failure in the first step once left run_config.json behind, and the same
    command again was refused ("not empty")."""
    out = tmp_path / "run"

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("simulated: out of memory")

    with monkeypatch.context() as patched:
        patched.setattr("ehr_ssl.training.pretrain._train", out_of_memory)
        with pytest.raises(RuntimeError, match="out of memory"):
            pretrain(cohort_tokens, out, _tiny(max_steps=4))
    assert (out / "run_config.json").exists()
    assert pretrain(cohort_tokens, out, _tiny(max_steps=4, checkpoint_every=2))["steps"] == 4
    (out / "pretrain_summary.json").unlink()  # killed after a checkpoint: --resume continues it
    with pytest.raises(InputError, match="use --resume"):
        pretrain(cohort_tokens, out, _tiny(max_steps=4))


def test_resume_refuses_other_data_and_broken_checkpoints(cohort_tokens, tmp_path):
    import shutil

    out = tmp_path / "run"
    pretrain(cohort_tokens, out, _tiny(max_steps=6, checkpoint_every=3))
    other = tmp_path / "other-tokens"
    shutil.copytree(cohort_tokens, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["vocab"][6], tokenizer["vocab"][7] = tokenizer["vocab"][7], tokenizer["vocab"][6]
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(InputError, match="data.tokenizer_sha256"):
        pretrain(other, out, _tiny(max_steps=6, checkpoint_every=3), resume=True)
    (out / "checkpoints" / "step-00000006" / "state.json").write_bytes(b"garbage")
    with pytest.raises(InputError, match="unreadable checkpoint"):
        pretrain(cohort_tokens, out, _tiny(max_steps=6, checkpoint_every=3), resume=True)


def test_a_warm_start_resumes_by_its_weights_not_their_path(cohort_tokens, tmp_path):
    import shutil

    first, other = tmp_path / "first", tmp_path / "other"
    pretrain(cohort_tokens, first, _tiny(max_steps=3))
    pretrain(cohort_tokens, other, _tiny(max_steps=4))
    moved = tmp_path / "moved" / "encoder"  # a registry moved or remounted
    shutil.copytree(first / "encoder", moved)
    out, config = tmp_path / "run", _tiny(max_steps=6, checkpoint_every=3)
    pretrain(cohort_tokens, out, config, init_encoder=first / "encoder")
    pretrain(cohort_tokens, out, config, init_encoder=moved, resume=True)
    with pytest.raises(InputError, match="init_encoder_sha256"):
        pretrain(cohort_tokens, out, config, init_encoder=other / "encoder", resume=True)


def test_finished_run_resumed_keeps_its_final_metrics(cohort_tokens, tmp_path):
    out = tmp_path / "run"
    first = pretrain(cohort_tokens, out, _tiny(max_steps=6, checkpoint_every=3, log_every=3))
    again = pretrain(
        cohort_tokens, out, _tiny(max_steps=6, checkpoint_every=3, log_every=3), resume=True
    )
    assert again["final_metrics"] == first["final_metrics"] != {}


def test_epochs_advance_and_padding_multiples_are_capped(cohort_tokens, tmp_path):
    out = tmp_path / "run"
    config = _tiny(
        epochs=2, batch_size=128, log_every=1, pad_to_multiple_of=48, checkpoint_every=1000
    )
    pretrain(cohort_tokens, out, config)  # max_length 64: a multiple of 48 would exceed it
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["epoch"] for r in records} == {0, 1}
    assert all(r["encoder_tokens_per_s"] > r["tokens_per_s"] for r in records)


def test_patient_views_train_and_resume_to_identical_weights(cohort_tokens, tmp_path):
    """Partner draws are fixed by (seed, epoch, batch): a run restarted from its step-4
    checkpoint mid-epoch (as after a kill) ends with the uninterrupted run's exact weights."""

    config = _tiny(max_steps=8, checkpoint_every=4, log_every=2, batch_size=8)
    config.objective.contrastive_weight, config.objective.contrastive_views = 1.0, "patient"
    reference = tmp_path / "reference"
    pretrain(cohort_tokens, reference, config)
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["contrastive"] < 10 for r in records)

    run = copy_as_killed(reference, tmp_path / "resumed", last_step=8)
    pretrain(cohort_tokens, run, config, resume=True)
    resumed, expected = _weights(run), _weights(reference)
    assert resumed.keys() == expected.keys()
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name
    # Another seed draws other batches and partners.
    config.train.seed = 1
    pretrain(cohort_tokens, tmp_path / "seed1", config)
    other = _weights(tmp_path / "seed1")
    assert any(not torch.equal(other[n], expected[n]) for n in expected)
