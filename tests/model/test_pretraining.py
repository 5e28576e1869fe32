"""The pretraining objectives wired together: terms switch with their weights, the total is the
weighted sum, randomness comes from the generator, and the loss falls on a fixed batch."""

from __future__ import annotations

import polars as pl
import pytest
import torch
import torch.nn.functional as F

from ehr_ssl.config import ObjectiveConfig
from ehr_ssl.model.encoder import EHRConfig, EHREncoder
from ehr_ssl.model.losses import IGNORE_INDEX
from ehr_ssl.model.pretraining import ENCODER_INPUTS, PretrainingModel, visit_value_targets
from ehr_ssl.tokens.batching import TokenDataset, collate
from ehr_ssl.tokens.tokenizer import Tokenizer
from ehr_ssl.tokens.vocab import SEGMENT_HISTORY


def _model(tokens, pool_width: int = 0, **objective) -> PretrainingModel:
    """A small model; its objective starts from masked + contrastive (the pair whose wiring most
    of these tests check), then `objective`."""
    objective = {"contrastive_weight": 1.0, "forecast_weight": 0.0, **objective}
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
        pool_width=pool_width,
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
        ({"bag_weight": 0.5}, {"masked_code", "masked_bin", "bag", "contrastive"}),
        ({"masked_weight": 0.0, "contrastive_weight": 0.0, "bag_weight": 1.0}, {"bag"}),
        ({"forecast_weight": 0.7}, {"masked_code", "masked_bin", "contrastive", "forecast"}),
        ({"masked_weight": 0.0, "contrastive_weight": 0.0, "forecast_weight": 1.0}, {"forecast"}),
        (
            {"contrastive_weight": 0.0, "forecast_weight": 1.0, "forecast_target": "horizon"},
            {"masked_code", "masked_bin", "forecast"},
        ),
        (
            {"visit_values_weight": 0.3},
            {"masked_code", "masked_bin", "contrastive", "visit_values"},
        ),
        (
            {"masked_weight": 0.0, "contrastive_weight": 0.0, "visit_values_weight": 1.0},
            {"visit_values"},
        ),
    ],
)
def test_terms_follow_weights_and_sum(cohort_tokens, weights, terms):
    model = _model(cohort_tokens, **weights)
    losses = model(_batch(cohort_tokens), torch.Generator().manual_seed(0))
    assert set(losses) == terms | {"loss", "encoder_tokens", "encoder_slots"}
    o = model.objective
    expected = (
        o.masked_weight
        * (losses.get("masked_code", 0) + o.value_bin_weight * losses.get("masked_bin", 0))
        + o.contrastive_weight * losses.get("contrastive", 0)
        + o.bag_weight * losses.get("bag", 0)
        + o.forecast_weight * losses.get("forecast", 0)
        + o.visit_values_weight * losses.get("visit_values", 0)
    )
    torch.testing.assert_close(losses["loss"], torch.as_tensor(expected))
    assert all(torch.isfinite(losses[k]) for k in terms | {"loss"})


@pytest.mark.parametrize(
    "weights",
    [
        {"contrastive_weight": 1.0},
        {"bag_weight": 1.0},
        {"forecast_weight": 1.0},
        {"visit_values_weight": 1.0},
        {"masked_weight": 1.0},
    ],
)
def test_every_term_on_the_visit_vector_trains_the_wide_pooling(cohort_tokens, weights):
    """Under model.pool_width each term that reads the pooled vector (K wide) sends a gradient
    to the feature map; the masked-event term, on token states, does not."""
    off = {"masked_weight": 0.0, "contrastive_weight": 0.0}
    model = _model(cohort_tokens, pool_width=40, **(off | weights))
    losses = model(_batch(cohort_tokens), torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grad = model.encoder.pool_features.weight.grad
    assert model.encoder.pool_features.weight.shape == (40, 32)
    reads_the_vector = "masked_weight" not in weights
    assert (grad is not None and bool(grad.abs().sum() > 0)) == reads_the_vector


def test_randomness_comes_from_the_generator(cohort_tokens):
    model = _model(cohort_tokens)
    batch = _batch(cohort_tokens)
    a = model(batch, torch.Generator().manual_seed(5))["loss"]
    b = model(batch, torch.Generator().manual_seed(5))["loss"]
    c = model(batch, torch.Generator().manual_seed(6))["loss"]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "weights",
    [
        {},
        {"contrastive_weight": 0.0},
        {"masked_weight": 0.0},
        {"masked_weight": 0.0, "contrastive_weight": 0.0, "bag_weight": 1.0},
        {"masked_weight": 0.0, "contrastive_weight": 0.0, "forecast_weight": 1.0},
    ],
)
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


