"""The device a run trains and scores on, and everything that training does differently there:
one place to read what the GPU path changes (precision, fused AdamW, pinned memory, the
generator's device, DDP's device ids and backend, padding for tensor cores)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ehr_ssl.config import DEVICES, PRECISIONS
from ehr_ssl.errors import InputError
from ehr_ssl.settings import check_choice

# Tensor cores run matmuls whose dimensions are multiples of 8 (bf16) at full rate.
CUDA_PAD_MULTIPLE = 8


def resolve_device(name: str) -> torch.device:
    """The training device; CUDA with its index, so tensors and generators agree exactly."""
    check_choice(name, DEVICES, "device")  # "gpu" or "cuda:1" must not mean the CPU
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but no CUDA device is available", setting="device")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class DeviceSettings:
    """What training does on `device`; the only place the loops branch on the device type.

    Weights, optimizer state and checkpoints stay fp32 whatever the precision: bf16 is the
    autocast dtype of the forward's matmuls, and the losses upcast (`ehr_ssl.model.losses`).
    """

    device: torch.device
    precision: str  # "fp32" or "bf16": the dtype autocast gives the forward's matmuls
    fused_optimizer: bool  # AdamW's fused kernel: one launch per step instead of one per tensor
    pin_memory: bool  # page-locked host batches, so the copy to the GPU overlaps compute
    ddp_device_ids: list[int] | None  # DistributedDataParallel's device_ids: the GPU, or None
    pad_to_multiple_of: int  # the encoder's input length is rounded up to a multiple of this

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's precision: bf16 autocast, or nothing under fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def generator(self, seed: int) -> torch.Generator:
        """A seeded generator on the device, where the objectives draw their random inputs."""
        return torch.Generator(device=self.device).manual_seed(seed)


def collective_backend(device: torch.device) -> str:
    """The torch.distributed backend under torchrun: NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_settings(
    device: torch.device, precision: str = "auto", pad_to_multiple_of: int | None = None
) -> DeviceSettings:
    """The settings for training on `device` (from `resolve_device`).

    `precision` "auto" is bf16 on a CUDA device that supports it, else fp32;
    `pad_to_multiple_of` None is 8 on CUDA (tensor cores) and 1 on CPU (padding only costs there).
    """
    check_choice(precision, PRECISIONS, "precision")
    cuda = device.type == "cuda"
    bf16_ok = not cuda or torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "bf16" and not bf16_ok:
        raise InputError(
            f"{torch.cuda.get_device_name(device)} has no bf16 support: use precision fp32",
            setting="precision",
        )
    if precision == "auto":
        precision = "bf16" if cuda and bf16_ok else "fp32"
    if pad_to_multiple_of is None:
        pad_to_multiple_of = CUDA_PAD_MULTIPLE if cuda else 1
    return DeviceSettings(
        device=device,
        precision=precision,
        fused_optimizer=cuda,
        pin_memory=cuda,
        ddp_device_ids=[device.index] if cuda else None,
        pad_to_multiple_of=pad_to_multiple_of,
    )
