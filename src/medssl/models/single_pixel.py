"""Convolutions over a 1x1 feature map computed as what they are: a 1x1 convolution.

oneDNN's bf16 CPU kernel for the weight gradient of a padded, strided convolution whose
input *and* output are 1x1 (ResNet-18's ``layer4.0.conv1``, 3x3 stride 2, at 16 px with the
ImageNet stem) writes uninitialised memory into the kernel taps that only ever see the zero
padding. Their gradient is exactly 0; measured (torch 2.14.1, AVX512-BF16, 256 -> 512
channels, batch 128, two threads) it was garbage up to 1e34, or NaN, in 3 to 9 of 10
backward passes, and in about half the optimiser steps of a 16 px pretraining run, which the
finite-step guard then skipped. fp32 and stride 1 are not affected.

On a single input pixel, with zero padding and an output of one pixel, only the tap at
``(padding_h, padding_w)`` meets a real input value, so the convolution equals a 1x1
convolution with that tap's weights: the same numbers, a ninth of the work for a 3x3
kernel, and a weight gradient that is exactly 0 on the other taps through autograd's
slicing, in any precision. :func:`route_single_pixel_convs` makes the convolutions of a
model take that path when (and only when) the case arises; the weights, the state-dict keys
and every other input are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SinglePixelConv2d", "route_single_pixel_convs"]


class SinglePixelConv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes a 1x1-input, 1x1-output case as a 1x1 convolution."""

    def _single_tap(self, x: torch.Tensor) -> tuple[int, int] | None:
        """The one kernel tap that sees the input, when ``x`` is one pixel and so is the
        output (zero padding, no dilation); else None."""
        if x.shape[-2:] != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return None
        if self.dilation != (1, 1):
            return None
        (kh, kw), (ph, pw), (sh, sw) = self.kernel_size, self.padding, self.stride
        if (kh, kw) == (1, 1) or ph >= kh or pw >= kw:
            return None
        out_h, out_w = (1 + 2 * ph - kh) // sh + 1, (1 + 2 * pw - kw) // sw + 1
        return (ph, pw) if (out_h, out_w) == (1, 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tap = self._single_tap(x)
        if tap is None:
            return super().forward(x)
        weight = self.weight[:, :, tap[0] : tap[0] + 1, tap[1] : tap[1] + 1]
        return F.conv2d(x, weight, self.bias, 1, 0, 1, self.groups)


def route_single_pixel_convs(model: nn.Module) -> int:
    """Make every plain ``nn.Conv2d`` of ``model`` a :class:`SinglePixelConv2d` (in place:
    same parameters, same state dict); the number changed.

    Only exact ``nn.Conv2d`` instances change (a subclass keeps its own forward). For
    training; a model to be exported by TorchScript should not take this path.
    """
    changed = 0
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = SinglePixelConv2d
            changed += 1
    return changed
