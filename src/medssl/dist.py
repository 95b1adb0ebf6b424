"""Thin helpers around :mod:`torch.distributed` (the bottom layer: imports nothing of medssl).

Every helper works unchanged in a plain single-process run: it then reports rank 0 of a
world of size 1 and the collectives become no-ops, so training code and losses can call them
unconditionally.

Multi-process runs are expected to be launched by ``torchrun``, which sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; see
:func:`init_from_env`. Distributed batch norm lives with the trainers
(:mod:`medssl.train.distributed`).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_mean",
    "all_reduce_sum",
    "local_rank",
    "barrier",
    "cleanup",
    "gather_with_grad",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """True when a process group is initialised (even one of world size 1)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank; 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK`` from torchrun); 0 otherwise."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0, the process that should log, write checkpoints and print."""
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` + ``cat`` along dim 0 with a gradient that flows back to every rank.

    Plain :func:`torch.distributed.all_gather` is not differentiable: the copies of the other
    ranks' rows are constants here, so the gradient a loss sends into *those* rows would be
    lost. Every rank computes the gradient of its own loss with respect to the whole
    gathered tensor; the gradient of the summed losses with respect to this rank's rows is
    the sum, over ranks, of the matching slice. Hence the backward is an ``all_reduce(SUM)``
    of the full gradient followed by taking this rank's slice.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        ctx.rank = dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()  # all_reduce works in place; never touch autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order, keeping autograd intact.

    All ranks must pass tensors of the same shape (use ``drop_last=True`` or a
    ``DistributedSampler``, which gives every rank the same number of samples); rank ``r``'s
    rows are then at ``r * x.shape[0]`` in the result. The backward sums the gradient over
    ranks, so with the usual DDP averaging of parameter gradients over ranks the result is
    the gradient of the mean of the per-rank losses.

    Returns ``x`` itself when not distributed.
    """
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group when launched by ``torchrun``.

    Does nothing (and returns False) unless the environment variable ``WORLD_SIZE`` is
    greater than 1. The backend defaults to ``nccl`` when CUDA is available and ``gloo``
    otherwise (trainers pass the one their device needs); with ``nccl``, the current device is
    set from ``LOCAL_RANK`` *before* the group is created so that NCCL binds each process to
    its own GPU. Calling it again once the
    group exists is harmless. Returns whether the run is distributed.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def barrier() -> None:
    """Wait for every rank; no-op when not distributed."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks, e.g. to log a loss that is identical on every rank.

    Returns a new tensor (``t`` is not modified) when distributed, and ``t`` itself
    otherwise. Not differentiable: meant for metrics, not for losses.
    """
    if not is_distributed() or world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def cleanup() -> None:
    """Destroy the default process group if there is one."""
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over ranks (a new tensor); ``t`` itself when not distributed."""
    if not is_distributed() or world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
