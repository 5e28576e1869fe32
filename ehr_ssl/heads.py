"""Small heads on top of the encoder; they know nothing about losses.

- `MaskedEventHead`: per-token logits over the vocabulary and over value bins (pretraining).
- `ProjectionHead`: the SimCLR projection of pooled visit vectors for the contrastive loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedEventHead(nn.Module):
    """Transform + LayerNorm, then two decoders: the code and the value bin of each token."""

    def __init__(self, hidden_size: int, vocab_size: int, n_value_bins: int, eps: float = 1e-5):
        super().__init__()
        self.transform = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.code_decoder = nn.Linear(hidden_size, vocab_size)
        self.bin_decoder = nn.Linear(hidden_size, n_value_bins)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: (N, D) or (B, T, D) -> code logits (..., V), bin logits (..., K)."""
        h = self.norm(F.gelu(self.transform(hidden)))
        return self.code_decoder(h), self.bin_decoder(h)


class ProjectionHead(nn.Module):
    """SimCLR's projection g(h) = W2 relu(W1 h); the loss normalizes its output."""

    def __init__(self, hidden_size: int, projection_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, projection_dim)
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Shape: (B, D) -> (B, P)."""
        return self.net(pooled)
