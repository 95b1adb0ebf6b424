"""Optimisers and learning-rate schedules for SimCLR-style pretraining and fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from medssl.errors import MedsslError

__all__ = [
    "LARS",
    "OPTIMIZERS",
    "PRETRAIN_DEFAULTS",
    "build_optimizer",
    "build_scheduler",
    "epoch_scheduler",
    "param_groups_for_lars",
    "pretrain_optimizer",
    "scaled_lr",
    "warmup_cosine",
]

OPTIMIZERS = ("lars", "sgd", "adamw")

#: each optimiser's pretraining defaults (``--lr``, ``--lr-scaling``, ``--weight-decay`` left
#: unset). LARS (and SGD): SimCLR's, base 0.075 x sqrt(batch). AdamW: the recipe of
#: self-supervised ViTs (DINO's base 5e-4 x batch / 256; weight decay 0.05, between DINO's
#: 0.04 start and MoCo v3's 0.1); not yet tuned on medical images in medssl.
PRETRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "lars": {"lr": 0.075, "lr_scaling": "sqrt", "weight_decay": 1e-6},
    "sgd": {"lr": 0.075, "lr_scaling": "sqrt", "weight_decay": 1e-6},
    "adamw": {"lr": 5e-4, "lr_scaling": "linear", "weight_decay": 0.05},
}


def pretrain_optimizer(batch_norm: bool) -> str:
    """What ``--optimizer auto`` pretrains with: LARS for batch-norm networks (ResNets,
    EfficientNets: SimCLR's recipe, for which LARS was made), AdamW for networks with layer
    norm (ViT, DeiT, Swin, ConvNeXt: the recipe of MoCo v3 and DINO, with the same linear
    warmup and cosine decay)."""
    return "lars" if batch_norm else "adamw"


class LARS(Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    SimCLR trains with batches of thousands of images and a large learning rate; plain SGD
    then diverges because the ratio between a layer's update and its weights varies a lot
    from layer to layer. LARS rescales each parameter tensor's update by a *trust ratio*
    ``eta * ||p|| / ||g + wd * p||`` so every layer moves by roughly the same relative amount.

    For each parameter ``p`` with gradient ``g`` in a group with ``lars_exclude=False``
    (computed for all of a group's tensors at once with ``torch._foreach_*``, as torch's own
    optimisers do: a per-tensor loop took 31 ms a step for ResNet-18 on a 2-core CPU)::

        d = g + weight_decay * p
        d = d * (eta * ||p|| / ||d||)      # only when both norms are > 0
        buf = momentum * buf + d           # buf starts at zero
        p = p - lr * buf

    Groups flagged ``lars_exclude=True`` (biases and batch-norm parameters, see
    :func:`param_groups_for_lars`) get neither weight decay nor the trust ratio: plain SGD
    with momentum, as in SimCLR's implementation.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        if lr < 0:
            raise ValueError(f"LARS learning rate must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"LARS momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"LARS weight decay must be >= 0, got {weight_decay}")
        if eta <= 0:
            raise ValueError(f"LARS eta must be > 0, got {eta}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("LARS does not support sparse gradients")
            updates = [p.grad for p in params]
            if not group["lars_exclude"]:
                updates = self._scaled_updates(params, updates, group["weight_decay"], group["eta"])
            if group["momentum"] != 0:
                updates = self._momentum_buffers(params, updates, group["momentum"])
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss

    @staticmethod
    def _scaled_updates(
        params: list[Tensor], grads: list[Tensor], weight_decay: float, eta: float
    ) -> list[Tensor]:
        """``d = g + weight_decay * p``, each scaled by its trust ratio (1 where a norm is 0)."""
        if weight_decay != 0:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        p_norms = torch.stack(torch._foreach_norm(params))
        d_norms = torch.stack(torch._foreach_norm(grads))
        # Kept as tensors: no host-device sync per parameter.
        trust = torch.where(
            (p_norms > 0) & (d_norms > 0), eta * p_norms / d_norms, torch.ones_like(p_norms)
        )
        return torch._foreach_mul(grads, list(trust.to(grads[0].dtype).unbind()))

    def _momentum_buffers(
        self, params: list[Tensor], updates: list[Tensor], momentum: float
    ) -> list[Tensor]:
        """``buf = momentum * buf + d`` for every parameter; a new buffer starts at zero."""
        buffers = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, updates)
        return buffers


def _split_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters split into (weights, 1-D parameters: biases and norm layers)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def _groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = _split_decay(model)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def param_groups_for_lars(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups for :class:`LARS` (also fine for SGD and AdamW).

    Every trainable parameter with ``ndim <= 1`` (biases, batch-norm / layer-norm scales
    and shifts) goes to a group with ``weight_decay=0`` and ``lars_exclude=True``; the
    others (conv and linear weights) get ``weight_decay`` and the trust ratio. Decaying
    biases and norm scales only hurts, and their norms are too small for a meaningful trust
    ratio. Empty groups are left out; frozen parameters are skipped.
    """
    return _groups(model, weight_decay)


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
) -> Optimizer:
    """Optimiser ``name`` ("lars", "sgd" or "adamw") for ``model``'s trainable parameters.

    Biases and normalisation parameters are excluded from weight decay for all three.
    ``momentum`` is ignored by AdamW. An unknown name raises :class:`MedsslError`.
    """
    key = name.strip().lower()
    if key not in OPTIMIZERS:
        raise MedsslError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    groups = _groups(model, weight_decay)
    if key == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to 0.

    During warmup the multiplier is ``(step + 1) / warmup_steps``, so the very first step
    already moves (by a small amount) and step ``warmup_steps - 1`` reaches 1. It then
    follows half a cosine from 1 at ``step == warmup_steps`` down to 0 at
    ``step == total_steps``; later steps stay at 0.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps == 0:
        return 0.0
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: Optimizer, total_steps: int, warmup_steps: int) -> LambdaLR:
    """Per-step :func:`warmup_cosine` schedule; call ``scheduler.step()`` after each batch."""
    if total_steps < 1:
        raise MedsslError(f"the schedule needs at least one training step, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise MedsslError(
            f"warmup steps ({warmup_steps}) must be between 0 and the total number of "
            f"training steps ({total_steps})"
        )
    return LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps))


def scaled_lr(base_lr: float, batch_size: int, rule: str = "sqrt") -> float:
    """Learning rate scaled with the batch size as in SimCLR.

    ``"linear"``: ``base_lr * batch_size / 256`` (SimCLR: base 0.3 with LARS);
    ``"sqrt"``: ``base_lr * sqrt(batch_size)`` (SimCLR: base 0.075, better for small batches).
    """
    if batch_size < 1:
        raise MedsslError(f"batch size must be >= 1, got {batch_size}")
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    raise MedsslError(f"unknown learning-rate scaling rule {rule!r}: choose 'linear' or 'sqrt'")


def epoch_scheduler(
    optimizer: Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float
) -> LambdaLR:
    """:func:`build_scheduler` for a run measured in epochs (warmup capped below the total)."""
    total = epochs * steps_per_epoch
    warmup = min(int(warmup_epochs * steps_per_epoch), max(total - 1, 0))
    return build_scheduler(optimizer, total, warmup)
