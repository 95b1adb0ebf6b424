"""Convolutions over 1x1 maps (src/medssl/models/single_pixel.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medssl.models.backbones import build_backbone
from medssl.models.single_pixel import SinglePixelConv2d, route_single_pixel_convs

# The bound on the bf16 weight gradient below, counted from its roundings. bf16 keeps 8
# significant bits: rounding to nearest scales a value by 1 + d, |d| <= u = 2^-8 (fp32:
# 2^-24). With inputs and weights >= 0 (a ReLU's output, as layer4.0.conv1 gets, and |w|)
# every sum has terms of one sign, so its relative error is at most its worst term's,
# (1 + u)^r - 1 for r roundings on that term's path. The centre tap's gradient is
# dW[o, i] = 2/N sum_b y[b, o] x[b, i], y[b, o] = sum_j w[o, j] x[b, j], N = BATCH * 256:
#   bf16: x and w entering the autocast conv (2), y leaving it (1), x again as the backward's
#         factor (1), and the sum over the batch: oneDNN accumulates it in fp32 and rounds
#         once, PyTorch's own kernel (no AVX-512, or ONEDNN_MAX_CPU_ISA=AVX2) adds each sample
#         into the bf16 gradient, one rounding each: 4 + BATCH = 12;
#   fp32: the forward's 128-term sum (127 additions), the batch sum (BATCH - 1);
#   exact: 2/N = 2^-10 times a bf16 number, and a product of two bf16 numbers in fp32.
# (1 + 2^-8)^12 (1 + 2^-24)^134 - 1 = 0.048. At a batch of 64 it is 0.30; with signed data
# it is relative to sum |terms|, 11 to 16 times the largest gradient for these shapes. The
# 0.02 this test had (5 roundings) failed on PyTorch's kernel: 0.0205 at a batch of 64.
BATCH = 8
BF16_U, FP32_U = 2.0**-8, 2.0**-24
BF16_GRADIENT_BOUND = (1 + BF16_U) ** (4 + BATCH) * (1 + FP32_U) ** (127 + BATCH - 1) - 1


def _bf16_single_pixel_backward(conv: nn.Conv2d, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A bf16-autocast forward and backward of ``conv`` on BATCH 1x1 maps (>= 0, as after a
    ReLU), and the fp64 reference weight gradient (same weights, same loss)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, conv.in_channels, 1, 1, generator=generator).abs()
    x = x.contiguous(memory_format=torch.channels_last)
    conv.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().square().mean().backward()
    weight = conv.weight.detach().double().requires_grad_()
    reference = nn.functional.conv2d(x.double(), weight, stride=conv.stride, padding=conv.padding)
    reference.square().mean().backward()
    return conv.weight.grad, weight.grad


def test_bf16_weight_gradient_of_a_strided_conv_on_one_pixel_is_right():
    """ResNet-18's layer4.0.conv1 at 16 px (3x3, stride 2, a 1x1 map in and out): oneDNN's
    bf16 kernel wrote garbage (up to 1e34, or NaN) into the taps that only see padding, in
    about half the backward passes; their gradient is exactly 0."""
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 256, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.abs_()  # no cancellation: see BF16_GRADIENT_BOUND
    conv = conv.to(memory_format=torch.channels_last)
    route_single_pixel_convs(conv)
    padding_taps = torch.ones(3, 3, dtype=torch.bool)
    padding_taps[1, 1] = False
    for seed in range(6):
        grad, reference = _bf16_single_pixel_backward(conv, seed)
        largest = grad[:, :, padding_taps].abs().max()  # NaN if any is NaN
        assert largest == 0, f"seed {seed}: padding taps' weight gradient up to {largest}"
        centre = reference[:, :, 1, 1]
        error = ((grad[:, :, 1, 1].double() - centre) / centre).abs().max()
        assert error <= BF16_GRADIENT_BOUND, (seed, float(error), BF16_GRADIENT_BOUND)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_routed_conv_computes_what_nn_conv2d_computes(size, stride):
    torch.manual_seed(size * 10 + stride)
    plain = nn.Conv2d(8, 16, 3, stride=stride, padding=1, bias=True)
    routed = copy.deepcopy(plain)
    route_single_pixel_convs(routed)
    x = torch.randn(4, 8, size, size, dtype=torch.float64, requires_grad=True)
    plain, routed = plain.double(), routed.double()
    y_plain, y_routed = plain(x), routed(x)
    torch.testing.assert_close(y_routed, y_plain, rtol=1e-12, atol=1e-12)
    (g_plain,) = torch.autograd.grad(y_plain.sum(), plain.weight)
    (g_routed,) = torch.autograd.grad(y_routed.sum(), routed.weight)
    torch.testing.assert_close(g_routed, g_plain, rtol=1e-12, atol=1e-12)
    single = SinglePixelConv2d(8, 16, 3, stride=stride, padding=1)._single_tap(x)
    assert single == ((1, 1) if size == 1 else None)  # the shortcut only where it applies


def test_routing_keeps_the_state_dict_and_leaves_other_modules_alone():
    class Custom(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Custom(4, 4, 1), nn.BatchNorm2d(4))
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    assert route_single_pixel_convs(model) == 1
    assert type(model[0]) is SinglePixelConv2d and type(model[1]) is Custom
    assert model.state_dict().keys() == keys.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())


def test_resnet18_at_16px_takes_the_shortcut_in_layer4():
    backbone, _ = build_backbone("resnet18")
    route_single_pixel_convs(backbone)
    seen: list[str] = []
    names = {module: name for name, module in backbone.named_modules()}
    for module in names:
        if isinstance(module, SinglePixelConv2d):
            module.register_forward_pre_hook(
                lambda m, args: seen.append(names[m]) if m._single_tap(args[0]) else None
            )
    backbone.eval()
    with torch.no_grad():
        backbone(torch.zeros(2, 3, 16, 16))
    assert "layer4.0.conv1" in seen and all(n.startswith(("layer3", "layer4")) for n in seen)
