"""The loss functions against slow references written from their definitions, and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ehr_ssl.model import losses
from ehr_ssl.model.losses import (
    IGNORE_INDEX,
    bag_of_codes_loss,
    info_nce_loss,
    linear_cross_entropy,
    masked_event_loss,
)

# ----------------------------------------------------------------------------------------------
# masked_event_loss


def reference_masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over target positions of -log softmax(logits)[label], one position at a time."""
    total, count = 0.0, 0
    batch, tokens, _ = logits.shape
    for b in range(batch):
        for t in range(tokens):
            label = int(labels[b, t])
            if label == IGNORE_INDEX:
                continue
            row = [float(x) for x in logits[b, t]]
            peak = max(row)
            log_sum_exp = peak + math.log(sum(math.exp(x - peak) for x in row))
            total += log_sum_exp - row[label]
            count += 1
    return total / count if count else 0.0


def random_labels(
    shape: tuple[int, int], n_classes: int, target_fraction: float, generator: torch.Generator
) -> torch.Tensor:
    labels = torch.randint(0, n_classes, shape, generator=generator)
    is_target = torch.rand(shape, generator=generator) < target_fraction
    return labels.masked_fill(~is_target, IGNORE_INDEX)


def random_batch(
    seed: int,
    batch: int = 3,
    tokens: int = 7,
    vocab: int = 11,
    bins: int = 5,
    code_fraction: float = 0.3,
    bin_fraction: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    code_logits = 3 * torch.randn(batch, tokens, vocab, generator=generator)
    bin_logits = 3 * torch.randn(batch, tokens, bins, generator=generator)
    code_labels = random_labels((batch, tokens), vocab, code_fraction, generator)
    bin_labels = random_labels((batch, tokens), bins, bin_fraction, generator)
    return code_logits, code_labels, bin_logits, bin_labels


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fractions", [(0.15, 0.1), (0.5, 0.5), (1.0, 1.0)])
def test_masked_event_loss_matches_reference(seed: int, fractions: tuple[float, float]) -> None:
    code_logits, code_labels, bin_logits, bin_labels = random_batch(
        seed, code_fraction=fractions[0], bin_fraction=fractions[1]
    )
    assert (code_labels != IGNORE_INDEX).any()
    code_loss, bin_loss = masked_event_loss(code_logits, code_labels, bin_logits, bin_labels)
    assert code_loss.shape == () and bin_loss.shape == ()
    expected_code = reference_masked_cross_entropy(code_logits, code_labels)
    expected_bin = reference_masked_cross_entropy(bin_logits, bin_labels)
    assert code_loss.item() == pytest.approx(expected_code, rel=1e-5, abs=1e-6)
    assert bin_loss.item() == pytest.approx(expected_bin, rel=1e-5, abs=1e-6)


# 1.0: every position a target, the pretraining model's case (no gather of the target rows).
@pytest.mark.parametrize("code_fraction", [0.4, 1.0])
def test_masked_event_loss_gradient_is_softmax_minus_one_hot_over_targets(
    code_fraction: float,
) -> None:
    code_logits, code_labels, bin_logits, bin_labels = random_batch(7, code_fraction=code_fraction)
    code_logits.requires_grad_(True)
    code_loss, _ = masked_event_loss(code_logits, code_labels, bin_logits, bin_labels)
    code_loss.backward()
    is_target = code_labels != IGNORE_INDEX
    one_hot = F.one_hot(code_labels.clamp(min=0), code_logits.shape[-1]).float()
    expected = (code_logits.detach().softmax(-1) - one_hot) * is_target[..., None]
    expected = expected / is_target.sum()
    torch.testing.assert_close(code_logits.grad, expected)


def test_all_target_rows_give_the_gathered_loss_and_gradient_bitwise() -> None:
    """Every row a target (no gather) against the same rows beside a non-target row (gathered)."""
    code_logits, code_labels, bin_logits, bin_labels = random_batch(3, code_fraction=1.0)
    code_labels = code_labels.clamp(min=0)  # every position a target
    extra = torch.full((3, 1), IGNORE_INDEX)
    plain = code_logits.clone().requires_grad_(True)
    padded = torch.cat([code_logits, 5 * torch.randn(3, 1, code_logits.shape[-1])], 1)
    padded.requires_grad_(True)
    loss, _ = masked_event_loss(plain, code_labels, bin_logits, bin_labels)
    gathered, _ = masked_event_loss(
        padded, torch.cat([code_labels, extra], 1), bin_logits, bin_labels
    )
    assert torch.equal(loss, gathered)
    (loss + gathered).backward()
    assert torch.equal(plain.grad, padded.grad[:, :-1])
    assert torch.equal(padded.grad[:, -1], torch.zeros_like(padded.grad[:, -1]))


def test_no_targets_gives_exact_zero_with_zero_gradient() -> None:
    code_logits, _, bin_logits, _ = random_batch(0)
    code_logits.requires_grad_(True)
    bin_logits.requires_grad_(True)
    no_targets = torch.full(code_logits.shape[:2], IGNORE_INDEX)
    code_loss, bin_loss = masked_event_loss(code_logits, no_targets, bin_logits, no_targets)
    assert code_loss.item() == 0.0 and bin_loss.item() == 0.0
    assert code_loss.requires_grad and bin_loss.requires_grad
    (code_loss + bin_loss).backward()
    assert torch.equal(code_logits.grad, torch.zeros_like(code_logits))
    assert torch.equal(bin_logits.grad, torch.zeros_like(bin_logits))


def test_one_empty_term_does_not_disturb_the_other() -> None:
    # The common case: masked events in the batch, none of them numeric.
    code_logits, code_labels, bin_logits, _ = random_batch(1, code_fraction=0.5)
    no_bins = torch.full(code_labels.shape, IGNORE_INDEX)
    code_loss, bin_loss = masked_event_loss(code_logits, code_labels, bin_logits, no_bins)
    assert bin_loss.item() == 0.0
    assert code_loss.item() == pytest.approx(
        reference_masked_cross_entropy(code_logits, code_labels), rel=1e-5
    )


@pytest.mark.parametrize(("vocab", "bins"), [(2, 3), (11, 5), (1000, 21)])
def test_uniform_logits_give_log_of_class_count(vocab: int, bins: int) -> None:
    _, code_labels, _, bin_labels = random_batch(2, vocab=vocab, bins=bins, code_fraction=0.5)
    code_logits = torch.full((*code_labels.shape, vocab), 1.7)
    bin_logits = torch.zeros((*bin_labels.shape, bins))
    code_loss, bin_loss = masked_event_loss(code_logits, code_labels, bin_logits, bin_labels)
    assert code_loss.item() == pytest.approx(math.log(vocab), rel=1e-6)
    assert bin_loss.item() == pytest.approx(math.log(bins), rel=1e-6)


def test_confident_correct_logits_give_zero() -> None:
    _, code_labels, _, bin_labels = random_batch(3, code_fraction=0.5, bin_fraction=0.5)
    code_logits = 50.0 * F.one_hot(code_labels.clamp(min=0), 11).float()
    bin_logits = 50.0 * F.one_hot(bin_labels.clamp(min=0), 5).float()
    code_loss, bin_loss = masked_event_loss(code_logits, code_labels, bin_logits, bin_labels)
    # Each term is log(1 + (C - 1) e^-50) ~ (C - 1) e^-50.
    assert 0.0 <= code_loss.item() < 1e-15
    assert 0.0 <= bin_loss.item() < 1e-15
    # And confidently wrong logits cost the margin: log(1 + e^50 + (C - 2)) ~ 50.
    wrong = 50.0 * F.one_hot((code_labels.clamp(min=0) + 1) % 11, 11).float()
    assert masked_event_loss(wrong, code_labels, bin_logits, bin_labels)[0].item() == (
        pytest.approx(50.0, rel=1e-6)
    )


def test_bf16_logits_give_float32_loss_close_to_float32() -> None:
    code_logits, code_labels, bin_logits, bin_labels = random_batch(4, tokens=64, vocab=300)
    code_bf16, bin_bf16 = code_logits.bfloat16(), bin_logits.bfloat16()
    code_loss, bin_loss = masked_event_loss(code_bf16, code_labels, bin_bf16, bin_labels)
    assert code_loss.dtype == torch.float32 and bin_loss.dtype == torch.float32
    # Same bf16-rounded logits, computed by the reference in float64: only the inputs are coarse.
    expected_code = reference_masked_cross_entropy(code_bf16.float(), code_labels)
    expected_bin = reference_masked_cross_entropy(bin_bf16.float(), bin_labels)
    assert code_loss.item() == pytest.approx(expected_code, rel=1e-5)
    assert bin_loss.item() == pytest.approx(expected_bin, rel=1e-5)
    # And close to the loss of the unrounded float32 logits.
    code_f32, bin_f32 = masked_event_loss(code_logits, code_labels, bin_logits, bin_labels)
    assert code_loss.item() == pytest.approx(code_f32.item(), rel=1e-2)
    assert bin_loss.item() == pytest.approx(bin_f32.item(), rel=1e-2)


def test_logits_at_non_target_positions_are_ignored_bitwise() -> None:
    code_logits, code_labels, bin_logits, bin_labels = random_batch(5, tokens=20)
    code_labels[0, :2] = IGNORE_INDEX
    bin_labels[0, :2] = IGNORE_INDEX
    before = masked_event_loss(code_logits, code_labels, bin_logits, bin_labels)

    def scramble(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        noise = 1e4 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(9))
        noise[0, 0] = float("nan")  # even NaN and inf outside the targets must not leak in
        noise[0, 1] = float("inf")
        not_target = (labels == IGNORE_INDEX)[..., None]
        return torch.where(not_target, noise, logits).requires_grad_(True)

    scrambled_code = scramble(code_logits, code_labels)
    scrambled_bin = scramble(bin_logits, bin_labels)
    after = masked_event_loss(scrambled_code, code_labels, scrambled_bin, bin_labels)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    (after[0] + after[1]).backward()
    for logits, labels in ((scrambled_code, code_labels), (scrambled_bin, bin_labels)):
        assert torch.isfinite(logits.grad).all()
        assert torch.equal(
            logits.grad[labels == IGNORE_INDEX], torch.zeros_like(logits.grad[labels == -100])
        )


def test_masked_event_loss_rejects_bad_input() -> None:
    code_logits, code_labels, bin_logits, bin_labels = random_batch(6, code_fraction=1.0)
    with pytest.raises(ValueError, match="-1"):  # -1 is not the ignore index
        masked_event_loss(code_logits, code_labels.clamp(max=-1), bin_logits, bin_labels)
    with pytest.raises(ValueError, match="11"):
        masked_event_loss(code_logits, code_labels.clamp(min=11), bin_logits, bin_labels)
    with pytest.raises(ValueError, match="shape"):
        masked_event_loss(code_logits, code_labels[:, :-1], bin_logits, bin_labels)
    with pytest.raises(ValueError, match="integer"):
        masked_event_loss(code_logits, code_labels.float(), bin_logits, bin_labels)


# ----------------------------------------------------------------------------------------------
# linear_cross_entropy (fused, chunked) against the unfused loss


def linear_case(seed: int, n: int, dim: int = 8, vocab: int = 37, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, dim, generator=g, dtype=dtype).requires_grad_(True)
    weight = (2 * torch.randn(vocab, dim, generator=g, dtype=dtype)).requires_grad_(True)
    bias = torch.randn(vocab, generator=g, dtype=dtype).requires_grad_(True)
    labels = torch.randint(0, vocab, (n,), generator=g)
    return hidden, weight, bias, labels


def unfused_gradients(hidden, weight, bias, labels, scale: float = 1.0):
    loss = scale * F.cross_entropy(F.linear(hidden, weight, bias), labels)
    return loss, torch.autograd.grad(loss, (hidden, weight, bias))


# Chunks of 1 row, of a few rows with a remainder, and of every row at once.
@pytest.mark.parametrize("chunk_elements", [1, 5 * 37, 1 << 22])
@pytest.mark.parametrize("seed", range(3))
def test_linear_cross_entropy_equals_the_unfused_loss_and_gradients(
    seed: int, chunk_elements: int, monkeypatch
) -> None:
    monkeypatch.setattr(losses, "LINEAR_CE_CHUNK_ELEMENTS", chunk_elements)
    hidden, weight, bias, labels = linear_case(seed, n=23)
    expected, expected_grads = unfused_gradients(hidden, weight, bias, labels, scale=0.7)
    loss = 0.7 * linear_cross_entropy(hidden, weight, bias, labels)  # a scaled upstream gradient
    grads = torch.autograd.grad(loss, (hidden, weight, bias))
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_linear_cross_entropy_gradcheck_float64() -> None:
    hidden, weight, bias, labels = linear_case(4, n=6, dim=3, vocab=5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_cross_entropy(h, w, b, labels), (hidden, weight, bias)
    )


def test_linear_cross_entropy_is_stable_for_huge_logits() -> None:
    """Logits of 1e4 overflow exp in float32; the loss subtracts each row's peak first."""
    hidden, weight, bias, labels = linear_case(5, n=9)
    loss = linear_cross_entropy(hidden * 1e3, weight, bias, labels)
    expected = F.cross_entropy(F.linear(hidden * 1e3, weight, bias), labels)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected)


