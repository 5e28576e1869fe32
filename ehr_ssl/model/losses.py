"""Pure loss functions of tensors for the pretraining objectives: masked-event modeling, the bag
of masked codes predicted from the visit vector, and the symmetric InfoNCE (NT-Xent) of SimCLR,
optionally with groups of rows that are never each other's negatives (patient-level positives,
CLOCS). They know nothing about models or heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # HF convention: a label of -100 is not a prediction target


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: bf16/fp16 are upcast, float64 stays float64 (so gradcheck works)."""
    return torch.promote_types(dtype, torch.float32)


def _check_label_range(labels: Tensor, n_classes: int, what: str, ignorable: bool) -> None:
    """ValueError naming the first of `labels` (the targets, -100 already left out) outside
    [0, n_classes); `ignorable` says -100 would have been accepted."""
    outside = (labels < 0) | (labels >= n_classes)
    if labels.numel() and bool(outside.any()):
        bad = labels[outside][0].item()
        also = f" and not {IGNORE_INDEX}" if ignorable else ""
        raise ValueError(f"{what} contains {bad}, outside [0, {n_classes}){also}")


def masked_cross_entropy(logits: Tensor, labels: Tensor, name: str) -> Tensor:
    """Mean cross-entropy over the positions whose label is not IGNORE_INDEX; 0.0 when none are.
    `name` ("code", "bin") names the arguments in error messages.
    Shape: logits (B, T, C), labels (B, T) -> ()."""
    if logits.ndim != 3:
        raise ValueError(f"{name}_logits must be (B, T, C), got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"{name}_labels shape {tuple(labels.shape)} does not match "
            f"{name}_logits shape {tuple(logits.shape)} without its last dimension"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name}_labels must be an integer tensor, got {labels.dtype}")
    n_classes = logits.shape[-1]
    flat_labels = labels.reshape(-1)
    # Gather the target rows first when some rows are not targets: masking usually selects ~15%
    # of the tokens, so the softmax over the vocabulary runs on those rows only, and non-target
    # logits (even NaN) never enter the loss. When every row is a target (the pretraining model
    # passes target rows only) the gather is skipped: it copies the (n, C) logits and its backward
    # scatters into a zeroed gradient, a fifth of a default pretraining step on CPU.
    target_rows = (flat_labels != IGNORE_INDEX).nonzero(as_tuple=True)[0]  # (n,)
    n_targets = target_rows.numel()
    target_logits = logits.reshape(-1, n_classes)
    if n_targets < flat_labels.numel():
        target_logits = target_logits[target_rows]  # (n, C)
    target_labels = flat_labels[target_rows].long()  # (n,)
    _check_label_range(target_labels, n_classes, f"{name}_labels", ignorable=True)
    target_logits = target_logits.to(_compute_dtype(logits.dtype))
    # Sum over an empty selection is exactly 0.0 and still backpropagates a zero gradient.
    total = F.cross_entropy(target_logits, target_labels, reduction="sum")
    return total / max(n_targets, 1)


def masked_event_loss(
    code_logits: Tensor, code_labels: Tensor, bin_logits: Tensor, bin_labels: Tensor
) -> tuple[Tensor, Tensor]:
    """BERT-style masked-event modeling loss: predict the code and the value bin of masked events.

    Each term is the mean cross-entropy over its own target positions only (labels != -100);
    positions that are not targets do not touch the loss or its gradient. The value-bin term has
    its own targets, since only masked events with a numeric value carry a bin label. A term with
    no target position in the batch is exactly 0.0 (with a zero gradient, never NaN). Computed in
    at least float32 whatever the logits' dtype (bf16 logits give a float32 loss).

    Args:
        code_logits: Scores over the code vocabulary at every position.
        code_labels: Code id to predict, -100 where the position is not a target.
        bin_logits: Scores over the K value-bin classes at every position.
        bin_labels: Value-bin class to predict, -100 where not a target (unmasked positions and
            events without a numeric value).

    Returns:
        (code_loss, bin_loss), two scalar tensors.

    Shape:
        code_logits (B, T, V), code_labels (B, T), bin_logits (B, T, K), bin_labels (B, T)
        -> code_loss (), bin_loss ().

    Raises:
        ValueError: on mismatched shapes, non-integer labels, or a label outside [0, V) (or
            [0, K)) that is not -100.
    """
    code_loss = masked_cross_entropy(code_logits, code_labels, "code")
    bin_loss = masked_cross_entropy(bin_logits, bin_labels, "bin")
    return code_loss, bin_loss


