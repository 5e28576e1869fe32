"""The encoder: shapes, padding and batch invariance, future-event invariance at the model input,
save/load identity and the Auto classes."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest
import torch
from transformers import AutoConfig, AutoModel

import ehr_ssl  # noqa: F401  (registers the Auto classes)
from ehr_ssl.config import MAX_WIDTH, PRESETS, SplitConfig, TokenizeConfig, TokenizerConfig
from ehr_ssl.errors import InputError
from ehr_ssl.model.encoder import (
    EHRConfig,
    EHREncoder,
    as_past_encounter,
    config_from_settings,
    pooled_dim,
    readout_dim,
    resolve_model_settings,
    time_buckets,
)
from ehr_ssl.tokens.batching import collate
from ehr_ssl.tokens.tokenize import tokenize_dataset
from ehr_ssl.tokens.tokenizer import Tokenizer
from tests.conftest import make_tables, write_tables

INPUTS = ("input_ids", "value_bins", "time_deltas", "segment_ids", "attention_mask")


def tiny(**kwargs) -> EHREncoder:
    torch.manual_seed(0)
    config = EHRConfig(
        vocab_size=50,
        n_value_bins=11,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **kwargs,
    )
    return EHREncoder(config).eval()


def random_visits(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    visits = []
    for _ in range(n):
        t = int(torch.randint(5, 30, (1,), generator=g))
        segments = torch.cat([torch.zeros(3), torch.ones(t // 2), 2 * torch.ones(t - 3 - t // 2)])
        visits.append(
            {
                "input_ids": torch.randint(6, 50, (t,), generator=g).numpy(),
                "value_bins": torch.randint(0, 11, (t,), generator=g).numpy(),
                "time_deltas": (-torch.rand(t, generator=g) * 1000).numpy(),
                "segment_ids": segments.long().numpy(),
            }
        )
    return visits


def encode(model, batch):
    with torch.no_grad():
        return model(**{k: batch[k] for k in INPUTS})


def test_shapes_and_time_buckets():
    model = tiny()
    batch = collate(random_visits(4))
    out = encode(model, batch)
    b, t = batch["input_ids"].shape
    assert out.last_hidden_state.shape == (b, t, 32)
    assert out.pooler_output.shape == (b, 32)
    buckets = time_buckets(torch.tensor([0.0, -0.5, -24.0, -8760.0, -1e9]), model.config)
    assert buckets.tolist() == sorted(buckets.tolist())  # monotone in |time|
    assert buckets[0] == 0 and buckets[-1] == model.config.n_time_buckets - 1


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padding_invariance(pooling):
    model = tiny(pooling=pooling)
    visits = random_visits(5)
    short = encode(model, collate(visits))
    long = encode(model, collate(visits, pad_to_multiple_of=48))
    torch.testing.assert_close(short.pooler_output, long.pooler_output, rtol=1e-5, atol=1e-5)
    mask = collate(visits)["attention_mask"]
    t = mask.shape[1]
    torch.testing.assert_close(
        short.last_hidden_state[mask], long.last_hidden_state[:, :t][mask], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_a_visit_does_not_see_its_batch_mates(pooling):
    """In eval mode bitwise: `ehr-ssl predict --chunk-visits 7` once changed 823 of 3,000 scores
    (by up to 2.7e-7) against the default, as the padded width changed the reductions."""
    model = tiny(pooling=pooling)
    visits = random_visits(40, seed=3)
    together = encode(model, collate(visits))
    alone = [encode(model, collate([v])) for v in visits]
    assert torch.equal(together.pooler_output, torch.cat([a.pooler_output for a in alone]))
    for i, (visit, one) in enumerate(zip(visits, alone, strict=True)):
        t = len(visit["input_ids"])
        assert torch.equal(together.last_hidden_state[i, :t], one.last_hidden_state[0, :t])
    reordered = encode(model, collate(visits[::-1][:7], pad_to_multiple_of=64)).pooler_output
    assert torch.equal(reordered, together.pooler_output.flip(0)[:7])


def test_save_load_and_auto_classes(tmp_path):
    model = tiny(pooling="mean")
    batch = collate(random_visits(3))
    model.save_pretrained(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    config = AutoConfig.from_pretrained(tmp_path / "enc")
    assert isinstance(config, EHRConfig) and config.pooling == "mean"
    loaded = AutoModel.from_pretrained(tmp_path / "enc").eval()
    assert isinstance(loaded, EHREncoder)
    assert torch.equal(encode(model, batch).pooler_output, encode(loaded, batch).pooler_output)


def test_config_round_trips_extra_keys_and_validates():
    config = EHRConfig(hidden_size=32, num_attention_heads=4, my_note="kept")
    again = EHRConfig.from_dict(config.to_dict())
    assert again.my_note == "kept" and again.hidden_size == 32
    with pytest.raises(ValueError, match="not a multiple"):
        EHRConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="pooling"):
        EHRConfig(pooling="max")
    with pytest.raises(ValueError, match="value_embedding must be one of"):
        EHRConfig(value_embedding="code_bin")
    with pytest.raises(ValueError, match="hidden_dropout_prob must be in"):
        EHRConfig(hidden_dropout_prob=1.0)
    with pytest.raises(ValueError, match="num_hidden_layers must be >= 1"):
        EHRConfig(num_hidden_layers=0)
    model = tiny()
    batch = collate(random_visits(2))
    too_long = {k: v.repeat(1, 10) for k, v in batch.items()}
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        encode(model, too_long)


def test_every_input_channel_matters():
    model = tiny()
    batch = collate(random_visits(3))
    reference = encode(model, batch).pooler_output
    shifted = {  # each channel moved to other valid values on real tokens
        "input_ids": (batch["input_ids"] - 6 + 1) % 44 + 6,
        "value_bins": (batch["value_bins"] + 1) % 11,
        "time_deltas": batch["time_deltas"] * 50,
        "segment_ids": (batch["segment_ids"] + 1) % 3,
    }
    for name, values in shifted.items():
        changed = dict(batch)
        changed[name] = torch.where(batch["attention_mask"], values, batch[name])
        assert not torch.allclose(encode(model, changed).pooler_output, reference), name


def test_future_events_do_not_reach_the_model(tmp_path):
    """Events after the prediction time (changed, deleted or added) give bitwise identical
    encoder outputs for the visit, end to end through the tokenizer."""
    tables = make_tables()
    data = write_tables(tmp_path / "data", tables)
    config = TokenizeConfig(
        split=SplitConfig(val_fraction=0.2, test_fraction=0.2),
        tokenizer=TokenizerConfig(min_count=2, max_length=64),
    )
    tokenize_dataset(data, tmp_path / "tokens", config)
    tokenizer = Tokenizer.load(tmp_path / "tokens")
    visits = tables["visits"].filter(pl.col("visit_id") % 2 == 0)
    cutoff = visits.select("patient_id", "prediction_time")
    events = tables["events"].join(cutoff, on="patient_id")
    future = pl.col("time") > pl.col("prediction_time")
    perturbed = pl.concat(
        [
            events.filter(~future).drop("prediction_time"),
            cutoff.select(
                "patient_id",
                (pl.col("prediction_time") + timedelta(microseconds=1)).alias("time"),
                pl.lit("DISP//ADMIT").alias("code"),
                pl.lit(5.0).alias("numeric_value"),
            ),
        ]
    )
    model = EHREncoder(
        EHRConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).eval()

    def outputs(events_frame):
        encoded = tokenizer.encode(visits, events_frame).sort("visit_id")
        rows = [
            {c: encoded[c][i].to_numpy() for c in INPUTS if c != "attention_mask"}
            for i in range(encoded.height)
        ]
        return encode(model, collate(rows))

    before, after = outputs(tables["events"]), outputs(perturbed)
    assert torch.equal(before.pooler_output, after.pooler_output)
    assert torch.equal(before.last_hidden_state, after.last_hidden_state)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_an_encoder_config(preset):
    """A preset's [model] table holds EHRConfig's own argument names, nothing else."""
    config = config_from_settings(PRESETS[preset]["model"], vocab_size=99)
    for key, value in PRESETS[preset]["model"].items():
        assert getattr(config, key) == value
    assert config.vocab_size == 99


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"dropout": 0.1}, "unknown key 'dropout' (did you mean 'hidden_dropout_prob'?)"),
        ({"hiden_size": 8}, "(did you mean 'hidden_size'?)"),
        ({"vocab_size": 8}, "unknown key 'vocab_size'"),  # the tokenizer sets it
        ({"hidden_size": "64"}, "setting 'model.hidden_size': must be int, got str"),
        ({"num_hidden_layers": True}, "must be int, got bool"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "setting 'model': hidden_size 30 is not"),
        ({"pooling": "max"}, "pooling must be one of"),
        # absurd sizes stop here, before anything is allocated
        ({"n_time_buckets": 10**11}, "n_time_buckets must be <= 4096, got 100000000000"),
        ({"num_hidden_layers": 10**6}, "num_hidden_layers must be <= 256"),
        ({"hidden_size": 16384, "num_hidden_layers": 256}, "parameters, more than 1e+10"),
        ({"n_segments": 2}, "n_segments must be >= 3"),
    ],
)
def test_model_settings_are_checked_with_one_clear_line(settings, message):
    with pytest.raises(InputError) as error:
        config_from_settings(settings)
    assert message in str(error.value)


def test_unset_model_settings_take_the_config_defaults():
    assert config_from_settings({}).to_dict() == EHRConfig().to_dict()
    dropout = config_from_settings({"hidden_dropout_prob": 0}).hidden_dropout_prob
    assert dropout == 0.0 and isinstance(dropout, float)


def test_resolved_model_settings_name_every_architecture_setting():
    resolved = resolve_model_settings({"hidden_size": 32})
    assert resolved["hidden_size"] == 32 and resolved["pooling"] == "mean"
    assert "vocab_size" not in resolved  # the tokenizer's
    assert (
        config_from_settings(resolved).to_dict()
        == config_from_settings({"hidden_size": 32}).to_dict()
    )


def test_checked_save_and_load_give_the_same_model_and_suit_the_auto_classes(tmp_path):
    model = tiny(pooling="mean")
    batch = collate(random_visits(3))
    model.save_checked(tmp_path / "enc")
    loaded = EHREncoder.load_checked(tmp_path / "enc")
    assert not loaded.training
    assert torch.equal(encode(model, batch).pooler_output, encode(loaded, batch).pooler_output)
    auto = AutoModel.from_pretrained(tmp_path / "enc").eval()
    assert torch.equal(encode(model, batch).pooler_output, encode(auto, batch).pooler_output)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_hidden_layers": 3}, "12 missing (first 'layers.2."),
        ({"num_hidden_layers": 1}, "12 unexpected (first 'layers.1."),
        ({"hidden_size": 64}, "of another shape (first "),
        ({"num_attention_heads": 3}, "invalid model configuration (hidden_size 32 is not a"),
        ({"intermediate_size": "wide"}, "invalid model configuration"),
        ({"model_type": "bert"}, "not an ehr-ssl model configuration"),
    ],
)
def test_loading_never_leaves_a_weight_at_random(tmp_path, change, message):
    """A config.json edited after saving (a layer more, another width) once loaded with the
    missing layers initialized at random and scored without a word."""
    import json

    tiny().save_checked(tmp_path / "enc")
    config_path = tmp_path / "enc" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with pytest.raises(InputError, match=message.replace("(", r"\(")) as caught:
        EHREncoder.load_checked(tmp_path / "enc")
    assert "\n" not in str(caught.value)


def test_only_safetensors_are_read(tmp_path):
    from safetensors.torch import load_file

    tiny().save_checked(tmp_path / "enc")
    weights = tmp_path / "enc" / "model.safetensors"
    torch.save(load_file(weights), tmp_path / "enc" / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(InputError, match="safetensors only"):
        EHREncoder.load_checked(tmp_path / "enc")
    (tmp_path / "enc" / "config.json").write_text("[]")
    with pytest.raises(InputError, match="model configuration is a JSON list"):
        EHREncoder.load_checked(tmp_path / "enc")


def _hand_made_batch() -> dict[str, torch.Tensor]:
    """Two visits: [CLS] static [HIST] h h [UNK] [VISIT] c c, and [CLS] static [HIST] [VISIT] c
    [PAD]... (no history events). Segments: 0 static, 1 history, 2 current."""
    cls, hist, visit, unk = 2, 4, 5, 3
    ids = torch.tensor([[cls, 10, hist, 20, 21, unk, visit, 30, 31],
                        [cls, 10, hist, visit, 30, 0, 0, 0, 0]])  # fmt: skip
    segments = torch.tensor([[0, 0, 1, 1, 1, 1, 2, 2, 2], [0, 0, 1, 2, 2, 0, 0, 0, 0]])
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    return {
        "input_ids": ids,
        "value_bins": torch.zeros_like(ids),
        "time_deltas": -torch.ones(ids.shape),
        "segment_ids": segments,
        "attention_mask": mask,
    }


def test_the_segment_readout_of_a_hand_made_batch():
    """[CLS] state, mean of the history's event states, mean of the current visit's event
    states, log1p of each segment's event count; structural tokens are not events, [UNK] is."""
    model = tiny()
    batch = _hand_made_batch()
    hidden = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(0))
    out = model.readout(hidden, batch["input_ids"], batch["segment_ids"],
                        batch["attention_mask"], "segments")  # fmt: skip
    d = 32
    assert out.shape == (2, 3 * d + 2) == (2, readout_dim(model.config, "segments"))
    torch.testing.assert_close(out[:, :d], hidden[:, 0])
    torch.testing.assert_close(out[0, d : 2 * d], hidden[0, 3:6].mean(0))  # h h [UNK]
    torch.testing.assert_close(out[0, 2 * d : 3 * d], hidden[0, 7:9].mean(0))  # c c
    assert torch.equal(out[1, d : 2 * d], torch.zeros(d))  # no history events
    torch.testing.assert_close(out[1, 2 * d : 3 * d], hidden[1, 4])
    expected_counts = torch.log1p(torch.tensor([[3.0, 2.0], [0.0, 1.0]]))
    torch.testing.assert_close(out[:, 3 * d :], expected_counts)
    pooled = model.readout(hidden, batch["input_ids"], batch["segment_ids"],
                           batch["attention_mask"], "pooled")  # fmt: skip
    assert torch.equal(pooled, model.pool(hidden, batch["attention_mask"]))
    assert readout_dim(model.config, "pooled") == d
    with pytest.raises(ValueError, match="readout must be one of"):
        model.readout(hidden, batch["input_ids"], batch["segment_ids"],
                      batch["attention_mask"], "max")  # fmt: skip


