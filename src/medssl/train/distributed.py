"""Distributed training: global batch norm, plus the process-group helpers of :mod:`medssl.dist`.

The helpers live in :mod:`medssl.dist` (so that :mod:`medssl.losses` need not import the
training layer); they are re-exported here so training code reads ``dist.rank()`` etc.
from one module.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medssl.dist import (
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    cleanup,
    gather_with_grad,
    init_from_env,
    is_distributed,
    is_main_process,
    local_rank,
    rank,
    world_size,
)

__all__ = [
    "GlobalBatchNorm",
    "GlobalBatchNormAct",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "convert_batchnorm_for_distributed",
    "gather_with_grad",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "local_rank",
    "rank",
    "world_size",
]


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm whose statistics cover the global batch of every rank, on any device.

    ``torch.nn.SyncBatchNorm`` does this only for GPU tensors; it refuses CPU tensors, so
    CPU (gloo) runs -- and the tests that check a 2-process run against a 1-process run --
    need this version. It all-reduces per-channel sums and sums of squares with the
    differentiable :func:`torch.distributed.nn.functional.all_reduce`, so gradients flow
    through the global statistics exactly as in one process on the combined batch.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed() and world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = x.numel() // x.shape[1]
        xf = x.float()
        count = local_count * world_size()
        # two passes (mean, then squared deviations) are as precise as nn.BatchNorm's
        mean = all_reduce(xf.sum(dims)) / count
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                unbiased = var * count / max(count - 1, 1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class GlobalBatchNormAct(GlobalBatchNorm):
    """:class:`GlobalBatchNorm` followed by the ``drop`` and ``act`` modules of the timm
    ``BatchNormAct2d`` it replaces (timm's EfficientNets fuse the activation into the norm
    layer; the state dict keys stay the same)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


def _fused_activation(module: torch.nn.Module) -> bool:
    return hasattr(module, "act") and hasattr(module, "drop")


def convert_batchnorm_for_distributed(module: torch.nn.Module) -> torch.nn.Module:
    """Global batch norm, as in the paper: torch's SyncBatchNorm in an NCCL group (GPUs),
    :class:`GlobalBatchNorm` otherwise (gloo on CPUs, or no group yet).

    Chosen by the process group's backend, not by whether this machine has a GPU, so that a
    ``--device cpu`` run on a GPU machine stays on the CPU path. Call before moving the model
    to its device; parameters and buffers are kept. A model without batch norm (a ViT: layer
    norm, which needs no synchronisation) comes back as it was, but for the projection
    head's batch norms. timm's batch norms with a fused activation keep it (timm's own
    converter under NCCL, :class:`GlobalBatchNormAct` otherwise).
    """
    import torch.distributed as torch_dist

    if is_distributed() and torch_dist.get_backend() == "nccl":
        if any(_fused_activation(m) for m in module.modules() if _is_batch_norm(m)):
            from timm.layers import convert_sync_batchnorm

            return convert_sync_batchnorm(module)
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global_bn(module)


def _is_batch_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def _to_global_bn(module: torch.nn.Module) -> torch.nn.Module:
    out = module
    if _is_batch_norm(module) and not isinstance(module, GlobalBatchNorm):
        kind = GlobalBatchNormAct if _fused_activation(module) else GlobalBatchNorm
        out = kind(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        out.load_state_dict(module.state_dict())
        for name, param in out.named_parameters(recurse=False):  # a frozen shift stays so
            param.requires_grad_(getattr(module, name).requires_grad)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_global_bn(child))
    return out
