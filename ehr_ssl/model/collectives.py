"""The one collective a model needs: contrastive embeddings gathered from every data-parallel
process, with gradients. The process group itself is `ehr_ssl.training.distributed`'s."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def data_parallel_rank() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a joined process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sends each process the summed gradient of its own rows."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # Every process's loss reads every process's rows: sum the gradients, keep ours.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Every process's rows in rank order, differentiable (contrastive negatives).

    Under DDP, which averages gradients over the W processes, the result is the gradient of the
    mean of the processes' losses. Shape: (N, ...) on each process -> (W * N, ...).
    """
    return _AllGather.apply(tensor)
