"""The self-supervised objectives wired together: the encoder, its two heads and the two losses.

`forward` tells the story: make the inputs (masked tokens and/or two augmented views), encode,
score with the heads, compute the weighted losses. With both objectives on, the masked-event
loss is computed on view A (masking is one more augmentation of that view) and both views go
through the encoder as one batch; a weight of 0 switches a term and its inputs off.
Randomness comes only from the generator passed in; device and precision belong to the loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehr_ssl.config import ObjectiveConfig
from ehr_ssl.model.encoder import EHREncoder
from ehr_ssl.model.heads import MaskedEventHead, ProjectionHead
from ehr_ssl.model.losses import IGNORE_INDEX, info_nce_loss, masked_event_loss
from ehr_ssl.model.masking import mask_events
from ehr_ssl.model.views import augment_view
from ehr_ssl.training import distributed

ENCODER_INPUTS = ("input_ids", "value_bins", "time_deltas", "segment_ids", "attention_mask")


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
        self.projection = ProjectionHead(config.hidden_size, objective.projection_dim)
        for head in (self.masked_head, self.projection):  # one place for initialization
            head.apply(encoder._init_weights)

    def forward(
        self, batch: dict[str, Tensor], generator: torch.Generator, rows: slice | None = None
    ) -> dict[str, Tensor]:
        """Shape: batch tensors (B, T) -> scalar losses {"loss", "masked_code", "masked_bin",
        "contrastive"} (terms switched off are absent), plus the real and padded token counts
        of the encoder's input, {"encoder_tokens", "encoder_slots"} (no gradient).

        Data-parallel training passes the global batch and this process's `rows` of it: the
        random inputs are drawn for the whole batch (every process draws the same numbers, as
        a single process would), then only `rows` are encoded, and each term is scaled so that
        its mean over processes, which DDP's gradient averaging takes, is the global batch's.
        """
        o = self.objective
        masked, contrastive = o.masked_weight > 0, o.contrastive_weight > 0
        # Inputs: view A (masked for the masked-event term) and, for the contrastive term, B.
        view_a = self._view(batch, generator) if contrastive else batch
        if masked:
            view_a, code_labels, bin_labels = mask_events(
                view_a,
                vocab_size=self.encoder.config.vocab_size,
                generator=generator,
                rate=o.mask_rate,
            )
        views = [view_a, self._view(batch, generator)] if contrastive else [view_a]
        scale = {}
        if rows is not None:
            world = batch["input_ids"].shape[0] // (rows.stop - rows.start)
            views = [_take_rows(view, rows) for view in views]
            if masked:
                # Each term is a mean over its targets: local sum / global count, times the
                # world size that the average over processes divides by.
                t_a = views[0]["input_ids"].shape[1]
                for name, labels in (("masked_code", code_labels), ("masked_bin", bin_labels)):
                    local = labels[rows, :t_a]
                    n_local = (local != IGNORE_INDEX).sum()
                    n_global = (labels != IGNORE_INDEX).sum().clamp_min(1)
                    scale[name] = world * n_local / n_global
                    if name == "masked_code":
                        code_labels = local
                    else:
                        bin_labels = local
        # Encode: both views in one pass, (2B, T) rather than two passes of (B, T): at these
        # sizes the per-operation overhead, not arithmetic, dominates on CPU.
        inputs = _stack_padded(
            views, self.pad_to_multiple_of, self.encoder.config.max_position_embeddings
        )
        encoded = self.encoder(**inputs)
        b = views[0]["input_ids"].shape[0]  # this process's visits

        losses: dict[str, Tensor] = {
            "encoder_tokens": inputs["attention_mask"].sum().detach(),
            "encoder_slots": torch.tensor(inputs["attention_mask"].numel()),
        }
        total = torch.zeros((), device=batch["input_ids"].device)
        if masked:
            targets = code_labels != IGNORE_INDEX  # (B, T_a): only these rows reach the heads
            hidden_a = encoded.last_hidden_state[:b, : targets.shape[1]]
            code_logits, bin_logits = self.masked_head(
                hidden_a[targets], self.encoder.code_embeddings.weight
            )
            # (N, C) -> (1, N, C): the loss takes (B, T, C) batches of labelled positions.
            code_loss, bin_loss = masked_event_loss(
                code_logits[None],
                code_labels[targets][None],
                bin_logits[None],
                bin_labels[targets][None],
            )
            if scale:
                code_loss = code_loss * scale["masked_code"]
                bin_loss = bin_loss * scale["masked_bin"]
            losses["masked_code"], losses["masked_bin"] = code_loss, bin_loss
            total = total + o.masked_weight * (code_loss + o.value_bin_weight * bin_loss)
        if contrastive:
            z = self.projection(encoded.pooler_output)  # (2B, P): view A rows, then view B rows
            losses["contrastive"] = contrastive_loss(z[:b], z[b:], temperature=o.temperature)
            total = total + o.contrastive_weight * losses["contrastive"]
        losses["loss"] = total
        return losses

    def _view(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        o = self.objective
        return augment_view(
            batch,
            generator=generator,
            event_dropout=o.event_dropout,
            history_crop=o.history_crop,
            time_jitter=o.time_jitter,
        )


def _take_rows(view: dict[str, Tensor], rows: slice) -> dict[str, Tensor]:
    """Some rows of a right-padded view, cut to their own longest row.

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


def contrastive_loss(z_a: Tensor, z_b: Tensor, *, temperature: float) -> Tensor:
    """NT-Xent on this process's pairs, with negatives from every process under DDP.

    Shape: z_a, z_b (N, P) -> (). Every process must hold the same N (drop_last batches).
    """
    rank = distributed.current()
    if not rank.distributed:
        return info_nce_loss(z_a, z_b, temperature=temperature)
    all_a = distributed.all_gather_with_grad(z_a)  # (world * N, P), rank order
    all_b = distributed.all_gather_with_grad(z_b)
    offset = rank.rank * z_a.shape[0]
    return info_nce_loss(z_a, z_b, temperature=temperature, offset=offset, all_a=all_a, all_b=all_b)
