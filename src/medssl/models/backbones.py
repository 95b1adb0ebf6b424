"""ResNet backbones, including SimCLR's width-multiplied ResNets.

Every backbone is a :class:`torchvision.models.resnet.ResNet` whose ``fc`` is an
``nn.Identity``, so its state dict keeps torchvision's key layout (``conv1``, ``bn1``,
``layer1`` .. ``layer4``) and ImageNet/SimCLR checkpoints converted to that layout load as is.

Width multiplier: SimCLR's "ResNet-50 (2x/4x)" multiplies the channels of *every* layer by k,
the stem included (stem 64k, bottleneck inner widths 64k..512k, outputs 256k..2048k).
torchvision's ``width_per_group`` (``wide_resnet50_2``) only widens the bottleneck's inner
3x3 conv and is a different network, so it is not used here.

``small_images=True`` swaps the stem for a CIFAR-style one (3x3 stride-1 conv, no max-pool),
for inputs of about 64 px or less. ``conv1.weight`` then has shape ``[64k, 3, 3, 3]`` instead
of ``[64k, 3, 7, 7]``: a checkpoint made with the ImageNet stem does not fit it, and
:func:`medssl.models.checkpoint.load_into_backbone` refuses it unless told to drop ``conv1``
(``drop_mismatched_conv1=True``, which keeps the model's freshly initialised ``conv1``).

``timm:<name>`` is a model from timm (:mod:`medssl.models.timm_backbones`): every backbone,
torchvision's or timm's, is built by :func:`build_backbone`, and a run's backbone from its
config by :func:`backbone_from_config`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from medssl.errors import MedsslError
from medssl.models.timm_backbones import (
    TIMM_PREFIX,
    build_timm_backbone,
    is_timm_name,
    patch_size_of,
)
from medssl.options import spelled

__all__ = [
    "BACKBONES",
    "WidthMultipliedResNet",
    "backbone_from_config",
    "build_backbone",
    "build_resnet",
    "resnet_of_state",
    "BackboneTraits",
    "backbone_traits",
]


class WidthMultipliedResNet(ResNet):
    """torchvision's ResNet with every layer's channel count multiplied by ``width``.

    Module names and structure are torchvision's; only channel counts change. With
    ``width=1`` it is the same network (and parameter count) as torchvision's builder.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        width: int = 1,
        num_classes: int = 1000,
        **kwargs: Any,
    ) -> None:
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        # Read by _make_layer while ResNet.__init__ runs, so it must exist before that call.
        self.width = width
        super().__init__(block, layers, num_classes=num_classes, **kwargs)
        # ResNet.__init__ built the stem and fc at width 1: rebuild them at width k.
        stem = 64 * width
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(stem)
        self.fc = nn.Linear(512 * block.expansion * width, num_classes)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self,
        block: type[BasicBlock | Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        if planes == 64:
            # layer1 is always built first, with planes=64: its input is the widened stem.
            self.inplanes = 64 * self.width
        return super()._make_layer(block, planes * self.width, blocks, stride, dilate)


# name -> (torchvision builder for width 1, block, layers per stage, width multiplier)
_SPECS: dict[str, tuple[Callable[..., ResNet], type[BasicBlock | Bottleneck], list[int], int]] = {
    "resnet18": (tv_resnet.resnet18, BasicBlock, [2, 2, 2, 2], 1),
    "resnet34": (tv_resnet.resnet34, BasicBlock, [3, 4, 6, 3], 1),
    "resnet50": (tv_resnet.resnet50, Bottleneck, [3, 4, 6, 3], 1),
    "resnet101": (tv_resnet.resnet101, Bottleneck, [3, 4, 23, 3], 1),
    "resnet152": (tv_resnet.resnet152, Bottleneck, [3, 8, 36, 3], 1),
    "resnet50_2x": (tv_resnet.resnet50, Bottleneck, [3, 4, 6, 3], 2),
    "resnet50_4x": (tv_resnet.resnet50, Bottleneck, [3, 4, 6, 3], 4),
    "resnet152_2x": (tv_resnet.resnet152, Bottleneck, [3, 8, 36, 3], 2),
}

#: Valid backbone names, in a stable order.
BACKBONES: tuple[str, ...] = tuple(_SPECS)


def build_resnet(name: str, num_classes: int = 1000) -> ResNet:
    """Build the full ResNet ``name`` (with its ``fc``), randomly initialised, no weights."""
    if name not in _SPECS:
        raise MedsslError(
            f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}, or "
            f"{TIMM_PREFIX}<name> for a timm model"
        )
    builder, block, layers, width = _SPECS[name]
    if width == 1:
        return builder(weights=None, num_classes=num_classes)
    return WidthMultipliedResNet(block, layers, width=width, num_classes=num_classes)