def test_linear_cross_entropy_of_no_rows_is_zero_with_zero_gradients() -> None:
    hidden, weight, bias, labels = linear_case(6, n=0)
    loss = linear_cross_entropy(hidden, weight, bias, labels)
    assert loss.item() == 0.0
    loss.backward()
    for tensor in (weight, bias):
        assert torch.equal(tensor.grad, torch.zeros_like(tensor))


def test_linear_cross_entropy_low_precision_inputs_give_a_float32_loss() -> None:
    hidden, weight, bias, labels = linear_case(7, n=12)
    loss = linear_cross_entropy(
        hidden.bfloat16(), weight.detach().bfloat16(), bias.detach().bfloat16(), labels
    )
    assert loss.dtype == torch.float32
    expected = F.cross_entropy(F.linear(hidden, weight, bias), labels)
    torch.testing.assert_close(loss, expected, rtol=0.05, atol=0.05)
    loss.backward()
    assert hidden.grad.dtype == torch.float32 and torch.isfinite(hidden.grad).all()


def test_linear_cross_entropy_under_autocast_with_a_tied_weight() -> None:
    """Under bf16 autocast (the GPU default; here on CPU), with the weight also used elsewhere
    in the graph (the tied code table is the input embedding too): the gradients are the
    unfused loss's within bf16 rounding, accumulated onto the weight's other gradient."""
    hidden, weight, bias, labels = linear_case(10, n=40, dim=16, vocab=50)

    def total(loss_fn):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            states = torch.tanh(hidden @ weight[:16].t())  # the weight read as an input too
            loss = loss_fn(states, weight, bias, labels)
        return torch.autograd.grad(loss, (hidden, weight, bias))

    fused = total(linear_cross_entropy)
    unfused = total(lambda h, w, b, y: F.cross_entropy(F.linear(h, w, b).float(), y))
    for got, want in zip(fused, unfused, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.02)