def test_masked_loss_reaches_embeddings_of_codes_absent_from_the_batch(cohort_tokens):
    """The code decoder is the embedding matrix (tied): the masked term's softmax sends a
    gradient to every code's embedding, also codes the batch never shows. Untied, the rows of
    absent codes would get none."""
    model = _model(cohort_tokens, contrastive_weight=0.0)
    batch = _batch(cohort_tokens, n=4)
    model(batch, torch.Generator().manual_seed(0))["loss"].backward()
    grad = model.encoder.code_embeddings.weight.grad  # (V, D)
    present = torch.zeros(grad.shape[0], dtype=torch.bool)
    present[batch["input_ids"].unique()] = True
    absent = ~present
    absent[: model.encoder.config.pad_token_id + 1] = False
    assert absent.sum() > 0
    assert (grad[absent].abs().sum(dim=1) > 0).all()
    assert all(p.shape != grad.shape for p in model.masked_head.parameters())  # no own decoder


def test_one_pass_equals_separate_encodings(cohort_tokens):
    """The two views share one encoder batch: every term must equal the same term computed from
    separate encodings (catches misaligned masked targets or shifted contrastive pairs)."""
    from ehr_ssl.model.losses import info_nce_loss, masked_event_loss
    from ehr_ssl.model.masking import mask_events
    from ehr_ssl.model.pretraining import ENCODER_INPUTS
    from ehr_ssl.model.views import augment_view

    model = _model(cohort_tokens).eval()
    batch = _batch(cohort_tokens)
    losses = model(batch, torch.Generator().manual_seed(3))

    g, o = torch.Generator().manual_seed(3), model.objective
    knobs = {
        "event_dropout": o.event_dropout,
        "history_crop": o.history_crop,
        "time_jitter": o.time_jitter,
    }
    view_a = augment_view(batch, generator=g, **knobs)
    view_a, code_labels, bin_labels = mask_events(
        view_a,
        vocab_size=model.encoder.config.vocab_size,
        generator=g,
        rate=o.mask_rate,
        unit=o.mask_unit,
    )
    view_b = augment_view(batch, generator=g, **knobs)
    encoded_a = model.encoder(**{k: view_a[k] for k in ENCODER_INPUTS})
    encoded_b = model.encoder(**{k: view_b[k] for k in ENCODER_INPUTS})
    code_logits, bin_logits = model.masked_head(
        encoded_a.last_hidden_state, model.encoder.code_embeddings.weight
    )
    code, value = masked_event_loss(code_logits, code_labels, bin_logits, bin_labels)
    contrastive = info_nce_loss(
        model.projection(encoded_a.pooler_output),
        model.projection(encoded_b.pooler_output),
        temperature=o.temperature,
    )
    torch.testing.assert_close(losses["masked_code"], code, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["masked_bin"], value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["contrastive"], contrastive, rtol=1e-5, atol=1e-5)


