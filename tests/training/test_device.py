"""What training does on each device, decided in one function; and the bf16 path run on CPU:
finite losses close to fp32 on a fixed batch, fp32 weights and checkpoints, bitwise resume."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from ehr_ssl.config import FinetuneConfig, ObjectiveConfig, load_pretrain_config
from ehr_ssl.errors import InputError
from ehr_ssl.model.classifier import AdmissionClassifier
from ehr_ssl.model.encoder import EHRConfig, EHREncoder
from ehr_ssl.model.pretraining import ENCODER_INPUTS, PretrainingModel
from ehr_ssl.tokens.batching import TokenDataset, collate
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.training.device import collective_backend, device_settings
from ehr_ssl.training.finetune import finetune
from ehr_ssl.training.pretrain import pretrain
from tests.conftest import copy_as_killed

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per operand): a loss averaged over a
# batch of this 2-layer model stays within 1% of fp32 (measured at most 0.12% on these batches,
# 2026-12-04; the contrastive term 0.014%, its similarities being computed in fp32).
BF16_LOSS_RTOL = 0.01


def test_cpu_trains_in_fp32_without_the_gpu_only_features():
    settings = device_settings(CPU)
    assert settings.precision == "fp32"
    assert not settings.fused_optimizer and not settings.pin_memory
    assert settings.ddp_device_ids is None and settings.pad_to_multiple_of == 1
    assert settings.generator(3).device == CPU
    assert collective_backend(CPU) == "gloo" and collective_backend(CUDA) == "nccl"


def test_cuda_trains_in_bf16_with_fused_adamw_pinned_memory_and_padding(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: True)
    settings = device_settings(CUDA)
    assert settings.precision == "bf16" and settings.fused_optimizer and settings.pin_memory
    assert settings.ddp_device_ids == [0] and settings.pad_to_multiple_of == 8
    assert device_settings(CUDA, "fp32", pad_to_multiple_of=1).precision == "fp32"
    assert device_settings(CUDA, pad_to_multiple_of=1).pad_to_multiple_of == 1


def test_a_gpu_without_bf16_falls_back_to_fp32_and_refuses_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100")
    assert device_settings(CUDA).precision == "fp32"
    with pytest.raises(InputError, match="V100 has no bf16 support"):
        device_settings(CUDA, "bf16")


def test_precision_is_checked_and_bf16_runs_on_cpu():
    with pytest.raises(InputError, match="'precision': must be one of auto, fp32, bf16"):
        device_settings(CPU, "fp16")
    with pytest.raises(InputError, match="train.precision"):
        load_pretrain_config(None, {"preset": "tiny", "train.precision": "half"})
    with pytest.raises(InputError, match="finetune.precision"):
        FinetuneConfig(precision="half")
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    with device_settings(CPU, "bf16").autocast():
        assert (a @ b).dtype == torch.bfloat16
    with device_settings(CPU, "fp32").autocast():
        assert (a @ b).dtype == torch.float32


def _encoder(tokens) -> EHREncoder:
    torch.manual_seed(0)
    tokenizer = Tokenizer.load(tokens)
    config = EHRConfig(
        vocab_size=tokenizer.vocab_size,
        n_value_bins=tokenizer.config.n_bins + 1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return EHREncoder(config)


def _batch(tokens, n=48):
    dataset = TokenDataset(tokens, pl.col("split") == "train", splits=["train"])
    return collate([dataset[i] for i in range(n)])


def test_bf16_pretraining_losses_are_finite_and_close_to_fp32(cohort_tokens):
    every_term = ObjectiveConfig(projection_dim=16, contrastive_weight=1.0)
    model = PretrainingModel(_encoder(cohort_tokens), every_term)
    batch = _batch(cohort_tokens)
    fp32 = model(batch, torch.Generator().manual_seed(0))
    with device_settings(CPU, "bf16").autocast():
        bf16 = model(batch, torch.Generator().manual_seed(0))
    for term in ("masked_code", "masked_bin", "contrastive", "forecast", "loss"):
        assert bf16[term].dtype == torch.float32, term  # the losses upcast
        assert torch.isfinite(bf16[term]), term
        torch.testing.assert_close(bf16[term], fp32[term], rtol=BF16_LOSS_RTOL, atol=0)
    assert not torch.equal(bf16["masked_code"], fp32["masked_code"])  # bf16 really ran
    bf16["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_bf16_classifier_loss_is_finite_and_close_to_fp32(cohort_tokens):
    dataset = TokenDataset(cohort_tokens, pl.col("labeled"), splits=["train"])
    batch = collate([dataset[i] for i in range(48)])
    model = AdmissionClassifier(_encoder(cohort_tokens).config)
    inputs = {k: batch[k] for k in ENCODER_INPUTS}
    fp32 = model(**inputs, labels=batch["labels"]).loss
    with device_settings(CPU, "bf16").autocast():
        bf16 = model(**inputs, labels=batch["labels"]).loss
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16)
    torch.testing.assert_close(bf16, fp32, rtol=BF16_LOSS_RTOL, atol=0)


def _bf16_run(steps: int, **train):
    config = load_pretrain_config(None, {"preset": "tiny", "train.precision": "bf16"})
    for key, value in {"max_steps": steps, "log_every": 2, "batch_size": 8, **train}.items():
        setattr(config.train, key, value)
    return config


def dtypes(weights: dict[str, torch.Tensor]) -> set[torch.dtype]:
    """The dtypes of the weights, the code hierarchy's ancestor ids (an integer buffer, data
    rather than weights: int64 whatever the precision) checked apart."""
    ids = [t for name, t in weights.items() if name.endswith("code_ancestor_ids")]
    assert all(t.dtype == torch.int64 for t in ids)
    return {t.dtype for name, t in weights.items() if not name.endswith("code_ancestor_ids")}


def test_bf16_pretraining_saves_fp32_weights_and_resumes_bitwise(cohort_tokens, tmp_path):
    config = _bf16_run(8, checkpoint_every=4)
    reference = tmp_path / "reference"
    pretrain(cohort_tokens, reference, config)
    run = copy_as_killed(reference, tmp_path / "resumed", last_step=8)
    pretrain(cohort_tokens, run, config, resume=True)

    for name in ("encoder/model.safetensors", "pretraining_heads.safetensors"):
        expected, resumed = load_file(reference / name), load_file(run / name)
        assert dtypes(expected) == {torch.float32}, name
        assert expected.keys() == resumed.keys()
        assert all(torch.equal(resumed[k], expected[k]) for k in expected), name
    checkpoint = load_file(reference / "checkpoints" / "step-00000004" / "model.safetensors")
    assert dtypes(checkpoint) == {torch.float32}
    # The same run in fp32 ends elsewhere: the precision setting really reached the loop.
    config.train.precision = "fp32"
    pretrain(cohort_tokens, tmp_path / "fp32", config)
    fp32 = load_file(tmp_path / "fp32" / "encoder" / "model.safetensors")
    bf16 = load_file(reference / "encoder" / "model.safetensors")
    assert any(not torch.equal(fp32[k], bf16[k]) for k in bf16)


def test_bf16_finetuning_trains_to_finite_scores(cohort_tokens, tmp_path):
    pretrained = tmp_path / "pretrained"
    pretrain(cohort_tokens, pretrained, _bf16_run(4))
    config = FinetuneConfig(max_epochs=2, patience=2, batch_size=32, precision="bf16")
    summary = finetune(cohort_tokens, pretrained / "encoder", tmp_path / "ft", config)
    assert all(0 <= h["val_auroc"] <= 1 for h in summary["history"])
    losses = [h["last_loss"] for h in summary["history"] if h["last_loss"] is not None]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    weights = load_file(tmp_path / "ft" / "model" / "model.safetensors")
    assert dtypes(weights) == {torch.float32}
