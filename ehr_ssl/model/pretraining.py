"""The self-supervised objectives wired together: the encoder, its two heads and the two losses.

`forward` tells the story: make the inputs (masked tokens and/or two augmented views), encode,
score with the heads, compute the weighted losses. With both objectives on, the masked-event
loss is computed on view A (masking is one more augmentation of that view) and both views go
through the encoder as one batch; a weight of 0 switches a term and its inputs off.
With `contrastive_views = "patient"` view B is another visit of the same patient, which the
batch carries (`ehr_ssl.tokens.pairs.collate_pairs`), and same-patient rows are never negatives.
Randomness comes only from the generator passed in; device and precision belong to the loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ehr_ssl.config import ObjectiveConfig
from ehr_ssl.model.collectives import all_gather_with_grad, data_parallel_rank
from ehr_ssl.model.encoder import EHREncoder, pooled_dim
from ehr_ssl.model.forecast import forecast_view
from ehr_ssl.model.heads import BagOfCodesHead, MaskedEventHead, ProjectionHead, ValueQueryHead
from ehr_ssl.model.losses import (
    IGNORE_INDEX,
    bag_of_codes_loss,
    info_nce_loss,
    linear_cross_entropy,
    masked_cross_entropy,
)
from ehr_ssl.model.masking import ENCOUNTER_TIMES, mask_events
from ehr_ssl.model.views import augment_view, disjoint_views
from ehr_ssl.tokens.pairs import split_partner
from ehr_ssl.tokens.vocab import SEGMENT_HISTORY

ENCODER_INPUTS = ("input_ids", "value_bins", "time_deltas", "segment_ids", "attention_mask")
# Passes per step for "patient" views (rows sorted by length): 4 of 2B/4 rows cut the padding
# from ~60% to that of the augmented views at a few more per-pass overheads.
PATIENT_VIEW_CHUNKS = 4


# Labels laid out on view A's positions (the masked-event term's); the others on the batch's.
VIEW_A_LABELS = ("masked_code", "masked_bin")


def visit_value_targets(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The visit values term's queries: the value bin and the code of every numeric event of
    the statics and the current visit (IGNORE_INDEX elsewhere). History events are left out:
    their values are the history's, which the masked-event term already asks for. Events that
    view A's masking (or view augmentation) hid are queried too: their values must then be
    inferred from the rest of the visit.
    Shape: batch (B, T) -> {"visit_values", "visit_value_codes"} (B, T)."""
    numeric = batch["attention_mask"].bool() & (batch["value_bins"] > 0)
    own = batch["segment_ids"] != SEGMENT_HISTORY
    queries = numeric & own
    ignore = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    return {
        "visit_values": torch.where(queries, batch["value_bins"].long(), ignore),
        "visit_value_codes": torch.where(queries, batch["input_ids"], ignore),
    }