def test_the_wide_pooling_averages_a_learned_feature_map_in_every_summary():
    """Under pool_width K every pooled summary averages GELU(W h + b) (K wide) where it
    averaged the states: the pooled vector, the [CLS] part and each segment's mean; the counts
    are unchanged. Without it the features are the states themselves."""
    model, k, d = tiny(pool_width=48), 48, 32
    batch = _hand_made_batch()
    hidden = torch.randn(2, 9, d, generator=torch.Generator().manual_seed(0))
    args = (hidden, batch["input_ids"], batch["segment_ids"], batch["attention_mask"])
    layer = model.pool_features
    features = torch.nn.functional.gelu(hidden @ layer.weight.T + layer.bias)  # (2, 9, K)
    assert pooled_dim(model.config) == k and pooled_dim(tiny().config) == d
    means = torch.stack([features[0].mean(0), features[1, :5].mean(0)])  # all real tokens
    torch.testing.assert_close(model.pool(hidden, args[-1]), means)
    torch.testing.assert_close(model.pool(hidden, args[-1], "cls"), features[:, 0])
    out = model.readout(*args, "segments")
    assert out.shape == (2, 3 * k + 2) == (2, readout_dim(model.config, "segments"))
    torch.testing.assert_close(out[:, :k], features[:, 0])
    torch.testing.assert_close(out[0, k : 2 * k], features[0, 3:6].mean(0))  # h h [UNK]
    torch.testing.assert_close(out[1, 2 * k : 3 * k], features[1, 4])
    assert torch.equal(out[1, k : 2 * k], torch.zeros(k))  # no history events
    plain = tiny().readout(*args, "segments")
    torch.testing.assert_close(out[:, 3 * k :], plain[:, 3 * d :])  # the same log counts
    assert torch.equal(tiny().token_features(hidden), hidden)


