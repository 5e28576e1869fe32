"""The device a run trains and scores on, resolved from the `device` setting ("auto", "cuda",
"cpu")."""

from __future__ import annotations

import torch

from ehr_ssl.errors import InputError


def resolve_device(name: str) -> torch.device:
    """The training device; CUDA with its index, so tensors and generators agree exactly."""
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but no CUDA device is available", column="device")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
