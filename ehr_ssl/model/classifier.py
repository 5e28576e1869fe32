"""The admission classifier: the encoder's readout under a standardization and a linear head,
one logit per visit (fine-tuning's model; one model, one file)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ehr_ssl.model.encoder import EHRConfig, EHREncoder, EHRPreTrainedModel, readout_dim


class AdmissionClassifier(EHRPreTrainedModel):
    """Encoder + standardization + dropout + linear head on the encoder's readout under
    `config.readout` (R wide: `readout_dim`, D for "pooled"): one logit per visit.
    The readout is recorded in config.json; a classifier saved before it existed reads "pooled".

    The standardization (`feature_mean`, `feature_std`: fixed buffers, identity unless the head
    starts as the linear probe) keeps the head on the probe's scale. Folded into the head
    instead (w = coef / std), a barely spread feature gets a huge weight, so dropout zeroing its
    uncentred value moves the logit by w * value: a first fine-tuning loss of ~150 was seen.
    """

    def __init__(self, config: EHRConfig, head_dropout: float = 0.1):
        super().__init__(config)
        self.encoder = EHREncoder(config)
        width = readout_dim(config)  # R
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(width, 1)
        self.post_init()

    def folded_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The standardization and head as one linear map of the readout, (R,) and ()."""
        return fold_standardization(
            self.head.weight[0], self.head.bias[0], self.feature_mean, self.feature_std
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        value_bins: torch.Tensor,
        time_deltas: torch.Tensor,
        segment_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        pos_weight: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Shape: inputs (B, T), labels (B,) float 0/1 -> logits (B,), loss () if labels."""
        vectors = self.encoder(
            input_ids, value_bins, time_deltas, segment_ids, attention_mask,
            readout=self.config.readout,
        ).readout  # fmt: skip
        features = (vectors - self.feature_mean) / self.feature_std  # (B, R)
        logits = self.head(self.dropout(features)).squeeze(-1)  # (B, 1) -> (B,)
        loss = None
        if labels is not None:
            loss = F.binary_cross_entropy_with_logits(
                logits.float(), labels.float(), pos_weight=pos_weight
            )
        return SequenceClassifierOutput(loss=loss, logits=logits)


def fold_standardization(
    coef: torch.Tensor, intercept: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear map of standardized vectors, coef . (x - mean) / std + intercept, as one of the
    raw vectors: w = coef / std, b = intercept - w . mean. Shape: (D,), (), (D,), (D,) ->
    (D,), ()."""
    weight = coef / std
    return weight, intercept - weight @ mean