# Logits per chunk in `linear_cross_entropy`: 2M floats (8 MB, 182 rows of 11,516 codes); 1M to
# 4M ran within the runs' noise of each other on the 2-core machine (bench_masked_loss.py).
LINEAR_CE_CHUNK_ELEMENTS = 1 << 21
# On a GPU each chunk costs a dozen kernel launches, so chunks are larger: 32M logits (128 MB in
# fp32) keep a 10,000-position batch over a 100,000-code vocabulary to ~30 chunks. Not measured
# (no GPU lent since); benchmarks/gpu_check.sh times the whole step.
LINEAR_CE_CHUNK_ELEMENTS_GPU = 1 << 25


@torch.compiler.disable  # its chunk loop depends on N: compiled, every new N would recompile
def linear_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of softmax(hidden @ weight.T + bias) against `labels`, without the
    (N, V) logits in memory: rows go through in chunks, and each chunk's gradient (softmax minus
    one-hot) is multiplied into the gradients of `hidden`, `weight` and `bias` at once (the fused
    linear cross-entropy of Liger-Kernel and Apple's Cut Cross-Entropy). Unfused, a softmax over
    an 11,516-code vocabulary at 4,800 masked positions is several passes over a 220 MB tensor
    each way, 375-420 ms forward and backward on the 2-core CPU; fused, 150-205 ms
    (benchmarks/bench_masked_loss.py).

    The same value and gradients as `F.cross_entropy(F.linear(hidden, weight, bias), labels)`
    up to float rounding; the softmax in at least float32 whatever the inputs' dtype. No label
    may be ignored (pass the target rows only); no rows give exactly 0.0 with zero gradients.
    Its gradient is computed in the forward pass, so it cannot be differentiated twice.

    Shape: hidden (N, D), weight (V, D), bias (V,), labels (N,) integer -> ().

    Raises:
        ValueError: on mismatched shapes, non-integer labels or a label outside [0, V).
    """
    n, v = hidden.shape[0], weight.shape[0]
    if hidden.ndim != 2 or weight.ndim != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"hidden must be (N, D) and weight (V, D), got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if bias.shape != (v,) or labels.shape != (n,):
        raise ValueError(
            f"bias must be ({v},) and labels ({n},), got {tuple(bias.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    _check_label_range(labels, v, "labels", ignorable=False)
    # Under no_grad (validation) the gradients are not computed: half the arithmetic.
    wanted = torch.is_grad_enabled() and any(t.requires_grad for t in (hidden, weight, bias))
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels.long(), wanted)


class _LinearCrossEntropy(torch.autograd.Function):
    """`linear_cross_entropy`'s chunked forward, which also computes the gradients."""

    @staticmethod
    def forward(
        ctx, hidden: Tensor, weight: Tensor, bias: Tensor, labels: Tensor, wanted: bool
    ) -> Tensor:
        n = hidden.shape[0]
        dtype = _compute_dtype(hidden.dtype)
        grads = [torch.zeros_like(t, dtype=dtype) for t in (hidden, weight, bias)] if wanted else []
        # Under autocast (bf16 on a GPU) an in-place addmm_ would run in full precision: the
        # weight's gradient is then a product autocast lowers, added in the compute dtype.
        autocast = torch.is_autocast_enabled(hidden.device.type)
        total = torch.zeros((), dtype=dtype, device=hidden.device)
        elements = LINEAR_CE_CHUNK_ELEMENTS_GPU if hidden.is_cuda else LINEAR_CE_CHUNK_ELEMENTS
        chunk = max(1, elements // max(weight.shape[0], 1))
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            h, y = hidden[rows], labels[rows]
            # A product, then the bias in place: addmm's bias is one more pass over the chunk.
            logits = (h @ weight.t()).to(dtype).add_(bias)  # (n_chunk, V)
            picked = logits.gather(1, y[:, None])  # (n_chunk, 1)
            peak = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(peak).exp_()  # in place: the chunk's only (n_chunk, V) buffer
            norm = probs.sum(dim=1, keepdim=True)
            total += (norm.log() + peak - picked).sum()
            if not wanted:
                continue
            probs.div_(norm)
            probs.scatter_add_(1, y[:, None], torch.full_like(picked, -1.0))  # softmax - one-hot
            grads[0][rows] = probs @ weight.to(dtype)
            if autocast:
                grads[1] += probs.t() @ h
            else:
                grads[1].addmm_(probs.t(), h.to(dtype))
            grads[2] += probs.sum(dim=0)
        ctx.save_for_backward(*grads)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype)
        return total / max(n, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor):
        n = ctx.saved_tensors[0].shape[0]
        scale = grad_output / max(n, 1)
        pairs = zip(ctx.saved_tensors, ctx.dtypes, strict=True)
        hidden, weight, bias = ((grad * scale).to(dtype) for grad, dtype in pairs)
        return hidden, weight, bias, None, None


def bag_of_codes_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Predict the bag of a visit's hidden codes from one vector per visit (issue 19).

    Row b's target is the distribution of its labelled codes (each label != -100 counts once,
    repeats included); its loss is the cross-entropy of softmax(logits[b]) against it, which is
    the mean over its labels of -log p(label). The loss is the mean over rows with at least one
    label; exactly 0.0 (with a zero gradient) when no row has one. Computed in at least float32.

    Args:
        logits: Scores over the code vocabulary, one row per visit.
        labels: Code ids of each visit's hidden events, -100 elsewhere.

    Returns:
        The scalar loss.

    Shape:
        logits (B, V), labels (B, T) -> ().

    Raises:
        ValueError: on mismatched batch sizes, non-integer labels, or a label outside [0, V)
            that is not -100.
    """
    if logits.ndim != 2 or labels.ndim != 2 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"logits must be (B, V) and labels (B, T), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    targets = labels != IGNORE_INDEX  # (B, T)
    _check_label_range(labels[targets], logits.shape[1], "labels", ignorable=True)
    log_p = F.log_softmax(logits.to(_compute_dtype(logits.dtype)), dim=-1)  # (B, V)
    picked = log_p.gather(1, labels.clamp_min(0).long()) * targets  # (B, T)
    per_row_count = targets.sum(dim=1)  # (B,)
    labelled = per_row_count > 0
    per_row = -picked.sum(dim=1) / per_row_count.clamp_min(1)  # (B,)
    return per_row[labelled].sum() / max(int(labelled.sum()), 1)


def info_nce_loss(
    z_a: Tensor,
    z_b: Tensor,
    *,
    temperature: float,
    offset: int = 0,
    all_a: Tensor | None = None,
    all_b: Tensor | None = None,
    groups: Tensor | None = None,
    paired: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE / NT-Xent loss of SimCLR (Chen et al. 2020).

    Row i of `z_a` and row i of `z_b` are two views of the same visit (the positive pair). Both are
    L2-normalized here, so the similarity is cosine / temperature. Each of the 2N embeddings is an
    anchor: its positive is its pair, its negatives are the other 2N - 2 embeddings of both views,
    and its own self-similarity is left out of the softmax denominator. The loss is the mean over
    the 2N anchors of -log softmax at the positive. With N = 1 there is no negative and the loss
    is 0. Computed in at least float32.

    Groups (patient-level positives): rows that share a `groups` id (one patient) are never each
    other's negatives; every embedding of a same-group row, in either view, leaves the anchor's
    denominator, except the anchor's own positive. A row whose `paired` is False has no positive:
    neither of its embeddings is an anchor and its `z_b` row (a placeholder) is no candidate,
    while its `z_a` row stays a negative of the other groups. The loss is then the mean over the
    anchors of paired rows, exactly 0 (with a zero gradient, never NaN) when there is none.

    Distributed training: pass the global batch as `all_a`, `all_b` (M rows, every process's rows
    in rank order, this process's at `offset : offset + N`). The anchors stay the local 2N rows and
    the candidates become all 2M gathered embeddings, so negatives come from every process. The
    caller must gather *with* gradients (`torch.distributed.nn.functional.all_gather`, whose
    backward sums each rank's contribution to the local rows), and every process must hold the
    same N: then the mean over the local anchors, averaged over processes by DDP, has the value and
    the gradient of the single-process loss on the global batch. With `groups` or `paired`, the
    processes may hold different numbers of anchors, so each returns its anchors' sum over the
    global anchor count, times M / N (the number of processes that DDP's average divides by).
    With `all_a=z_a`, `all_b=z_b`, `offset=0` this is the plain call.

    Args:
        z_a: Projections of the first view.
        z_b: Projections of the second view, row-aligned with `z_a`.
        temperature: Softmax temperature, > 0.
        offset: Index of this process's first row in `all_a` / `all_b`.
        all_a: Gathered first-view projections of the global batch, or None (single process).
        all_b: Gathered second-view projections of the global batch, or None (single process).
        groups: Integer group id of each row of the global batch (rows of `all_a`, or of `z_a`
            without it), or None: every row its own group.
        paired: Whether each row of the global batch has a positive, or None: all have.

    Returns:
        The scalar loss.

    Shape:
        z_a (N, D), z_b (N, D), all_a (M, D), all_b (M, D), groups (M,), paired (M,) -> ().

    Raises:
        ValueError: on a temperature that is not a finite positive number, mismatched shapes, only
            one of `all_a` / `all_b`, or an offset that does not place the N rows inside M.
    """
    all_a, all_b, offset = _check_info_nce(z_a, z_b, temperature, offset, all_a, all_b)
    n_local, n_global = z_a.shape[0], all_a.shape[0]
    dtype = _compute_dtype(torch.promote_types(z_a.dtype, all_a.dtype))

    # Anchors: [a_0..a_{N-1}, b_0..b_{N-1}]; candidates: [A_0..A_{M-1}, B_0..B_{M-1}].
    # Under a caller's autocast the matmul would run in bf16 again (0.5% loss error measured at
    # N=256, t=0.1): the similarities are computed with autocast off.
    with torch.autocast(z_a.device.type, enabled=False):
        anchors = F.normalize(torch.cat([z_a, z_b]).to(dtype), dim=1)  # (2N, D)
        candidates = F.normalize(torch.cat([all_a, all_b]).to(dtype), dim=1)  # (2M, D)
        logits = anchors @ candidates.T / temperature  # (2N, 2M)

    local = torch.arange(n_local, device=z_a.device) + offset  # (N,) global row of each local pair
    self_cols = torch.cat([local, local + n_global])  # (2N,) each anchor's own column
    positive_cols = torch.cat([local + n_global, local])  # (2N,) its pair, in the other view
    rows = torch.arange(2 * n_local, device=z_a.device)
    excluded = torch.zeros_like(logits, dtype=torch.bool)
    excluded[rows, self_cols] = True
    if groups is None and paired is None:
        # -inf, not a large negative number: exp gives exactly 0, and the positive is always finite.
        return F.cross_entropy(logits.masked_fill(excluded, float("-inf")), positive_cols)
    groups, paired = _groups_and_pairs(groups, paired, n_global, z_a.device)
    candidate_groups = torch.cat([groups, groups])  # (2M,)
    excluded |= candidate_groups[self_cols][:, None] == candidate_groups[None, :]  # same group
    excluded[rows, positive_cols] = False  # ... but the anchor's own positive
    excluded |= ~torch.cat([torch.ones_like(paired), paired])[None, :]  # placeholder views B
    is_anchor = paired[self_cols % n_global]  # (2N,)
    # Only anchors reach the softmax: a non-anchor row may hold nothing but -inf.
    total = F.cross_entropy(
        logits.masked_fill(excluded, float("-inf"))[is_anchor],
        positive_cols[is_anchor],
        reduction="sum",
    )
    n_anchors = 2 * int(paired.sum())
    return total * (n_global / n_local) / max(n_anchors, 1)


