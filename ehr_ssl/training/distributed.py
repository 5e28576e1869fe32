"""Data-parallel training under torchrun: the process group, this process's place in it, and the
few collectives the training loops need.

`torchrun --nproc_per_node N` (and multi-node rendezvous) starts N processes with RANK,
WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT in the environment; `process_group` joins them
(NCCL on GPU, gloo on CPU) for the length of a command. Without those variables, or with
WORLD_SIZE=1, everything here is a no-op and a run is the plain single-process run.

The training loops keep one rule: every process sees the same global batch order and draws the
same random numbers, and each works on its own contiguous rows of the global batch. Then a
2-process run takes the same steps as a 1-process run of the same global batch, to rounding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from ehr_ssl.errors import InputError
from ehr_ssl.training.device import collective_backend, resolve_device

# Stages that only rank 0 runs (tokenizing 8M visits) keep the others waiting at a barrier.
_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class Rank:
    """This process's place: rank among world_size, local_rank on its node (its GPU index)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def rows(self, global_batch: int) -> slice:
        """This process's rows of a global batch: contiguous, in rank order, equal in size."""
        if global_batch % self.world_size:
            raise ValueError(f"global batch {global_batch} not divisible by {self.world_size}")
        n = global_batch // self.world_size
        return slice(self.rank * n, (self.rank + 1) * n)


def current() -> Rank:
    """The joined process group's view of this process, or the single-process Rank()."""
    if not (dist.is_available() and dist.is_initialized()):
        return Rank()
    return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def launched_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when not launched by it)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise InputError(
            f"the environment variable WORLD_SIZE is not an integer ({value!r})"
        ) from None


@contextmanager
def process_group(device: str) -> Iterator[Rank]:
    """Join the torchrun process group for the block (no-op outside torchrun).

    `device` is the run's train.device: "cpu" uses gloo; "cuda"/"auto" with CUDA uses NCCL and
    pins this process to GPU LOCAL_RANK.
    """
    if launched_world_size() <= 1 or dist.is_initialized():
        yield current()
        return
    backend = collective_backend(resolve_device(device))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=_TIMEOUT)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def gather_rows(batch: dict[str, Tensor], length: int) -> dict[str, Tensor]:
    """Every process's rows of a batch, concatenated in rank order (no gradient).

    Each process right-pads its (B/W, T_r) tensors to `length` (the global batch's longest
    visit) with zeros, so the result equals the single-process collate of the global batch.

    Shape: tensors (B/W, T_r) or (B/W,) -> (B, length) or (B,).
    """
    world = current().world_size
    out = {}
    for name, value in batch.items():
        if value.dim() == 2:
            value = torch.nn.functional.pad(value, (0, length - value.shape[1]))
        parts = [torch.empty_like(value) for _ in range(world)]
        dist.all_gather(parts, value.contiguous())
        out[name] = torch.cat(parts)
    return out


def mean_over_ranks(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """The mean of each scalar over processes (for logging: every process's terms of one
    step). Shape: {name: ()} -> {name: ()}."""
    if not current().distributed or not values:
        return {name: value.detach() for name, value in values.items()}
    names = sorted(values)
    stacked = torch.stack([values[n].detach().float() for n in names])
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(names, stacked, strict=True))


def _tensor(values: list[float]) -> Tensor:
    """Numbers as a float64 tensor on the device the backend communicates from."""
    tensor = torch.tensor(values, dtype=torch.float64)
    return tensor.cuda() if dist.get_backend() == "nccl" else tensor


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sum of a few numbers over processes (counts for throughput figures)."""
    if not current().distributed:
        return values
    tensor = _tensor(values)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def broadcast_float(value: float) -> float:
    """Rank 0's value on every process: decisions such as early stopping must agree, and
    floating-point results may differ in the last bits between GPUs."""
    if not current().distributed:
        return value
    tensor = _tensor([value])
    dist.broadcast(tensor, src=0)
    return float(tensor.item())
