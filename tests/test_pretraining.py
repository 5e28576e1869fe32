"""The pretraining objectives wired together: terms switch with their weights, the total is the
weighted sum, randomness comes from the generator, and the loss falls on a fixed batch."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from ehr_ssl.batching import TokenDataset, collate
from ehr_ssl.config import ObjectiveConfig
from ehr_ssl.model import EHRConfig, EHREncoder
from ehr_ssl.pretraining import PretrainingModel
from ehr_ssl.tokenizer import Tokenizer


def _model(tokens, **objective) -> PretrainingModel:
    torch.manual_seed(0)
    tokenizer = Tokenizer.load(tokens)
    config = EHRConfig(
        vocab_size=tokenizer.vocab_size,
        n_value_bins=tokenizer.config.n_bins + 1,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return PretrainingModel(EHREncoder(config), ObjectiveConfig(projection_dim=16, **objective))


def _batch(tokens, n=24):
    dataset = TokenDataset(tokens, pl.col("split") == "train", splits=["train"])
    return collate([dataset[i] for i in range(n)])


@pytest.mark.parametrize(
    "weights,terms",
    [
        ({}, {"masked_code", "masked_bin", "contrastive"}),
        ({"contrastive_weight": 0.0}, {"masked_code", "masked_bin"}),
        ({"masked_weight": 0.0}, {"contrastive"}),
    ],
)
def test_terms_follow_weights_and_sum(cohort_tokens, weights, terms):
    model = _model(cohort_tokens, **weights)
    losses = model(_batch(cohort_tokens), torch.Generator().manual_seed(0))
    assert set(losses) == terms | {"loss"}
    o = model.objective
    expected = o.masked_weight * (
        losses.get("masked_code", 0) + o.value_bin_weight * losses.get("masked_bin", 0)
    ) + o.contrastive_weight * losses.get("contrastive", 0)
    torch.testing.assert_close(losses["loss"], torch.as_tensor(expected))
    assert all(torch.isfinite(v) for v in losses.values())


def test_randomness_comes_from_the_generator(cohort_tokens):
    model = _model(cohort_tokens)
    batch = _batch(cohort_tokens)
    a = model(batch, torch.Generator().manual_seed(5))["loss"]
    b = model(batch, torch.Generator().manual_seed(5))["loss"]
    c = model(batch, torch.Generator().manual_seed(6))["loss"]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("weights", [{}, {"contrastive_weight": 0.0}, {"masked_weight": 0.0}])
def test_loss_falls_on_a_fixed_batch(cohort_tokens, weights):
    model = _model(cohort_tokens, **weights)
    batch = _batch(cohort_tokens)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(40):
        losses = model(batch, torch.Generator().manual_seed(0))  # the same corruption each step
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(float(losses["loss"].detach()))
    assert history[-1] < 0.6 * history[0]