def _check_info_nce(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float,
    offset: int,
    all_a: Tensor | None,
    all_b: Tensor | None,
) -> tuple[Tensor, Tensor, int]:
    """ValueError on bad input; (all_a, all_b, offset) with the single-process defaults filled."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(
            f"z_a and z_b must both be (N, D), got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    n_local, dim = z_a.shape
    if n_local == 0:
        raise ValueError("z_a and z_b must have at least one row, got 0")
    if (all_a is None) != (all_b is None):
        raise ValueError("all_a and all_b must be given together")
    if all_a is None or all_b is None:
        return z_a, z_b, 0
    if all_a.ndim != 2 or all_a.shape != all_b.shape or all_a.shape[1] != dim:
        raise ValueError(
            f"all_a and all_b must both be (M, {dim}), "
            f"got {tuple(all_a.shape)} and {tuple(all_b.shape)}"
        )
    if not 0 <= offset <= all_a.shape[0] - n_local:
        raise ValueError(
            f"offset {offset} does not place {n_local} local rows inside {all_a.shape[0]} rows"
        )
    return all_a, all_b, offset


def _groups_and_pairs(
    groups: Tensor | None, paired: Tensor | None, n_global: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """`groups` and `paired` checked against the M global rows, None filled with the defaults
    (every row its own group; every row paired). Shape: (M,), (M,) bool."""
    if groups is None:
        groups = torch.arange(n_global, device=device)
    if paired is None:
        paired = torch.ones(n_global, dtype=torch.bool, device=device)
    if groups.shape != (n_global,) or groups.is_floating_point():
        raise ValueError(
            f"groups must be an integer tensor of shape ({n_global},), got "
            f"{groups.dtype} {tuple(groups.shape)}"
        )
    if paired.shape != (n_global,) or paired.dtype != torch.bool:
        raise ValueError(
            f"paired must be a bool tensor of shape ({n_global},), got "
            f"{paired.dtype} {tuple(paired.shape)}"
        )
    return groups.to(device), paired.to(device)
