"""The optimizer's two choices: which parameters decay (parameter groups for AdamW) and the
learning-rate schedule (linear warmup, then cosine decay; a pure function of the step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ehr_ssl.config import TrainConfig


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The share of the peak rate at `step` (0-based) under linear warmup over `warmup_steps`:
    (step + 1) / warmup_steps, then 1."""
    return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps


def learning_rate(step: int, config: TrainConfig, total_steps: int) -> float:
    """Linear warmup over warmup_steps, then cosine decay to learning_rate * min_lr_ratio."""
    peak, floor = config.learning_rate, config.learning_rate * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    span = max(total_steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices of linear layers only; biases, norms and embeddings get none."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_matrix = isinstance(module, nn.Linear) and name == "weight"
            (decay if is_matrix else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group's learning rate, for the step about to be taken."""
    for group in optimizer.param_groups:
        group["lr"] = lr