def test_the_wide_pooling_starts_where_its_gelu_bends():
    """The feature map's weights start at a standard deviation of 1 / sqrt(D), its bias at 0,
    so that on unit-scale states its GELU inputs are unit-scale; every other linear layer keeps
    initializer_range."""
    model = tiny(pool_width=512)
    weight = model.pool_features.weight
    assert weight.std().item() == pytest.approx(32**-0.5, rel=0.05)
    assert torch.equal(model.pool_features.bias, torch.zeros(512))
    other = model.layers[0].fc_in.weight
    assert other.std().item() == pytest.approx(model.config.initializer_range, rel=0.1)


@pytest.mark.parametrize("width", [-1, 4 * MAX_WIDTH + 1])
def test_a_pool_width_out_of_range_is_refused(width):
    with pytest.raises(InputError, match="pool_width must be"):
        config_from_settings({"pool_width": width})


def test_the_windows_readout_of_a_hand_made_batch():
    """As "segments", then the mean state and log1p count of the history's events within each
    of the last 7, 30 and 365 days (bounds included); an event 2 days back is in every window,
    one 100 days back only in the 365-day one, one 3 years back in none."""
    model = tiny()
    batch = _hand_made_batch()
    hours = torch.zeros(2, 9)
    hours[0, 3:6] = torch.tensor([-48.0, -2400.0, -26280.0])  # h (2 d), h (100 d), [UNK] (3 y)
    hidden = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(0))
    args = (hidden, batch["input_ids"], batch["segment_ids"], batch["attention_mask"])
    out = model.readout(*args, "windows", hours)
    d = 32
    assert out.shape == (2, 6 * d + 5) == (2, readout_dim(model.config, "windows"))
    segments = model.readout(*args, "segments")
    torch.testing.assert_close(out[:, : 3 * d], segments[:, : 3 * d])
    windows = out[0, 3 * d : 6 * d].reshape(3, d)  # 7, 30, 365 days
    torch.testing.assert_close(windows[0], hidden[0, 3])
    torch.testing.assert_close(windows[1], hidden[0, 3])
    torch.testing.assert_close(windows[2], hidden[0, 3:5].mean(0))
    expected_counts = torch.log1p(torch.tensor([[3.0, 2.0, 1.0, 1.0, 2.0], [0, 1.0, 0, 0, 0]]))
    torch.testing.assert_close(out[:, 6 * d :], expected_counts)
    assert torch.equal(out[1, 3 * d : 6 * d], torch.zeros(3 * d))  # no history at all
    with pytest.raises(ValueError, match="needs time_deltas"):
        model.readout(*args, "windows")