def _contrastive_rank(rank: int, world: int, port: int, z_a, z_b, out_dir: str) -> None:
    """One process of the DDP test: its slice of the pairs, negatives gathered from all."""
    import torch.distributed as dist

    from ehr_ssl.model.pretraining import contrastive_loss

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    n = z_a.shape[0] // world
    a = z_a[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    b = z_b[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    loss = contrastive_loss(a, b, temperature=0.5)
    loss.backward()
    torch.save({"loss": loss.detach(), "a": a.grad, "b": b.grad}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_contrastive_negatives_are_gathered_across_processes(tmp_path):
    """Two gloo processes, each with half the pairs: the mean of their losses is the
    single-process loss on the whole batch, and their gradients (averaged as DDP does) match."""
    import socket

    import torch.multiprocessing as mp

    from ehr_ssl.model.losses import info_nce_loss

    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_contrastive_rank, args=(2, port, z_a, z_b, str(tmp_path)), nprocs=2)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    full_a, full_b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    full = info_nce_loss(full_a, full_b, temperature=0.5)
    full.backward()
    torch.testing.assert_close((parts[0]["loss"] + parts[1]["loss"]) / 2, full)
    # all_gather's backward sums every rank's gradient into the local rows; DDP then averages
    # parameter gradients over the 2 ranks, hence the division.
    torch.testing.assert_close(torch.cat([p["a"] for p in parts]) / 2, full_a.grad)
    torch.testing.assert_close(torch.cat([p["b"] for p in parts]) / 2, full_b.grad)


def test_pretraining_masks_at_its_rate_with_the_80_10_10_split(cohort_tokens, monkeypatch):
    import math

    import ehr_ssl.model.pretraining as module
    from ehr_ssl.model.masking import event_tokens
    from ehr_ssl.tokens.vocab import MASK_ID

    seen = {}
    original = module.mask_events

    def spy(batch, **kwargs):
        seen["batch"], seen["out"] = batch, original(batch, **kwargs)
        return seen["out"]

    monkeypatch.setattr(module, "mask_events", spy)
    model = _model(cohort_tokens, contrastive_weight=0.0, mask_rate=0.3)
    model(_batch(cohort_tokens, n=400), torch.Generator().manual_seed(0))
    corrupted, code_labels, _ = seen["out"]
    events, chosen = event_tokens(seen["batch"]), code_labels != -100
    n_events, n_chosen = int(events.sum()), int(chosen.sum())
    new, old = corrupted["input_ids"][chosen], seen["batch"]["input_ids"][chosen]

    def close(count: int, total: int, p: float) -> bool:  # within 5 standard deviations
        return abs(count / total - p) <= 5 * math.sqrt(p * (1 - p) / total)

    assert n_events > 3000 and not (chosen & ~events).any()
    assert close(n_chosen, n_events, 0.3)
    assert close(int((new == MASK_ID).sum()), n_chosen, 0.8)
    assert close(int((new == old).sum()), n_chosen, 0.1)


def test_pretraining_steps_with_disjoint_views(cohort_tokens):
    model = _model(cohort_tokens, contrastive_views="disjoint")
    batch = _batch(cohort_tokens)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        losses = model(batch, generator)
        assert {"masked_code", "contrastive"} <= set(losses)
        assert all(torch.isfinite(losses[k]) for k in ("loss", "contrastive"))
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()


def _pair_batch(tokens, n=24, paired=True) -> dict[str, torch.Tensor]:
    """A batch of collate_pairs whose visits include two of one patient (a same-group pair of
    rows); `paired=False`: every partner a placeholder."""
    import numpy as np

    from ehr_ssl.data.splits import SPLITS
    from ehr_ssl.tokens.pairs import PairedDataset, PatientVisits, collate_pairs
    from ehr_ssl.training.pretrain import pretraining_selection

    dataset = TokenDataset(tokens, pretraining_selection(False), splits=SPLITS)
    patients = PatientVisits.of_dataset(dataset)
    counts = patients.partner_counts(np.arange(len(dataset)))
    first = int(np.flatnonzero(counts >= 2)[0])  # a patient with >= 3 train visits
    same = int(patients.draw_partners(np.array([first]), np.random.default_rng(0))[0])
    visits = np.array([first, same, *[i for i in range(n) if i not in (first, same)][: n - 2]])
    partners = patients.draw_partners(visits, np.random.default_rng(1))
    if not paired:
        partners[:] = -1
    groups = patients.groups(visits)
    assert groups[0] == groups[1] and len(set(groups.tolist())) < n
    triples = zip(visits.tolist(), partners.tolist(), groups.tolist(), strict=True)
    return collate_pairs([PairedDataset(dataset)[t] for t in triples])


def test_patient_views_one_pass_equals_separate_encodings(cohort_tokens):
    """View A is the visit (augmented, masked), view B its partner (augmented); the loss masks
    same-patient rows: every term equals the one computed step by step."""
    from ehr_ssl.model.losses import info_nce_loss, masked_event_loss
    from ehr_ssl.model.masking import mask_events
    from ehr_ssl.model.pretraining import ENCODER_INPUTS
    from ehr_ssl.model.views import augment_view
    from ehr_ssl.tokens.pairs import split_partner

    model = _model(cohort_tokens, contrastive_views="patient").eval()
    batch = _pair_batch(cohort_tokens)
    losses = model(batch, torch.Generator().manual_seed(3))

    visits, partner, pairs = split_partner(batch)
    assert pairs["paired"].sum() > 10
    g, o = torch.Generator().manual_seed(3), model.objective
    knobs = {k: getattr(o, k) for k in ("event_dropout", "history_crop", "time_jitter")}
    view_a = augment_view(visits, generator=g, **knobs)
    view_a, code_labels, bin_labels = mask_events(
        view_a,
        vocab_size=model.encoder.config.vocab_size,
        generator=g,
        rate=o.mask_rate,
        unit=o.mask_unit,
    )
    view_b = augment_view(partner, generator=g, **knobs)
    encoded_a = model.encoder(**{k: view_a[k] for k in ENCODER_INPUTS})
    encoded_b = model.encoder(**{k: view_b[k] for k in ENCODER_INPUTS})
    code_logits, bin_logits = model.masked_head(
        encoded_a.last_hidden_state, model.encoder.code_embeddings.weight
    )
    code, _ = masked_event_loss(code_logits, code_labels, bin_logits, bin_labels)
    z_a = model.projection(encoded_a.pooler_output)
    z_b = model.projection(encoded_b.pooler_output)
    contrastive = info_nce_loss(z_a, z_b, temperature=o.temperature, **pairs)
    torch.testing.assert_close(losses["masked_code"], code, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses["contrastive"], contrastive, rtol=1e-5, atol=1e-5)
    unmasked = info_nce_loss(z_a, z_b, temperature=o.temperature, paired=pairs["paired"])
    assert not torch.allclose(unmasked, contrastive)  # the same-patient rows do matter


def test_patient_views_without_any_pair_give_a_finite_loss(cohort_tokens):
    model = _model(cohort_tokens, contrastive_views="patient")
    losses = model(_pair_batch(cohort_tokens, paired=False), torch.Generator().manual_seed(0))
    assert losses["contrastive"].item() == 0.0
    assert torch.isfinite(losses["loss"]) and losses["masked_code"] > 0
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_patient_views_need_batches_with_partners(cohort_tokens):
    model = _model(cohort_tokens, contrastive_views="patient")
    with pytest.raises(ValueError, match="partner visits"):
        model(_batch(cohort_tokens, n=4), torch.Generator().manual_seed(0))
    # Without the contrastive term there are no views to pair: a plain batch is fine.
    model = _model(cohort_tokens, contrastive_views="patient", contrastive_weight=0.0)
    assert torch.isfinite(model(_batch(cohort_tokens, n=4), torch.Generator())["loss"])


@pytest.mark.parametrize("n_chunks", [2, 3, 7])
def test_encoding_in_length_chunks_equals_one_pass(cohort_tokens, n_chunks):
    """Rows sorted by length and encoded in passes padded to their own longest: the same
    outputs in the views' row order as one padded pass, on fewer padded slots."""
    from ehr_ssl.model.pretraining import encode_by_length

    model = _model(cohort_tokens).eval()
    long_rows, short_rows = _batch(cohort_tokens, n=12), _batch(cohort_tokens, n=12)
    short_rows = {k: v[:, :5] if v.dim() == 2 else v for k, v in short_rows.items()}
    views, limit = [long_rows, short_rows], model.encoder.config.max_position_embeddings
    one, one_slots = encode_by_length(model.encoder, views, n_chunks=1, multiple=1, limit=limit)
    chunked, slots = encode_by_length(
        model.encoder, views, n_chunks=n_chunks, multiple=1, limit=limit
    )
    mask = torch.cat(
        [
            F.pad(
                v["attention_mask"],
                (0, one.last_hidden_state.shape[1] - v["attention_mask"].shape[1]),
            )
            for v in views
        ]
    )
    torch.testing.assert_close(chunked.pooler_output, one.pooler_output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        chunked.last_hidden_state[mask], one.last_hidden_state[mask], rtol=1e-5, atol=1e-5
    )
    assert slots < one_slots == mask.numel()


@pytest.mark.parametrize("forecast_share", [1.0, 0.3])
def test_bag_term_of_each_process_averages_to_the_whole_batch(cohort_tokens, forecast_share):
    """Under data parallelism each process scores its rows; the mean over processes of the
    scaled masked, bag and forecast terms (what DDP's averaging takes) is the whole batch's,
    also when only a share of the visits are forecast (unevenly between the processes)."""
    model = _model(
        cohort_tokens,
        contrastive_weight=0.0,
        bag_weight=1.0,
        forecast_weight=1.0,
        forecast_share=forecast_share,
        visit_values_weight=1.0,
    )
    batch = _batch(cohort_tokens)
    whole = model(batch, torch.Generator().manual_seed(0))
    halves = [
        model(batch, torch.Generator().manual_seed(0), rows=rows)
        for rows in (slice(0, 12), slice(12, 24))
    ]
    for term in ("bag", "masked_code", "forecast", "visit_values"):
        torch.testing.assert_close((halves[0][term] + halves[1][term]) / 2, whole[term])


def test_bag_head_exists_only_when_its_term_is_on(cohort_tokens):
    """A run without the bag term keeps the state dict (and checkpoints) it had before."""
    assert not any(k.startswith("bag_head.") for k in _model(cohort_tokens).state_dict())
    with_bag = _model(cohort_tokens, bag_weight=1.0).state_dict()
    assert {"bag_head.transform.weight", "bag_head.code_bias"} <= set(with_bag)


def test_forecast_term_reads_the_prefix_view_and_leaves_the_contrastive_pair(cohort_tokens):
    """The prefix view is encoded after the contrastive pair: switching the forecast on leaves
    the other terms as they were (its cut is drawn after their draws), and the forecast head
    exists only when the term is on."""
    batch = _batch(cohort_tokens)
    base = _model(cohort_tokens)
    without = base(batch, torch.Generator().manual_seed(0))
    model = _model(cohort_tokens, forecast_weight=1.0)
    model.load_state_dict(base.state_dict(), strict=False)  # the same weights but its head
    assert {"encoder.forecast_state.transform.weight", "forecast_code_bias"} <= set(
        model.state_dict()
    )
    assert model.encoder.config.forecast_state
    without_term = _model(cohort_tokens)
    assert not any("forecast" in k for k in without_term.state_dict())
    assert not without_term.encoder.config.forecast_state
    with_forecast = model(batch, torch.Generator().manual_seed(0))
    for term in ("masked_code", "masked_bin", "contrastive"):
        torch.testing.assert_close(with_forecast[term], without[term])


def test_forecast_share_encodes_and_scores_only_the_drawn_prefixes(cohort_tokens):
    """With forecast_share, ceil(share * B) visits drawn at random get a prefix: the encoder
    runs on those prefixes only (after view A), and the term is the one computed from them
    alone; the other terms and their draws are those of a share of 1."""
    from ehr_ssl.model.forecast import forecast_view
    from ehr_ssl.model.losses import bag_of_codes_loss
    from ehr_ssl.model.masking import mask_events

    batch = _batch(cohort_tokens)
    full = _model(cohort_tokens, contrastive_weight=0.0, forecast_weight=1.0, forecast_share=1.0)
    model = _model(cohort_tokens, contrastive_weight=0.0, forecast_weight=1.0, forecast_share=0.3)
    model.load_state_dict(full.state_dict())
    model.eval(), full.eval()
    rows_seen = []
    hook = model.encoder.register_forward_hook(
        lambda module, args, kwargs, out: rows_seen.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    losses = model(batch, torch.Generator().manual_seed(5))
    hook.remove()
    reference = full(batch, torch.Generator().manual_seed(5))
    for term in ("masked_code", "masked_bin"):
        torch.testing.assert_close(losses[term], reference[term])

    g = torch.Generator().manual_seed(5)  # the draws in the model's order: masking, cut, rows
    mask_events(
        batch, vocab_size=model.encoder.config.vocab_size, generator=g, rate=0.15, unit="token"
    )
    prefix, targets = forecast_view(batch, generator=g)
    order = torch.randperm(24, generator=g)
    drawn = torch.zeros(24, dtype=torch.bool)
    drawn[order[:8]] = True  # ceil(0.3 * 24)
    scored = drawn & (targets != IGNORE_INDEX).any(dim=1)
    assert 0 < int(scored.sum()) <= 8
    assert rows_seen == [24 + int(scored.sum())]  # view A, then the drawn prefixes only
    pooled = model.encoder(**{k: prefix[k][scored] for k in ENCODER_INPUTS}).pooler_output
    logits = model.forecast_logits(pooled)
    expected = bag_of_codes_loss(logits, targets[scored])
    torch.testing.assert_close(losses["forecast"], expected, rtol=1e-5, atol=1e-5)


def test_a_forecast_share_of_one_draws_nothing_more(cohort_tokens, monkeypatch):
    """A share of 1 leaves every draw as before the setting existed: no row subset is drawn
    (it would shift every later step's draws)."""
    import ehr_ssl.model.pretraining as pretraining

    def refuse(*args):
        raise AssertionError("drew a row subset at a share of 1")

    monkeypatch.setattr(pretraining, "_forecast_subset", refuse)
    model = _model(cohort_tokens, contrastive_weight=0.0, forecast_weight=1.0, forecast_share=1.0)
    assert torch.isfinite(model(_batch(cohort_tokens), torch.Generator().manual_seed(0))["loss"])


@pytest.mark.parametrize(
    ("share", "rows", "chosen"), [(0.55, 100, 55), (0.3, 24, 8), (1e-6, 10, 1)]
)
def test_forecast_subset_draws_ceil_of_the_share(share, rows, chosen):
    from ehr_ssl.model.pretraining import _forecast_subset

    targets = torch.ones(rows, 3, dtype=torch.long)
    kept = _forecast_subset(targets, share, torch.Generator().manual_seed(0))
    assert int((kept != IGNORE_INDEX).any(dim=1).sum()) == chosen


def test_a_batch_without_a_scored_prefix_gives_a_zero_forecast_term(cohort_tokens, monkeypatch):
    """When no drawn visit has a forecast target (a process's rows under data parallelism can
    be all such), the prefix view is not encoded and the term is exactly 0 with a gradient
    that reaches the forecast head (zeros), as DDP needs every parameter in the graph."""
    import ehr_ssl.model.pretraining as pretraining

    monkeypatch.setattr(
        pretraining, "_forecast_subset", lambda t, share, g: torch.full_like(t, IGNORE_INDEX)
    )
    model = _model(cohort_tokens, contrastive_weight=0.0, forecast_weight=1.0, forecast_share=0.5)
    losses = model(_batch(cohort_tokens), torch.Generator().manual_seed(0))
    assert losses["forecast"].item() == 0.0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grad = model.encoder.forecast_state.transform.weight.grad
    assert grad is not None and torch.equal(grad, torch.zeros_like(grad))


def test_visit_values_query_the_statics_and_current_visit_numeric_events(cohort_tokens):
    """The queries are exactly the numeric events outside the history, with their own code and
    bin; the history, padding and events without a value are never queried."""
    batch = _batch(cohort_tokens)
    targets = visit_value_targets(batch)
    queried = targets["visit_values"] != IGNORE_INDEX
    expected = (
        batch["attention_mask"].bool()
        & (batch["value_bins"] > 0)
        & (batch["segment_ids"] != SEGMENT_HISTORY)
    )
    assert queried.any() and torch.equal(queried, expected)
    assert not (queried & (batch["segment_ids"] == SEGMENT_HISTORY)).any()
    torch.testing.assert_close(
        targets["visit_values"][queried], batch["value_bins"][queried].long()
    )
    torch.testing.assert_close(targets["visit_value_codes"][queried], batch["input_ids"][queried])


def test_visit_values_term_needs_the_visit_vector(cohort_tokens):
    """The term's gradient reaches the encoder only through the pooled vector and the code
    embedding: its value depends on the visit (two visits' vectors swapped give another
    loss), and its head exists only when the term is on."""
    assert not any(k.startswith("values_head.") for k in _model(cohort_tokens).state_dict())
    model = _model(
        cohort_tokens, masked_weight=0.0, contrastive_weight=0.0, visit_values_weight=1.0
    )
    batch = _batch(cohort_tokens)
    targets = visit_value_targets(batch)
    pooled = model.encoder(**{k: batch[k] for k in ENCODER_INPUTS}).pooler_output
    term = model._visit_values_term(pooled, targets, {})
    shuffled = model._visit_values_term(pooled.roll(1, dims=0), targets, {})
    # A head blind to the vector would give the very same float; at initialization the head's
    # weights are small, so the two differ by about 1e-5 of the loss: no relative tolerance.
    assert torch.isfinite(term) and term.item() != shuffled.item()
    term.backward()
    assert model.values_head.visit.weight.grad.abs().sum() > 0