class PretrainingModel(nn.Module):
    """Encoder + masked-event head + projection head; returns every loss term."""

    def __init__(
        self, encoder: EHREncoder, objective: ObjectiveConfig, *, pad_to_multiple_of: int = 1
    ):
        """`pad_to_multiple_of` rounds the encoder's input length up (tensor-core friendly
        shapes on GPU), never past the encoder's max_position_embeddings."""
        super().__init__()
        config = encoder.config
        self.encoder = encoder
        self.objective = objective
        self.pad_to_multiple_of = pad_to_multiple_of
        self.masked_head = MaskedEventHead(
            config.hidden_size, config.vocab_size, config.n_value_bins, config.layer_norm_eps
        )
        # Heads on a visit's pooled vector read its P = pooled_dim features (pool_width).
        d, p, eps = config.hidden_size, pooled_dim(config), config.layer_norm_eps
        self.projection = ProjectionHead(p, d, objective.projection_dim)
        heads = [self.masked_head, self.projection]
        # Only when on: runs (and checkpoints) without the term keep their state dict.
        if objective.bag_weight > 0:
            self.bag_head = BagOfCodesHead(p, d, config.vocab_size, eps)
            heads.append(self.bag_head)
        if objective.forecast_weight > 0:
            # The term's state map is the encoder's (a CodeState), so the saved encoder
            # keeps it for the "forecast" readout; its code bias is a pretraining head's.
            encoder.add_forecast_state()
            self.forecast_code_bias = nn.Parameter(torch.zeros(config.vocab_size))
        if objective.visit_values_weight > 0:
            self.values_head = ValueQueryHead(p, d, config.n_value_bins, eps)
            heads.append(self.values_head)
        for head in heads:  # one place for initialization
            head.apply(encoder._init_weights)

    def forward(
        self, batch: dict[str, Tensor], generator: torch.Generator, rows: slice | None = None
    ) -> dict[str, Tensor]:
        """Shape: batch tensors (B, T) -> scalar losses {"loss", "masked_code", "masked_bin",
        "bag", "contrastive", "forecast", "visit_values"} (terms switched off are absent), plus
        the real and padded token counts of the encoder's input, {"encoder_tokens",
        "encoder_slots"} (no gradient).

        Data-parallel training passes the global batch and this process's `rows` of it: the
        random inputs are drawn for the whole batch (every process draws the same numbers, as
        a single process would), then only `rows` are encoded, and each term is scaled so that
        its mean over processes, which DDP's gradient averaging takes, is the global batch's.

        `contrastive_views = "patient"` needs the batch of `collate_pairs`: the partner views
        and the patient groups ride along (of the global batch under data parallelism).
        """
        batch, partner, pairs = split_partner(batch)
        views, labels = self._inputs(batch, partner, generator)
        scale: dict[str, Tensor] = {}
        if rows is not None:
            views, labels, scale = _local_rows(batch, views, labels, rows)
        if self.objective.forecast_weight > 0:
            views, labels = _forecast_rows_only(views, labels)
        # Encode: both views in one pass, (2B, T) rather than two passes of (B, T): at these
        # sizes the per-operation overhead, not arithmetic, dominates on CPU. A patient's
        # other visit has any length, so "patient" view B rows would pad the whole stack to
        # the batch's longest visit (60% padding, half the tokens/s): those views go through
        # in passes of similar-length rows instead.
        chunks = PATIENT_VIEW_CHUNKS if self.objective.contrastive_views == "patient" else 1
        encoded, slots = encode_by_length(
            self.encoder,
            views,
            n_chunks=chunks if len(views) > 1 else 1,
            multiple=self.pad_to_multiple_of,
            limit=self.encoder.config.max_position_embeddings,
        )
        terms = self._terms(encoded, views[0]["input_ids"].shape[0], labels, scale, pairs)
        return {
            "encoder_tokens": sum(v["attention_mask"].sum() for v in views).detach(),
            "encoder_slots": torch.tensor(slots),
            **terms,
            "loss": self._weighted_sum(terms, batch["input_ids"].device),
        }

    def _inputs(
        self,
        batch: dict[str, Tensor],
        partner: dict[str, Tensor] | None,
        generator: torch.Generator,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor] | None]:
        """View A (masked for the masked-event term), for the contrastive term view B, for the
        forecast term the prefix view (last); with the labels of the terms that are on:
        {"masked_code", "masked_bin"} (view A's positions), {"forecast"} (the batch's
        positions); None when no term has labels. The draws come in this order: view A, its
        masking, view B ("augment" and "patient" views); both views, then the masking
        (`contrastive_views = "disjoint"`); then the forecast cut."""
        o = self.objective
        contrastive = o.contrastive_weight > 0
        disjoint = contrastive and o.contrastive_views == "disjoint"
        if contrastive and o.contrastive_views == "patient" and partner is None:
            raise ValueError(
                'contrastive_views = "patient" needs batches with partner visits '
                f"(ehr_ssl.tokens.pairs.collate_pairs), got keys {sorted(batch)}"
            )
        if disjoint:
            view_a, view_b = disjoint_views(batch, generator=generator)
        else:
            view_a = self._view(batch, generator) if contrastive else batch
        labels = None
        if o.masked_weight > 0 or o.bag_weight > 0:
            view_a, code_labels, bin_labels = mask_events(
                view_a,
                vocab_size=self.encoder.config.vocab_size,
                generator=generator,
                rate=o.mask_rate,
                unit=o.mask_unit,
            )
            labels = {"masked_code": code_labels, "masked_bin": bin_labels}
        if contrastive and not disjoint:
            # "patient": the partner visit gets the same light augmentation as view A (as in
            # CLOCS-style training): two visits of one patient share much of their history
            # token for token, and dropout and the history crop keep the pair from being
            # matched by copying it; the knobs at 0 give the plain partner visit.
            source = partner if o.contrastive_views == "patient" else batch
            view_b = self._view(source, generator)
        views = [view_a, view_b] if contrastive else [view_a]
        if o.visit_values_weight > 0:
            labels = {**(labels or {}), **visit_value_targets(batch)}
        if o.forecast_weight > 0:
            prefix, targets = forecast_view(
                batch,
                generator=generator,
                target=o.forecast_target,
                current_share=o.forecast_current_share,
                frame=o.forecast_frame,
                horizon_days=o.forecast_horizon_days,
            )
            if o.forecast_share < 1:  # drawn last: a share of 1 leaves every draw as it was
                targets = _forecast_subset(targets, o.forecast_share, generator)
            views.append(prefix)
            labels = {**(labels or {}), "forecast": targets}
        return views, labels

    def forecast_logits(self, pooled: Tensor, table: Tensor | None = None) -> Tensor:
        """The forecast term's logits of every code from prefixes' pooled vectors: the
        encoder's forecast state against the tied code table. Shape: (F, P) -> (F, V)."""
        table = self.encoder.code_table() if table is None else table
        return F.linear(self.encoder.forecast_state(pooled), table, self.forecast_code_bias)

    def _terms(
        self,
        encoded: BaseModelOutputWithPooling,
        n_visits: int,
        labels: dict[str, Tensor] | None,
        scale: dict[str, Tensor],
        pairs: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """The loss terms that are on, from the encoding of the stacked views (view A's
        `n_visits` rows first); `pairs` holds the global batch's patient groups and partner
        flags ("patient" views). Shape: last_hidden_state (k * B, T, D) -> {name: ()}."""
        terms = {}
        table = self.encoder.code_table()  # (V, D): once a step, for every tied decoder
        if self.objective.masked_weight > 0:
            hidden_a = encoded.last_hidden_state[:n_visits]  # (B, T, D)
            terms["masked_code"], terms["masked_bin"] = self._masked_terms(
                hidden_a, table, labels, scale
            )
        if self.objective.bag_weight > 0:
            pooled_a = encoded.pooler_output[:n_visits]  # (B, P): view A's visit vectors
            logits = self.bag_head(pooled_a, table)  # (B, V)
            terms["bag"] = bag_of_codes_loss(logits, labels["masked_code"]) * scale.get("bag", 1)
        if self.objective.visit_values_weight > 0:
            pooled_a = encoded.pooler_output[:n_visits]  # (B, P): view A's visit vectors
            terms["visit_values"] = self._visit_values_term(pooled_a, labels, scale)
        if self.objective.forecast_weight > 0:
            n_prefixes = labels["forecast"].shape[0]  # the prefix view, stacked last
            prefix = encoded.pooler_output[encoded.pooler_output.shape[0] - n_prefixes :]
            logits = self.forecast_logits(prefix, table)  # (F, V)
            forecast = bag_of_codes_loss(logits, labels["forecast"])
            terms["forecast"] = forecast * scale.get("forecast", 1)
        if self.objective.contrastive_weight > 0:
            # (2B, P): view A rows, then view B rows (the prefix view's, if any, come after)
            z = self.projection(encoded.pooler_output[: 2 * n_visits])
            patient = self.objective.contrastive_views == "patient" and pairs is not None
            terms["contrastive"] = contrastive_loss(
                z[:n_visits],
                z[n_visits:],
                temperature=self.objective.temperature,
                **(pairs if patient else {}),
            )
        return terms

    def _masked_terms(
        self, hidden_a: Tensor, table: Tensor, labels: dict[str, Tensor], scale: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The masked-event terms (code, value bin) on view A's token states against the code
        `table`, scaled under data parallelism. Shape: hidden_a (B, T, D), table (V, D),
        labels (B, T_a) -> (), ()."""
        code_labels, bin_labels = labels["masked_code"], labels["masked_bin"]
        targets = code_labels != IGNORE_INDEX  # (B, T_a): only these rows reach the heads
        features = self.masked_head.features(hidden_a[:, : targets.shape[1]][targets])  # (N, D)
        # Fused: the (N, V) code logits are never held whole (`linear_cross_entropy`).
        code_loss = linear_cross_entropy(
            features, table, self.masked_head.code_bias, code_labels[targets]
        )
        # (N, K) -> (1, N, K): the loss takes (B, T, K) batches of labelled positions.
        bin_logits = self.masked_head.bin_decoder(features)
        bin_loss = masked_cross_entropy(bin_logits[None], bin_labels[targets][None], "bin")
        if scale:
            code_loss = code_loss * scale["masked_code"]
            bin_loss = bin_loss * scale["masked_bin"]
        return code_loss, bin_loss

    def _visit_values_term(
        self, pooled_a: Tensor, labels: dict[str, Tensor], scale: dict[str, Tensor]
    ) -> Tensor:
        """Cross-entropy of each queried event's value bin given its visit's vector and its
        code, a mean over the queries. Shape: pooled_a (B, P), labels (B, T) -> ()."""
        bins, codes = labels["visit_values"], labels["visit_value_codes"]
        queries = bins != IGNORE_INDEX  # (B, T)
        rows = queries.nonzero()[:, 0]  # (N,): each query's visit
        code_embedding = self.encoder.code_vectors(codes[queries])  # (N, D)
        logits = self.values_head(pooled_a[rows], code_embedding)  # (N, K)
        if logits.shape[0] == 0:  # no numeric event in these rows: a zero that keeps the graph
            return logits.sum()
        return F.cross_entropy(logits.float(), bins[queries]) * scale.get("visit_values", 1)

    def _weighted_sum(self, terms: dict[str, Tensor], device: torch.device) -> Tensor:
        """The total loss: the terms that are on, weighted. Shape: ()."""
        o = self.objective
        total = torch.zeros((), device=device)
        if "masked_code" in terms:
            masked = terms["masked_code"] + o.value_bin_weight * terms["masked_bin"]
            total = total + o.masked_weight * masked
        if "bag" in terms:
            total = total + o.bag_weight * terms["bag"]
        if "contrastive" in terms:
            total = total + o.contrastive_weight * terms["contrastive"]
        if "forecast" in terms:
            total = total + o.forecast_weight * terms["forecast"]
        if "visit_values" in terms:
            total = total + o.visit_values_weight * terms["visit_values"]
        return total

    def _view(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        o = self.objective
        if o.mask_unit == "encounter":  # view A's encounters are grouped by un-jittered times
            batch = {**batch, ENCOUNTER_TIMES: batch["time_deltas"]}
        return augment_view(
            batch,
            generator=generator,
            event_dropout=o.event_dropout,
            history_crop=o.history_crop,
            time_jitter=o.time_jitter,
        )


def _local_rows(
    batch: dict[str, Tensor],
    views: list[dict[str, Tensor]],
    labels: dict[str, Tensor] | None,
    rows: slice,
) -> tuple[list[dict[str, Tensor]], dict[str, Tensor] | None, dict[str, Tensor]]:
    """This process's rows of the views and of the masked labels, and each masked term's scale.

    Each term is a mean over its targets: local sum / global count, times the world size that
    the average over processes divides by. Shape: (B, T) -> (R, T_r); scales ().
    """
    world = batch["input_ids"].shape[0] // (rows.stop - rows.start)
    views = [_take_rows(view, rows) for view in views]
    if labels is None:
        return views, None, {}
    t_a = views[0]["input_ids"].shape[1]
    local, scale = {}, {}
    for name, global_labels in labels.items():
        # view A's labels are cut to its local length; the others index the batch
        local[name] = global_labels[rows, :t_a] if name in VIEW_A_LABELS else global_labels[rows]
        n_local = (local[name] != IGNORE_INDEX).sum()
        n_global = (global_labels != IGNORE_INDEX).sum().clamp_min(1)
        scale[name] = world * n_local / n_global
    # The bag and forecast terms are means over visits with a target: scaled in rows.
    for term, name in (("bag", "masked_code"), ("forecast", "forecast")):
        if name in labels:
            target_rows = (labels[name] != IGNORE_INDEX).any(dim=1)  # (B,)
            scale[term] = world * target_rows[rows].sum() / target_rows.sum().clamp_min(1)
    return views, local, scale


def _forecast_subset(targets: Tensor, share: float, generator: torch.Generator) -> Tensor:
    """The forecast targets of ceil(share * B) rows drawn at random (one permutation of the
    rows; a drawn visit without events has no target, so a little less than the share is
    scored); the other rows' targets ignored. Shape: (B, T) -> (B, T)."""
    n_rows = targets.shape[0]
    order = torch.randperm(n_rows, generator=generator, device=generator.device)
    chosen = torch.zeros(n_rows, dtype=torch.bool, device=targets.device)
    n_chosen = math.ceil(share * n_rows - 1e-9)  # 0.55 * 100 is 55.000000000000007 in floats
    chosen[order[:n_chosen].to(targets.device)] = True
    return targets.masked_fill(~chosen[:, None], IGNORE_INDEX)


def _forecast_rows_only(
    views: list[dict[str, Tensor]], labels: dict[str, Tensor]
) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
    """The prefix view (last) and the forecast labels cut to the rows with a target, so that
    the encoder never runs on a prefix whose forecast is not scored (`forecast_share`, a visit
    without events); the view is left out when no row has one.
    Shape: prefix (B, T) -> (F, T_f), labels["forecast"] (B, T) -> (F, T)."""
    targets = labels["forecast"]
    scored = (targets != IGNORE_INDEX).any(dim=1)  # (B,)
    if bool(scored.all()):
        return views, labels
    labels = {**labels, "forecast": targets[scored]}
    if not bool(scored.any()):
        return views[:-1], labels
    return [*views[:-1], _take_rows(views[-1], scored)], labels


def _take_rows(view: dict[str, Tensor], rows: slice | Tensor) -> dict[str, Tensor]:
    """Some rows (a slice, or a (B,) bool mask) of a right-padded view, cut to their own
    longest row.

    Shape: (B, T) -> (R, T_r) with T_r <= T the longest of the R rows.
    """
    t = int(view["attention_mask"][rows].sum(dim=1).max())
    return {k: v[rows, :t] if v.dim() == 2 else v[rows] for k, v in view.items()}


def _stack_padded(views: list[dict[str, Tensor]], multiple: int, limit: int) -> dict[str, Tensor]:
    """Right-pad views to a common length and concatenate them along the batch.

    Shape: k views of (B, T_i) -> (k * B, T) with T = max T_i rounded up to `multiple`, at most
    `limit`; padding is zeros ([PAD], False mask).
    """
    t = max(v["input_ids"].shape[1] for v in views)
    t = max(t, min(-(-t // multiple) * multiple, limit))
    return {
        name: torch.cat([F.pad(v[name], (0, t - v[name].shape[1])) for v in views])
        for name in ENCODER_INPUTS
    }


def encode_by_length(
    encoder: EHREncoder,
    views: list[dict[str, Tensor]],
    *,
    n_chunks: int,
    multiple: int,
    limit: int,
) -> tuple[BaseModelOutputWithPooling, int]:
    """Encode the views' rows stacked (view order kept), in `n_chunks` passes of rows sorted by
    length, each pass padded only to its own longest row; 1 is a single pass over the stack.

    Padding is masked, so the outputs are those of one pass (up to float rounding).
    Shape: k views of (B, T_i) -> last_hidden_state (k * B, T, D), pooler_output (k * B, P),
    with T as `_stack_padded`'s; and the number of padded input slots the passes ran on.
    """
    stacked = _stack_padded(views, multiple, limit)
    if n_chunks <= 1:
        return encoder(**stacked), stacked["attention_mask"].numel()
    total = stacked["input_ids"].shape[1]
    lengths = stacked["attention_mask"].sum(dim=1)  # (k * B,): right-padded rows
    order = torch.argsort(lengths, stable=True)
    hidden, pooled, slots = [], [], 0
    for rows in order.tensor_split(n_chunks):
        t = max(int(lengths[rows].max()), 1)
        t = max(t, min(-(-t // multiple) * multiple, limit))
        out = encoder(**{name: stacked[name][rows, :t] for name in ENCODER_INPUTS})
        hidden.append(F.pad(out.last_hidden_state, (0, 0, 0, total - t)))
        pooled.append(out.pooler_output)
        slots += len(rows) * t
    inverse = torch.argsort(order)
    encoded = BaseModelOutputWithPooling(
        last_hidden_state=torch.cat(hidden)[inverse], pooler_output=torch.cat(pooled)[inverse]
    )
    return encoded, slots


def contrastive_loss(
    z_a: Tensor,
    z_b: Tensor,
    *,
    temperature: float,
    groups: Tensor | None = None,
    paired: Tensor | None = None,
) -> Tensor:
    """NT-Xent on this process's pairs, with negatives from every process under DDP.

    `groups` and `paired` (patient views; see `info_nce_loss`) cover the global batch, every
    process's rows in rank order. Shape: z_a, z_b (N, P), groups, paired (world * N,) -> ().
    Every process must hold the same N (drop_last batches).
    """
    rank, world_size = data_parallel_rank()
    pairs = {"groups": groups, "paired": paired}
    if world_size == 1:
        return info_nce_loss(z_a, z_b, temperature=temperature, **pairs)
    all_a = all_gather_with_grad(z_a)  # (world * N, P), rank order
    all_b = all_gather_with_grad(z_b)
    offset = rank * z_a.shape[0]
    return info_nce_loss(
        z_a, z_b, temperature=temperature, offset=offset, all_a=all_a, all_b=all_b, **pairs
    )