@pytest.mark.parametrize("pool_width", [0, 48])
@pytest.mark.parametrize("readout", ["segments", "windows"])
@pytest.mark.parametrize("training", [False, True])
def test_the_forward_reads_out_what_it_is_asked(training, readout, pool_width):
    """The readout of a forward pass is `readout` of its own hidden states, in eval mode (read
    width group by width group) and in training mode, with or without the wide pooling; none
    unless asked."""
    model = tiny(pool_width=pool_width).train(training)
    batch = collate(random_visits(6))
    inputs = {k: batch[k] for k in INPUTS}
    with torch.no_grad():
        plain = model(**inputs)
        out = model(**inputs, readout=readout)
    assert plain.readout is None and out.readout.shape == (6, readout_dim(model.config, readout))
    expected = model.readout(out.last_hidden_state, batch["input_ids"], batch["segment_ids"],
                             batch["attention_mask"], readout, batch["time_deltas"])  # fmt: skip
    torch.testing.assert_close(out.readout, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("readout", ["pooled", "segments", "windows"])
def test_the_readout_does_not_see_its_batch_mates(readout):
    """Bitwise in eval mode, as the pooled vector (test_a_visit_does_not_see_its_batch_mates)."""
    model = tiny()
    visits = random_visits(40, seed=4)

    def read(batch):
        with torch.no_grad():
            return model(**{k: batch[k] for k in INPUTS}, readout=readout).readout

    together = read(collate(visits))
    alone = torch.cat([read(collate([v])) for v in visits])
    assert torch.equal(together, alone)
    reordered = read(collate(visits[::-1][:7], pad_to_multiple_of=64))
    assert torch.equal(reordered, together.flip(0)[:7])
    if readout == "pooled":
        assert torch.equal(together, model(**{k: collate(visits)[k] for k in INPUTS}).pooler_output)


def test_the_readout_is_set_by_fine_tuning_not_by_the_model_table(tmp_path):
    assert EHRConfig().readout == "pooled"
    with pytest.raises(ValueError, match="readout must be one of"):
        EHRConfig(readout="cls")
    with pytest.raises(
        InputError, match=r"unknown key 'readout' \(did you mean 'finetune.readout'"
    ):
        config_from_settings({"readout": "segments"})
    assert "readout" not in resolve_model_settings({})
    # a config.json written before the field loads as "pooled"
    tiny(readout="segments").save_checked(tmp_path / "enc")
    assert EHREncoder.load_checked(tmp_path / "enc").config.readout == "segments"
    import json

    path = tmp_path / "enc" / "config.json"
    document = json.loads(path.read_text())
    del document["readout"]
    path.write_text(json.dumps(document))
    assert EHREncoder.load_checked(tmp_path / "enc").config.readout == "pooled"


@pytest.mark.parametrize("value_embedding", ["shared", "per_code"])
def test_per_code_values_keep_which_code_had_which_value(value_embedding):
    """Two numeric events swap their bins: with shared bin embeddings the sum of the visit's
    inputs cannot tell (bin 9 is one vector for every code), with per-code directions it can;
    an event without a value (bin 0) gets nothing from its code's direction."""
    model = tiny(value_embedding=value_embedding)
    ids = torch.tensor([[7, 8, 9]])
    times, segments = torch.zeros(1, 3), torch.full((1, 3), 2)
    bins = torch.tensor([[2, 9, 0]])
    swapped = torch.tensor([[9, 2, 0]])
    with torch.no_grad():
        total = model.embed(ids, bins, times, segments).sum(dim=1)
        total_swapped = model.embed(ids, swapped, times, segments).sum(dim=1)
        no_value = model.embed(ids, torch.zeros_like(bins), times, segments)
        model.config.value_embedding = "shared"  # the same weights, without the directions
        no_value_shared = model.embed(ids, torch.zeros_like(bins), times, segments)
    assert torch.allclose(total, total_swapped, atol=1e-6) == (value_embedding == "shared")
    assert torch.equal(no_value, no_value_shared)


def test_per_code_values_save_and_load(tmp_path):
    model = tiny(value_embedding="per_code")
    with torch.no_grad():
        model.value_levels.mul_(3)  # away from the initial levels: loading must read them
    batch = collate(random_visits(3))
    model.save_checked(tmp_path / "enc")
    loaded = EHREncoder.load_checked(tmp_path / "enc")
    assert loaded.config.value_embedding == "per_code"
    assert torch.equal(encode(model, batch).pooler_output, encode(loaded, batch).pooler_output)
    auto = AutoModel.from_pretrained(tmp_path / "enc").eval()
    assert torch.equal(encode(model, batch).pooler_output, encode(auto, batch).pooler_output)


def hierarchical(**kwargs) -> EHREncoder:
    """`tiny` with 3 ancestors: codes 7 and 8 under ancestor 1, code 7 also under 3; code 9
    under 2; the other codes have none."""
    model = tiny(code_hierarchy="ancestors", n_code_ancestors=3, ancestors_per_code=2, **kwargs)
    ids = torch.zeros(50, 2, dtype=torch.long)
    ids[7], ids[8, 0], ids[9, 0] = torch.tensor([1, 3]), 1, 2
    model.set_code_ancestors(ids)
    return model


def test_a_code_vector_adds_its_ancestors_and_the_decoders_score_the_same_vectors():
    model = hierarchical()
    own, ancestors = model.code_embeddings.weight, model.ancestor_embeddings.weight
    with torch.no_grad():
        vectors = model.code_vectors(torch.tensor([7, 8, 9, 10]))
        table = model.code_table()
    torch.testing.assert_close(vectors[0], own[7] + ancestors[1] + ancestors[3])
    torch.testing.assert_close(vectors[1], own[8] + ancestors[1])  # slot 0 (none) adds nothing
    torch.testing.assert_close(vectors[3], own[10])
    torch.testing.assert_close(table[[7, 8, 9, 10]], vectors)
    assert torch.equal(tiny().code_table(), tiny().code_embeddings.weight)  # "none": its own


def test_codes_under_one_ancestor_share_what_it_learns():
    """A loss on code 8's input alone moves the ancestor it shares with code 7, so code 7's
    vector moves too; code 9 (another ancestor) and code 10 (none) do not move."""
    model = hierarchical().train()
    batch = collate(random_visits(2))
    batch["input_ids"][batch["attention_mask"]] = 10
    batch["input_ids"][0, 0] = 8
    before = model.code_table().detach().clone()
    model(**{k: batch[k] for k in INPUTS}).pooler_output.sum().backward()
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param -= 0.1 * param.grad
        moved = (model.code_table() - before).abs().sum(-1)
    assert moved[7] > 0 and moved[8] > 0 and moved[9] == 0 and moved[10] > 0
    assert torch.equal(model.ancestor_embeddings.weight.grad[2], torch.zeros(32))


def test_the_code_ancestors_save_and_load_with_the_weights(tmp_path):
    model = hierarchical()
    batch = collate(random_visits(3))
    model.save_checked(tmp_path / "enc")
    loaded = EHREncoder.load_checked(tmp_path / "enc")
    assert torch.equal(loaded.code_ancestor_ids, model.code_ancestor_ids)
    assert torch.equal(encode(model, batch).pooler_output, encode(loaded, batch).pooler_output)
    auto = AutoModel.from_pretrained(tmp_path / "enc").eval()
    assert torch.equal(encode(model, batch).pooler_output, encode(auto, batch).pooler_output)


@pytest.mark.parametrize(
    "ids, message",
    [(torch.zeros(50, 3, dtype=torch.long), "shape"), (torch.full((50, 2), 4), "outside")],
)
def test_code_ancestors_that_do_not_fit_the_config_are_refused(ids, message):
    with pytest.raises(ValueError, match=message):
        hierarchical().set_code_ancestors(ids)


def test_the_code_hierarchy_setting_is_checked_and_its_sizes_come_from_the_tokens():
    with pytest.raises(InputError, match="code_hierarchy must be one of"):
        config_from_settings({"code_hierarchy": "tree"})
    with pytest.raises(InputError, match="unknown key 'n_code_ancestors'"):
        config_from_settings({"n_code_ancestors": 5})
    assert resolve_model_settings({})["code_hierarchy"] == "none"


def test_a_damaged_ancestor_index_is_refused_at_loading(tmp_path):
    from safetensors.torch import load_file, save_file

    hierarchical().save_checked(tmp_path / "enc")
    path = tmp_path / "enc" / "model.safetensors"
    weights = load_file(path)
    weights["code_ancestor_ids"][7, 0] = 99  # beyond the config's 3 ancestors
    save_file(weights, path)
    with pytest.raises(InputError, match="code ancestor ids outside") as error:
        EHREncoder.load_checked(tmp_path / "enc")
    assert "model.safetensors" in str(error.value)


def test_a_visit_as_a_past_encounter_of_a_hand_made_batch():
    """[VISIT] dropped, the tokens after it one place left, the freed place padding; the
    current visit's events in the history segment; every other column moved with its token."""
    batch = _hand_made_batch()
    batch["value_bins"] = torch.arange(18).reshape(2, 9)
    batch["time_deltas"] = -torch.arange(18.0).reshape(2, 9)
    ids, bins, times, segments, mask = as_past_encounter(*(batch[k] for k in INPUTS))
    cls, hist, unk, pad = 2, 4, 3, 0
    assert ids.tolist() == [[cls, 10, hist, 20, 21, unk, 30, 31, pad],
                            [cls, 10, hist, 30, pad, pad, pad, pad, pad]]  # fmt: skip
    assert segments.tolist() == [[0, 0, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0, 0, 0]]
    assert mask.tolist() == [[True] * 8 + [False], [True] * 4 + [False] * 5]
    assert bins.tolist() == [[0, 1, 2, 3, 4, 5, 7, 8, 0], [9, 10, 11, 13, 0, 0, 0, 0, 0]]
    assert times[0, 6:8].tolist() == [-7.0, -8.0] and times[1, 3].item() == -13.0


def _with_forecast_state() -> EHREncoder:
    model = tiny()
    model.add_forecast_state()
    return model.eval()


@pytest.mark.parametrize("training", [False, True])
def test_the_forecast_readout_is_the_segments_and_the_past_encounters_forecast_state(training):
    """ "forecast": the segment readout of the visit as it is, then the forecast state of the
    pooled vector of the visit read as a past encounter."""
    model = tiny(hidden_dropout_prob=0.0)  # training mode: the same numbers in every pass
    model.add_forecast_state()
    model.train(training)
    batch = collate(random_visits(6))
    inputs = [batch[k] for k in INPUTS]
    with torch.no_grad():
        out = model(*inputs, readout="forecast")
        segments = model(*inputs, readout="segments").readout
        past = model(*as_past_encounter(*inputs[:4], inputs[4].bool())).pooler_output
    assert out.readout.shape == (6, readout_dim(model.config, "forecast")) == (6, 3 * 32 + 2 + 32)
    torch.testing.assert_close(out.readout[:, : 3 * 32 + 2], segments)
    torch.testing.assert_close(out.readout[:, 3 * 32 + 2 :], model.forecast_state(past))


def test_the_forecast_readout_does_not_see_its_batch_mates():
    """Bitwise, as every readout: the state map of one visit and of thirty (a matrix product
    whose CPU kernel, unpadded, depends on the number of rows) round alike."""
    model = _with_forecast_state()
    visits = random_visits(30, seed=5)

    def read(batch):
        with torch.no_grad():
            return model(**{k: batch[k] for k in INPUTS}, readout="forecast").readout

    together = read(collate(visits))
    assert torch.equal(together, torch.cat([read(collate([v])) for v in visits]))
    assert torch.equal(read(collate(visits[3:10])), together[3:10])


def test_the_forecast_state_comes_from_pretraining_and_is_saved(tmp_path):
    """Only an encoder with a forecast state reads the "forecast" readout; the state is set by
    the forecast term (add_forecast_state), never by a [model] table, and saved with the
    weights."""
    with pytest.raises(ValueError, match="forecast state that pretraining with the forecast"):
        EHRConfig(readout="forecast")
    with pytest.raises(ValueError, match="forecast state that pretraining with the forecast"):
        tiny()(**{k: collate(random_visits(2))[k] for k in INPUTS}, readout="forecast")
    with pytest.raises(InputError, match=r"did you mean 'objective.forecast_weight'"):
        config_from_settings({"forecast_state": True})
    assert "forecast_state" not in resolve_model_settings({})
    model = _with_forecast_state()
    weight = model.forecast_state.transform.weight.clone()
    model.add_forecast_state()  # a second call keeps the state it has
    assert torch.equal(model.forecast_state.transform.weight, weight)
    model.save_checked(tmp_path / "enc")
    loaded = EHREncoder.load_checked(tmp_path / "enc")
    assert loaded.config.forecast_state
    assert torch.equal(loaded.forecast_state.transform.weight, weight)