def resnet_of_state(state: Mapping[str, torch.Tensor]) -> tuple[str, bool] | None:
    """The torchvision ResNet a backbone state dict (torchvision key layout) was made with:
    (name in :data:`BACKBONES`, small stem), read from its keys and shapes (blocks per
    stage, bottleneck or basic blocks, stem width, stem kernel); None if it is none of them."""
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        return None
    layers = []
    for stage in range(1, 5):
        blocks = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{stage}.")
                  and k.split(".")[1].isdigit()}  # fmt: skip
        layers.append(max(blocks) + 1 if blocks else 0)
    block = Bottleneck if "layer1.0.conv3.weight" in state else BasicBlock
    width, rest = divmod(int(conv1.shape[0]), 64)
    for name, (_, spec_block, spec_layers, spec_width) in _SPECS.items():
        if (spec_block, spec_layers, spec_width) == (block, layers, width) and not rest:
            return name, int(conv1.shape[-1]) == 3
    return None


def build_backbone(
    name: str, small_images: bool = False, image_size: int | None = None, patch_size: int = 0
) -> tuple[nn.Module, int]:
    """Build backbone ``name`` without its classifier; return it and its feature dimension.

    The returned module maps ``[N, 3, H, W]`` images to ``[N, feat_dim]`` features
    (``fc`` is ``nn.Identity``; a timm model is built with ``num_classes=0``). Nothing is
    downloaded: weights are random, load a checkpoint with :mod:`medssl.models.checkpoint`.
    Build under ``torch.device("meta")`` to inspect shapes or parameter counts of wide
    models without allocating memory.

    ``image_size`` and ``patch_size`` (0: the model's own) matter to timm transformers only
    (ViT, DeiT, ...: position embeddings for the image size); ``small_images`` to the
    torchvision ResNets only.
    """
    if is_timm_name(name):
        if small_images:
            raise MedsslError(
                f"{spelled('small_stem')} is for medssl's torchvision ResNets; {name} keeps "
                "timm's own stem"
            )
        return build_timm_backbone(name, image_size, patch_size)
    if patch_size:
        raise MedsslError(
            f"{spelled('patch_size')} {patch_size}: {name} has no patch size (only timm "
            "transformers such as timm:vit_small_patch16_224 have one)"
        )
    model = build_resnet(name)
    feat_dim = model.fc.in_features
    model.fc = nn.Identity()
    if small_images:
        stem = model.conv1.out_channels
        model.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    return model, feat_dim


def backbone_from_config(config: Mapping[str, Any]) -> tuple[nn.Module, int]:
    """The (random) backbone of a run from its config: ``backbone``, ``small_stem``,
    ``image_size`` and ``patch_size`` (absent from runs made before timm backbones: 0)."""
    return build_backbone(
        str(config["backbone"]),
        small_images=bool(config.get("small_stem")),
        image_size=int(config.get("image_size") or 0) or None,
        patch_size=int(config.get("patch_size") or 0),
    )


@dataclass(frozen=True)
class BackboneTraits:
    """What the training defaults depend on: batch norm or not, and the patch size."""

    batch_norm: bool  #: ResNets and EfficientNets: True; ViT, DeiT, Swin, ConvNeXt: False
    patch_size: int  #: a transformer's patch side; 0 for networks without patches


def backbone_traits(
    name: str, image_size: int | None = None, patch_size: int = 0
) -> BackboneTraits:
    """:class:`BackboneTraits` of backbone ``name``, checking that it can be built at that
    size (a one-line error otherwise). A timm model is built on the meta device to find
    out, which allocates nothing."""
    if not is_timm_name(name):
        if patch_size or name not in _SPECS:
            build_backbone(name, patch_size=patch_size)  # the one-line error
        return BackboneTraits(batch_norm=True, patch_size=0)
    with torch.device("meta"):
        model, _ = build_backbone(name, image_size=image_size, patch_size=patch_size)
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return BackboneTraits(batch_norm=batch_norm, patch_size=patch_size_of(model))
