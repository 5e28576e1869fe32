"""Small heads on top of the encoder; they know nothing about losses.

- `MaskedEventHead`: per-token logits over the vocabulary and over value bins (pretraining); the
  code decoder is the encoder's code embedding matrix (tied, as in BERT), passed in.
- `BagOfCodesHead`: logits over the vocabulary from the pooled visit vector (the bag of masked
  codes), with the same tied code decoder.
- `ValueQueryHead`: value-bin logits of one of the visit's events from the pooled visit vector
  and that event's code embedding (the visit values term).
- `ProjectionHead`: the SimCLR projection of pooled visit vectors for the contrastive loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ehr_ssl.model.encoder import CodeState


class MaskedEventHead(nn.Module):
    """Transform + LayerNorm, then two decoders: the code and the value bin of each token.

    The code decoder's weights are the input code embeddings (tied). Every masked position's
    softmax then updates every code's embedding, not only those of the codes present, so rare
    codes that appear in the same contexts (synonyms of one condition) are pulled together;
    with an untied decoder their input embeddings barely moved from initialization
    (benchmarks/README.md, "tied decoder").
    """

    def __init__(self, hidden_size: int, vocab_size: int, n_value_bins: int, eps: float = 1e-5):
        super().__init__()
        self.transform = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.code_bias = nn.Parameter(torch.zeros(vocab_size))
        self.bin_decoder = nn.Linear(hidden_size, n_value_bins)

    def forward(
        self, hidden: torch.Tensor, code_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: hidden (N, D) or (B, T, D), code_embeddings (V, D) -> code logits (..., V),
        bin logits (..., K)."""
        h = self.features(hidden)
        return F.linear(h, code_embeddings, self.code_bias), self.bin_decoder(h)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """The transformed states that both decoders read (the code decoder's input, for a fused
        linear cross-entropy). Shape: (..., D) -> (..., D)."""
        return self.norm(F.gelu(self.transform(hidden)))


class BagOfCodesHead(CodeState):
    """Transform + LayerNorm (`CodeState`), then the tied code decoder, on one pooled vector per
    visit: the visit vector must say which codes were hidden, so it has to carry the patient's
    codes rather than leave them to token states (issue 19)."""

    def __init__(self, pooled_size: int, hidden_size: int, vocab_size: int, eps: float = 1e-5):
        super().__init__(pooled_size, hidden_size, eps)
        self.code_bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, pooled: torch.Tensor, code_embeddings: torch.Tensor) -> torch.Tensor:
        """Shape: pooled (B, P), code_embeddings (V, D) -> code logits (B, V)."""
        return F.linear(super().forward(pooled), code_embeddings, self.code_bias)


class ValueQueryHead(nn.Module):
    """Value-bin logits of an event from its visit's pooled vector, queried by the event's code:
    h = LayerNorm(gelu(W_v visit + W_c code)), then a bin decoder. The vector alone must carry
    the value, since the query names only the code (issue 19: the triage values that a mean
    over the whole sequence dilutes)."""

    def __init__(self, pooled_size: int, hidden_size: int, n_value_bins: int, eps: float = 1e-5):
        super().__init__()
        self.visit = nn.Linear(pooled_size, hidden_size)
        self.code = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.bin_decoder = nn.Linear(hidden_size, n_value_bins)

    def forward(self, pooled: torch.Tensor, code_embedding: torch.Tensor) -> torch.Tensor:
        """Shape: pooled (N, P) (each query's visit vector), code_embedding (N, D) -> (N, K)."""
        h = self.norm(F.gelu(self.visit(pooled) + self.code(code_embedding)))
        return self.bin_decoder(h)


class ProjectionHead(nn.Module):
    """SimCLR's projection g(h) = W2 relu(W1 h); the loss normalizes its output."""

    def __init__(self, pooled_size: int, hidden_size: int, projection_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(pooled_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, projection_dim)
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Shape: (B, P) -> (B, projection_dim); P the pooled width, D without pool_width."""
        return self.net(pooled)