def test_linear_cross_entropy_without_grad_gives_the_same_loss() -> None:
    hidden, weight, bias, labels = linear_case(8, n=15)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, bias, labels)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(hidden, weight, bias), labels))


def test_linear_cross_entropy_rejects_bad_input() -> None:
    hidden, weight, bias, labels = linear_case(9, n=4)
    with pytest.raises(ValueError, match="outside"):
        linear_cross_entropy(hidden, weight, bias, torch.tensor([0, 1, 37, 2]))
    with pytest.raises(ValueError, match="outside"):
        linear_cross_entropy(hidden, weight, bias, torch.tensor([0, -100, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        linear_cross_entropy(hidden, weight, bias, labels.float())
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(hidden, weight[:, :3], bias, labels)
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(hidden, weight, bias, labels[:3])


# ----------------------------------------------------------------------------------------------
# info_nce_loss


def reference_simclr_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> float:
    """NT-Xent straight from Algorithm 1 of Chen et al. (2020), one anchor at a time.

    The 2N embeddings are interleaved as in the paper: z_{2k-1} = a_k, z_{2k} = b_k (1-based).
    """
    n = z_a.shape[0]
    z = [None] * (2 * n)
    for k in range(n):
        z[2 * k] = [float(x) for x in z_a[k]]
        z[2 * k + 1] = [float(x) for x in z_b[k]]

    def sim(u: list[float], v: list[float]) -> float:
        dot = sum(x * y for x, y in zip(u, v, strict=True))
        return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

    def loss(i: int, j: int) -> float:
        numerator = math.exp(sim(z[i], z[j]) / temperature)
        denominator = sum(math.exp(sim(z[i], z[k]) / temperature) for k in range(2 * n) if k != i)
        return -math.log(numerator / denominator)

    return sum(loss(2 * k, 2 * k + 1) + loss(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def random_views(
    n: int, dim: int, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, dim, generator=generator, dtype=dtype)
    # Correlated second view, so the positives are more similar than the negatives.
    z_b = z_a + 0.7 * torch.randn(n, dim, generator=generator, dtype=dtype)
    return z_a, z_b


@pytest.mark.parametrize("n", [1, 2, 5, 9])
@pytest.mark.parametrize("dim", [3, 16])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_info_nce_matches_simclr_reference(n: int, dim: int, temperature: float) -> None:
    z_a, z_b = random_views(n, dim, seed=n * 100 + dim)
    loss = info_nce_loss(z_a, z_b, temperature=temperature)
    assert loss.shape == () and loss.dtype == torch.float32
    expected = reference_simclr_loss(z_a, z_b, temperature)
    # abs: a float32 log-sum-exp minus the positive logit (up to 1/t) has ~1e-7/t absolute error.
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_single_pair_gives_zero() -> None:
    z_a, z_b = random_views(1, 8, seed=0)
    z_a.requires_grad_(True)
    loss = info_nce_loss(z_a, z_b, temperature=0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(z_a.grad).all()


@pytest.mark.parametrize("n", [1, 2, 4, 10])
@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0])
def test_identical_orthogonal_embeddings_closed_form(n: int, temperature: float) -> None:
    # z_a = z_b = I_N. For the anchor a_i: sim(a_i, b_i) = 1 (positive), and a_i is orthogonal to
    # the 2N - 2 others (a_j, b_j, j != i), so each negative has sim 0; a_i itself is excluded.
    #   l = -log( e^{1/t} / (e^{1/t} + (2N - 2) e^0) ) = log(1 + (2N - 2) e^{-1/t}),
    # the same for every anchor, hence the mean. N = 1 gives log 1 = 0.
    eye = torch.eye(n)
    expected = math.log1p((2 * n - 2) * math.exp(-1 / temperature))
    loss = info_nce_loss(eye, eye.clone(), temperature=temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_symmetric_in_the_two_views() -> None:
    z_a, z_b = random_views(7, 5, seed=1)
    torch.testing.assert_close(
        info_nce_loss(z_a, z_b, temperature=0.2), info_nce_loss(z_b, z_a, temperature=0.2)
    )


def test_invariant_to_scaling_the_inputs() -> None:
    z_a, z_b = random_views(6, 4, seed=2)
    scale_a = torch.rand(6, 1, generator=torch.Generator().manual_seed(0)) * 10 + 0.1
    scale_b = torch.rand(6, 1, generator=torch.Generator().manual_seed(1)) * 10 + 0.1
    torch.testing.assert_close(
        info_nce_loss(z_a * scale_a, z_b * scale_b, temperature=0.3),
        info_nce_loss(z_a, z_b, temperature=0.3),
    )


def test_invariant_to_permuting_the_pairs() -> None:
    z_a, z_b = random_views(8, 4, seed=3)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        info_nce_loss(z_a[perm], z_b[perm], temperature=0.3),
        info_nce_loss(z_a, z_b, temperature=0.3),
    )
    # Permuting one view only breaks the pairs, so the loss must change (and grow).
    assert info_nce_loss(z_a, z_b[perm], temperature=0.3) > info_nce_loss(z_a, z_b, temperature=0.3)


def test_gathered_form_with_the_local_batch_is_the_plain_call() -> None:
    z_a, z_b = random_views(5, 6, seed=4)
    plain = info_nce_loss(z_a, z_b, temperature=0.1)
    gathered = info_nce_loss(z_a, z_b, temperature=0.1, offset=0, all_a=z_a, all_b=z_b)
    assert torch.equal(plain, gathered)


@pytest.mark.parametrize("n_processes", [2, 3, 4])
def test_distributed_mean_equals_the_global_loss_and_gradient(n_processes: int) -> None:
    per_process, dim, temperature = 3, 5, 0.25
    global_a, global_b = random_views(
        n_processes * per_process, dim, seed=n_processes, dtype=torch.float64
    )
    global_a.requires_grad_(True)
    global_b.requires_grad_(True)
    single = info_nce_loss(global_a, global_b, temperature=temperature)
    expected_grads = torch.autograd.grad(single, (global_a, global_b))

    # Simulate the processes: each sees its local slice (a view of the global tensor, so gradients
    # through both the anchors and the gathered candidates reach the same rows, as with
    # torch.distributed.nn.functional.all_gather), and DDP averages over processes.
    losses = []
    for rank in range(n_processes):
        rows = slice(rank * per_process, (rank + 1) * per_process)
        losses.append(
            info_nce_loss(
                global_a[rows],
                global_b[rows],
                temperature=temperature,
                offset=rank * per_process,
                all_a=global_a,
                all_b=global_b,
            )
        )
    averaged = torch.stack(losses).mean()
    grads = torch.autograd.grad(averaged, (global_a, global_b))
    torch.testing.assert_close(averaged, single)
    torch.testing.assert_close(grads, expected_grads)
    # Each process alone is not the global loss: the split must actually matter to this test.
    assert not torch.allclose(losses[0], single)


def test_distributed_form_uses_the_offset() -> None:
    global_a, global_b = random_views(6, 4, seed=5)
    local_a, local_b = global_a[3:], global_b[3:]
    right = info_nce_loss(
        local_a, local_b, temperature=0.2, offset=3, all_a=global_a, all_b=global_b
    )
    wrong = info_nce_loss(
        local_a, local_b, temperature=0.2, offset=0, all_a=global_a, all_b=global_b
    )
    assert not torch.allclose(right, wrong)


def test_info_nce_gradcheck_float64() -> None:
    z_a, z_b = random_views(3, 4, seed=6, dtype=torch.float64)
    z_a.requires_grad_(True)
    z_b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: info_nce_loss(a, b, temperature=0.3), (z_a, z_b))


def test_info_nce_gradients_reach_both_views() -> None:
    z_a, z_b = random_views(4, 8, seed=7)
    z_a.requires_grad_(True)
    z_b.requires_grad_(True)
    info_nce_loss(z_a, z_b, temperature=0.1).backward()
    for grad in (z_a.grad, z_b.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_info_nce_low_precision_inputs_compute_in_float32() -> None:
    z_a, z_b = random_views(6, 8, seed=8)
    loss = info_nce_loss(z_a.bfloat16(), z_b.bfloat16(), temperature=0.1)
    assert loss.dtype == torch.float32
    expected = reference_simclr_loss(z_a.bfloat16().float(), z_b.bfloat16().float(), 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan"), float("inf")])
def test_info_nce_rejects_bad_temperature(temperature: float) -> None:
    z_a, z_b = random_views(3, 4, seed=9)
    with pytest.raises(ValueError, match=f"got {temperature}"):
        info_nce_loss(z_a, z_b, temperature=temperature)


def test_info_nce_rejects_bad_shapes_and_offsets() -> None:
    z_a, z_b = random_views(4, 3, seed=10)
    with pytest.raises(ValueError, match="z_a and z_b"):
        info_nce_loss(z_a, z_b[:3], temperature=0.1)
    with pytest.raises(ValueError, match="at least one row"):
        info_nce_loss(z_a[:0], z_b[:0], temperature=0.1)
    with pytest.raises(ValueError, match="together"):
        info_nce_loss(z_a, z_b, temperature=0.1, all_a=z_a)
    with pytest.raises(ValueError, match="offset 2"):
        info_nce_loss(z_a[:3], z_b[:3], temperature=0.1, offset=2, all_a=z_a, all_b=z_b)
    with pytest.raises(ValueError, match=r"\(M, 3\)"):
        info_nce_loss(z_a, z_b, temperature=0.1, all_a=z_a[:, :2], all_b=z_b[:, :2])


def test_info_nce_stays_float32_under_autocast():
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(64, 16, generator=g), torch.randn(64, 16, generator=g)
    plain = info_nce_loss(z_a, z_b, temperature=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = info_nce_loss(z_a, z_b, temperature=0.1)
    assert autocast.dtype == torch.float32
    assert torch.equal(plain, autocast)


# ----------------------------------------------------------------------------------------------
# info_nce_loss with patient groups (patient-level positives, CLOCS)


def reference_grouped_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, groups: list[int], paired: list[bool], t: float
) -> float:
    """NT-Xent one anchor at a time, written from the rule: an anchor is a view of a paired row;
    its candidates are every view except itself, the views of other rows of its group (its own
    positive excepted) and the placeholder views B of unpaired rows."""
    n = z_a.shape[0]
    views = [("a", i, [float(x) for x in z_a[i]]) for i in range(n)]
    views += [("b", i, [float(x) for x in z_b[i]]) for i in range(n)]

    def sim(u: list[float], v: list[float]) -> float:
        dot = sum(x * y for x, y in zip(u, v, strict=True))
        return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

    losses = []
    for side, i, u in views:
        if not paired[i]:
            continue
        terms, positive = [], None
        for other_side, j, v in views:
            if (other_side, j) == (side, i) or (other_side == "b" and not paired[j]):
                continue
            if j == i:
                positive = math.exp(sim(u, v) / t)
            elif groups[j] != groups[i]:
                terms.append(math.exp(sim(u, v) / t))
        losses.append(-math.log(positive / (positive + sum(terms))))
    return sum(losses) / len(losses) if losses else 0.0


def test_grouped_info_nce_on_a_hand_made_case() -> None:
    # Rows 0 and 1: one patient; row 2: another; row 3: no partner. Embeddings on the axes, so
    # every similarity is 0 or 1: a_0 = b_0 = a_1 = b_1 = e0, a_2 = b_2 = e1, a_3 = e0.
    # Anchor a_0: positive b_0 (sim 1); a_1, b_1 share its group (left out); b_3 is a
    # placeholder (left out); negatives a_2 (0), b_2 (0), a_3 (1): -log(e^{1/t} / (2 e^{1/t}
    # + 2)). Anchor a_2: positive b_2 (1); negatives a_0, b_0, a_1, b_1, a_3, all 0:
    # -log(e^{1/t} / (e^{1/t} + 5)). Rows 0, 1 alike, row 2 alike for its b: mean of 6 anchors.
    e0, e1 = [1.0, 0.0], [0.0, 1.0]
    z_a = torch.tensor([e0, e0, e1, e0])
    z_b = torch.tensor([e0, e0, e1, e1])  # b_3 = e1: a placeholder, must not count anywhere
    t = 0.5
    first = -math.log(math.exp(1 / t) / (2 * math.exp(1 / t) + 2))
    second = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 5))
    expected = (4 * first + 2 * second) / 6
    loss = info_nce_loss(
        z_a,
        z_b,
        temperature=t,
        groups=torch.tensor([0, 0, 1, 2]),
        paired=torch.tensor([True, True, True, False]),
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(
        reference_grouped_loss(z_a, z_b, [0, 0, 1, 2], [True, True, True, False], t), rel=1e-6
    )


@pytest.mark.parametrize("seed", range(6))
def test_grouped_info_nce_matches_reference(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    n = 9
    z_a, z_b = random_views(n, 4, seed=seed)
    groups = torch.randint(0, 5, (n,), generator=generator)
    paired = torch.rand(n, generator=generator) < 0.7
    loss = info_nce_loss(z_a, z_b, temperature=0.3, groups=groups, paired=paired)
    expected = reference_grouped_loss(z_a, z_b, groups.tolist(), paired.tolist(), 0.3)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_distinct_groups_all_paired_is_the_plain_loss() -> None:
    z_a, z_b = random_views(7, 5, seed=11)
    plain = info_nce_loss(z_a, z_b, temperature=0.2)
    grouped = info_nce_loss(
        z_a, z_b, temperature=0.2, groups=torch.arange(7), paired=torch.ones(7, dtype=torch.bool)
    )
    torch.testing.assert_close(grouped, plain)


def test_same_group_rows_are_never_negatives() -> None:
    # Row 0 alone is paired, so its two views are the only anchors; row 1 shares its group, rows
    # 2-4 do not. Moving a_1 next to a_0 changes nothing (a_1 is not in a denominator), while
    # with row 1 in a group of its own it becomes a strong negative and the loss grows.
    z_a, z_b = random_views(5, 4, seed=12)
    groups = torch.tensor([0, 0, 1, 2, 3])
    paired = torch.tensor([True, False, False, False, False])
    loss = info_nce_loss(z_a, z_b, temperature=0.2, groups=groups, paired=paired)
    moved = z_a.clone()
    moved[1] = z_a[0] * 3
    again = info_nce_loss(moved, z_b, temperature=0.2, groups=groups, paired=paired)
    torch.testing.assert_close(again, loss, rtol=0, atol=0)
    apart = info_nce_loss(moved, z_b, temperature=0.2, groups=torch.arange(5), paired=paired)
    assert apart > loss + 0.1


def test_no_pair_in_the_batch_gives_zero_and_a_zero_gradient() -> None:
    z_a, z_b = random_views(4, 3, seed=13)
    z_a.requires_grad_(True)
    z_b.requires_grad_(True)
    loss = info_nce_loss(
        z_a, z_b, temperature=0.1, groups=torch.zeros(4, dtype=torch.long),
        paired=torch.zeros(4, dtype=torch.bool),
    )  # fmt: skip
    assert loss.item() == 0.0
    loss.backward()
    assert not z_a.grad.any() and not z_b.grad.any()
    # One patient, one pair among placeholders: no negative left, the loss is 0 (finite).
    paired = torch.tensor([True, False, False, False])
    single = info_nce_loss(
        z_a, z_b, temperature=0.1, groups=torch.zeros(4, dtype=torch.long), paired=paired
    )
    assert single.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("n_processes", [2, 3])
def test_grouped_distributed_mean_equals_the_global_loss_and_gradient(n_processes: int) -> None:
    """Processes hold different numbers of anchors: their losses, averaged as DDP averages,
    are still the global loss, gradients included."""
    per_process, generator = 4, torch.Generator().manual_seed(n_processes)
    global_a, global_b = random_views(
        n_processes * per_process, 5, seed=20 + n_processes, dtype=torch.float64
    )
    global_a.requires_grad_(True)
    global_b.requires_grad_(True)
    m = n_processes * per_process
    groups = torch.randint(0, m // 2, (m,), generator=generator)
    paired = torch.rand(m, generator=generator) < 0.6
    paired[:per_process] = False  # process 0 holds no anchor at all
    paired[per_process] = True
    pairs = {"groups": groups, "paired": paired}
    single = info_nce_loss(global_a, global_b, temperature=0.25, **pairs)
    expected_grads = torch.autograd.grad(single, (global_a, global_b))
    losses = []
    for rank in range(n_processes):
        rows = slice(rank * per_process, (rank + 1) * per_process)
        losses.append(
            info_nce_loss(
                global_a[rows],
                global_b[rows],
                temperature=0.25,
                offset=rank * per_process,
                all_a=global_a,
                all_b=global_b,
                **pairs,
            )
        )
    averaged = torch.stack(losses).mean()
    torch.testing.assert_close(averaged, single)
    torch.testing.assert_close(torch.autograd.grad(averaged, (global_a, global_b)), expected_grads)
    assert losses[0].item() == 0.0


def test_grouped_info_nce_rejects_bad_groups() -> None:
    z_a, z_b = random_views(4, 3, seed=14)
    with pytest.raises(ValueError, match=r"groups must be an integer tensor of shape \(4,\)"):
        info_nce_loss(z_a, z_b, temperature=0.1, groups=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="groups must be an integer"):
        info_nce_loss(z_a, z_b, temperature=0.1, groups=torch.zeros(4))
    with pytest.raises(ValueError, match=r"paired must be a bool tensor"):
        info_nce_loss(z_a, z_b, temperature=0.1, paired=torch.ones(4, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# bag_of_codes_loss


def reference_bag_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Row by row: the mean over its labels of -log softmax(row)[label]; mean over rows that
    have a label."""
    rows = []
    for row_logits, row_labels in zip(logits.tolist(), labels.tolist(), strict=True):
        targets = [c for c in row_labels if c != IGNORE_INDEX]
        if not targets:
            continue
        log_z = math.log(sum(math.exp(x) for x in row_logits))
        rows.append(sum(log_z - row_logits[c] for c in targets) / len(targets))
    return sum(rows) / len(rows) if rows else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bag_of_codes_loss_matches_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (6, 9), generator=g)
    labels[torch.rand(6, 9, generator=g) < 0.6] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX  # a row with nothing hidden does not count
    loss = bag_of_codes_loss(logits, labels)
    assert loss.item() == pytest.approx(reference_bag_loss(logits, labels), rel=1e-12)


def test_bag_of_codes_closed_forms() -> None:
    labels = torch.tensor([[3, 3, IGNORE_INDEX, 5]])
    uniform = bag_of_codes_loss(torch.zeros(1, 8), labels)
    assert uniform.item() == pytest.approx(math.log(8))
    # The best single distribution for the bag {3, 3, 5} puts 2/3 on code 3 and 1/3 on code 5.
    best = torch.full((1, 8), -1e9)
    best[0, 3], best[0, 5] = math.log(2 / 3), math.log(1 / 3)
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert bag_of_codes_loss(best, labels).item() == pytest.approx(entropy, rel=1e-5)


def test_bag_of_codes_without_labels_is_zero_with_zero_gradient() -> None:
    logits = torch.randn(3, 5, requires_grad=True)
    loss = bag_of_codes_loss(logits, torch.full((3, 4), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(3, 5))


def test_bag_of_codes_bf16_logits_give_float32_loss() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 16, generator=g)
    labels = torch.randint(0, 16, (4, 6), generator=g)
    low = bag_of_codes_loss(logits.bfloat16(), labels)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, bag_of_codes_loss(logits, labels), rtol=1e-2, atol=0)


def test_bag_of_codes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        bag_of_codes_loss(torch.zeros(2, 4), torch.tensor([[1, 4], [0, 0]]))
    with pytest.raises(ValueError, match="integer"):
        bag_of_codes_loss(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        bag_of_codes_loss(torch.zeros(2, 4), torch.zeros(3, 3, dtype=torch.long))
