"""Data-parallel pretraining: 2 gloo processes launched by torchrun take the steps of 1 process
on the same global batch, rank 0 alone writes, and a killed 2-process run resumes to the weights
of an uninterrupted one. Also the row shares of the sampler and of the objectives, in process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ehr_ssl.tokens.batching import LengthBucketSampler
from ehr_ssl.training.distributed import Rank
from tests.model.test_pretraining import _batch, _model


def _pretrain(tokens: Path, out: Path, config: Path, processes: int, *extra: str) -> list[str]:
    """The command line of `ehr-ssl pretrain`, under torchrun when processes > 1."""
    command = ["-m", "ehr_ssl.cli", "-q", "pretrain", "--tokens", str(tokens), "--out", str(out)]
    command += ["--config", str(config), *extra]
    if processes == 1:
        return [sys.executable, *command]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [sys.executable, *launcher, *command]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    weights = load_file(run / "encoder" / "model.safetensors")
    weights.update(load_file(run / "pretraining_heads.safetensors"))
    return weights


def _losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# Every term on (the defaults, masked + forecast, and the contrastive term). "patient": each
# process also reads its rows' partner visits, padded to the partners' own global longest, and
# the same-patient masks cover the gathered batch.
@pytest.mark.parametrize(
    "objective",
    ["[objective]\ncontrastive_weight = 1.0\n",
     '[objective]\ncontrastive_weight = 1.0\ncontrastive_views = "patient"\n'],
    ids=["augment", "patient"],
)  # fmt: skip
def test_two_processes_take_the_steps_of_one(cohort_tokens, tmp_path, objective):
    config = tmp_path / "run.toml"
    config.write_text(
        'preset = "tiny"\n[train]\nmax_steps = 6\nlog_every = 1\ncheckpoint_every = 3\n'
        "batch_size = 16\n"  # the global batch: 8 visits per process
        # A small step: Adam's normalized updates are about lr in size even where a gradient
        # is nearly 0, which would let rounding differences show at the default rate.
        "learning_rate = 1e-4\n" + objective
    )
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_pretrain(cohort_tokens, one, config, 1), check=True)
    subprocess.run(_pretrain(cohort_tokens, two, config, 2), check=True)

    # Same masks, views and negatives: the logged terms (averaged over processes) are the
    # single process's, step by step, and so are the weights after 6 AdamW steps (sums in
    # another order differ in the last bits).
    for a, b in zip(_losses(one), _losses(two), strict=True):
        assert a["step"] == b["step"]
        for term in ("loss", "masked_code", "masked_bin", "contrastive", "forecast", "grad_norm"):
            assert b[term] == pytest.approx(a[term], rel=1e-5), (a["step"], term)
    expected, got = _weights(one), _weights(two)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5)
    # Tokens per second count every process's visits once.
    assert _losses(two)[-1]["tokens_per_s"] > 0
    # Rank 0 alone wrote: one line per step, one set of checkpoints.
    assert [r["step"] for r in _losses(two)] == list(range(1, 7))
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [
        "step-00000003",
        "step-00000006",
    ]


def test_a_killed_two_process_run_resumes_to_the_same_weights(cohort_tokens, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(  # dropout on: the restored RNG state matters
        'preset = "tiny"\n[train]\nmax_steps = 30\ncheckpoint_every = 4\nlog_every = 2\n'
        "batch_size = 8\n[model]\nhidden_dropout_prob = 0.1\n"
    )
    reference = tmp_path / "reference"
    subprocess.run(_pretrain(cohort_tokens, reference, config, 2), check=True)

    run = tmp_path / "killed"
    # A session of its own, so that the whole job (torchrun and its workers) can be killed at
    # once, like a lost node.
    process = subprocess.Popen(_pretrain(cohort_tokens, run, config, 2), start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step-00000008").exists():
        assert process.poll() is None, "run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run / "pretrain_summary.json").exists()

    subprocess.run(_pretrain(cohort_tokens, run, config, 2, "--resume"), check=True)
    resumed, expected = _weights(run), _weights(reference)
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name
    assert [r["step"] for r in _losses(run)] == list(range(2, 31, 2))


def test_a_global_batch_the_processes_cannot_share_is_refused(cohort_tokens, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('preset = "tiny"\n[train]\nmax_steps = 2\nbatch_size = 9\n')
    result = subprocess.run(
        _pretrain(cohort_tokens, tmp_path / "run", config, 2), capture_output=True, text=True
    )
    assert result.returncode != 0
    # A process says it in one line (torchrun may stop the other before it does, then reports
    # the failed processes); no traceback from our code.
    assert "ehr-ssl: error: " in result.stderr and "train.batch_size" in result.stderr
    assert "not divisible by the 2 processes" in result.stderr
    assert "[rank0]" not in result.stderr and "[rank1]" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_rank_shares_tile_each_global_batch():
    lengths = np.random.default_rng(0).integers(5, 60, size=203)
    whole = LengthBucketSampler(lengths, 12, seed=3, epoch=1)
    shares = [
        list(LengthBucketSampler(lengths, 12, seed=3, epoch=1, rank=r, world_size=3))
        for r in range(3)
    ]
    for i, batch in enumerate(whole):
        assert [v for share in shares for v in share[i]] == batch
        assert [len(share[i]) for share in shares] == [4, 4, 4]
    with pytest.raises(ValueError, match="multiple of 5"):
        LengthBucketSampler(lengths, 12, seed=3, world_size=5)
    # Fine-tuning keeps every batch: the last partial one is shared equally, and fewer than W
    # visits, drawn at random (not the longest), sit out of an epoch.
    sat_out = []
    for epoch in range(4):
        kept = LengthBucketSampler(lengths, 12, seed=3, epoch=epoch, drop_last=False)
        shares = [
            list(
                LengthBucketSampler(
                    lengths, 12, seed=3, epoch=epoch, drop_last=False, rank=r, world_size=3
                )
            )
            for r in range(3)
        ]
        assert len(shares[0]) == len(kept) == 17  # 201 of 203 visits: 16 batches of 12, 1 of 9
        assert len({len(share[-1]) for share in shares}) == 1
        seen = {v for share in shares for batch in share for v in batch}
        assert len(seen) == 201
        sat_out += sorted(set(range(203)) - seen)
    assert len(set(sat_out)) > 2  # not always the same visits
    assert Rank(1, 4).rows(12) == slice(3, 6)


def test_masked_terms_of_row_shares_average_to_the_global_terms(cohort_tokens):
    """Without a process group: the masked-event terms computed on each process's rows (inputs
    drawn on the whole batch) average to the terms of the whole batch, gradients included."""
    model = _model(cohort_tokens, contrastive_weight=0.0)
    batch = _batch(cohort_tokens, n=24)
    whole = model(batch, torch.Generator().manual_seed(5))
    whole["loss"].backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    world, terms = 3, []
    for r in range(world):
        share = model(batch, torch.Generator().manual_seed(5), Rank(r, world).rows(24))
        (share["loss"] / world).backward()  # DDP averages over processes
        terms.append(share)
    for term in ("loss", "masked_code", "masked_bin"):
        mean = sum(t[term] for t in terms) / world
        torch.testing.assert_close(mean, whole[term], rtol=1e-5, atol=1e-6)
    for name, grad in expected.items():
        torch.testing.assert_close(
            dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6
        )
    assert sum(int(t["encoder_tokens"]) for t in terms) == int(whole["encoder_tokens"])


def test_the_whole_pipeline_runs_under_torchrun(tmp_path):
    """`ehr-ssl run` with 2 processes: rank 0 tokenizes, evaluates and writes; all pretrain
    and fine-tune together; the report is printed once."""
    from ehr_ssl.data.synthetic import generate_cohort, write_cohort

    write_cohort(generate_cohort(800, labeled_frac=0.4, seed=2), tmp_path / "data")
    config = tmp_path / "run.toml"
    config.write_text(
        'preset = "tiny"\n[tokenizer]\nmax_length = 64\n[train]\nmax_steps = 6\nbatch_size = 16\n'
        "[finetune]\nmax_epochs = 2\npatience = 1\nbatch_size = 16\n[evaluate]\nn_boot = 20\n"
    )
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = ["-m", "ehr_ssl.cli", "-q", "run", "--data", str(tmp_path / "data")]
    command += ["--out", str(tmp_path / "run"), "--config", str(config), "--device", "cpu"]
    result = subprocess.run(
        [sys.executable, *launcher, *command], capture_output=True, text=True, check=True
    )
    assert result.stdout.count("counts_logistic") == 1
    run = tmp_path / "run"
    for name in ("report.json", "bundle/bundle.json", "pretrain/encoder/model.safetensors"):
        assert (run / name).exists(), name
    stages = json.loads((run / "stages.json").read_text())
    assert {"tokenize", "pretrain", "evaluate", "bundle"} <= set(stages)
    steps = [r["step"] for r in _losses(run / "pretrain")]
    assert steps == sorted(set(steps)) and steps[-1] == 6
