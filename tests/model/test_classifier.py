"""The admission classifier: the positive class weighted in the loss, and head dropout acting
on standardized features so that the folded head scores like the model in eval mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ehr_ssl.model.classifier import AdmissionClassifier
from ehr_ssl.model.encoder import EHRConfig


def test_loss_weights_the_positive_class():
    torch.manual_seed(0)
    model = AdmissionClassifier(
        EHRConfig(
            vocab_size=20,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=8,
        )
    ).eval()
    b, t = 4, 6
    inputs = {
        "input_ids": torch.randint(6, 20, (b, t)),
        "value_bins": torch.zeros(b, t, dtype=torch.long),
        "time_deltas": torch.zeros(b, t),
        "segment_ids": torch.ones(b, t, dtype=torch.long),
        "attention_mask": torch.ones(b, t, dtype=torch.bool),
    }
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    out = model(**inputs, labels=labels, pos_weight=torch.tensor(3.0))
    logits = out.logits
    expected = -(3.0 * labels * F.logsigmoid(logits) + (1 - labels) * F.logsigmoid(-logits)).mean()
    torch.testing.assert_close(out.loss, expected)


def test_head_dropout_acts_on_standardized_features(monkeypatch):
    """A barely trained encoder's pooled vectors are almost alike (std ~0.005 around a mean of
    ~2 was seen), so the probe's coefficients, folded into the head as coef / std, were ~300:
    dropout zeroing an uncentred feature then moved the logit by hundreds. The standardization
    is a fixed layer in front of the dropout, so dropping a feature costs coef * z, and the
    folded head (what bundles store) scores like the model in eval mode."""
    torch.manual_seed(0)
    config = EHRConfig(vocab_size=20, hidden_size=16, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=8)  # fmt: skip
    model = AdmissionClassifier(config, head_dropout=0.5)
    mean, std = torch.full((16,), 2.0), torch.full((16,), 0.005)
    z = torch.randn(64, 16)
    pooled = mean + std * z  # (B, D): what the encoder hands the head
    monkeypatch.setattr(
        model.encoder, "forward", lambda *a, **k: type("Out", (), {"readout": pooled})
    )
    with torch.no_grad():
        model.feature_mean.copy_(mean)
        model.feature_std.copy_(std)
        model.head.weight.copy_(torch.full((1, 16), 1.0))
        model.head.bias.zero_()
    inputs = {name: None for name in ("input_ids", "value_bins", "time_deltas", "segment_ids",
                                      "attention_mask")}  # fmt: skip
    evaluated = model.eval()(**inputs).logits
    trained = model.train()(**inputs).logits
    # dropout at 0.5 rescales kept features by 2: |change| <= sum |2 z - z| = sum |z|
    assert ((trained - evaluated).abs() <= z.abs().sum(1) + 1e-3).all()
    weight, bias = model.folded_head()
    torch.testing.assert_close(pooled @ weight + bias, evaluated, rtol=1e-4, atol=1e-3)


def _inputs(b: int = 5, t: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    segments = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2]).repeat(b, 1)
    return {
        "input_ids": torch.randint(6, 20, (b, t), generator=g),
        "value_bins": torch.zeros(b, t, dtype=torch.long),
        "time_deltas": -torch.rand(b, t, generator=g) * 100,
        "segment_ids": segments,
        "attention_mask": torch.arange(t)[None] < torch.tensor([8, 6, 5, 8, 7])[:, None],
    }


def test_a_segment_readout_classifier_round_trips(tmp_path):
    """The head reads the readout its config records (3 D + 2 wide for "segments"); saved and
    loaded, it scores bitwise alike; a config.json from before the field reads "pooled"."""
    import json

    torch.manual_seed(0)
    sizes = {"vocab_size": 20, "hidden_size": 16, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 8}  # fmt: skip
    config = EHRConfig(**sizes, readout="segments")
    model = AdmissionClassifier(config).eval()
    assert model.head.in_features == 3 * 16 + 2 == model.feature_mean.numel()
    with torch.no_grad():
        model.head.weight.normal_()  # a head that reads every part of the readout
        expected = model(**_inputs()).logits
        vectors = model.encoder(**_inputs(), readout="segments").readout
    weight, bias = model.folded_head()
    torch.testing.assert_close(vectors @ weight + bias, expected, rtol=1e-5, atol=1e-5)
    model.save_checked(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["readout"] == "segments"
    loaded = AdmissionClassifier.load_checked(tmp_path / "model")
    assert loaded.config.readout == loaded.encoder.config.readout == "segments"
    with torch.no_grad():
        assert torch.equal(loaded(**_inputs()).logits, expected)

    AdmissionClassifier(EHRConfig(**sizes)).save_checked(tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    document = json.loads(path.read_text())
    del document["readout"]
    path.write_text(json.dumps(document))
    old = AdmissionClassifier.load_checked(tmp_path / "old")
    assert old.config.readout == "pooled" and old.head.in_features == 16
