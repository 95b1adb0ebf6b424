"""Projection head, the SimCLR pretraining model and the fine-tuning classifier.

State dict layouts (relied on by :mod:`medssl.models.checkpoint`):

- :class:`SimCLRModel`: ``backbone.*`` (torchvision ResNet keys) and ``head.*``.
- :class:`Classifier`: ``backbone.*`` and ``fc.*``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Classifier", "ProjectionHead", "SimCLRModel"]


def _output_batch_norm(dim: int) -> nn.BatchNorm1d:
    """Batch norm with a learned scale and no shift (TensorFlow's ``center=False``).

    The shift is a zero ``bias`` that never trains (``requires_grad`` False; the optimisers
    skip it and the distributed batch-norm conversions keep it so), which keeps the usual
    BatchNorm1d state-dict layout.
    """
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)
    return bn


class ProjectionHead(nn.Module):
    """Two fully connected layers to the embedding: Linear -> BN -> ReLU -> Linear [-> BN].

    SimCLR v2 style (batch norm after the hidden layer). The hidden linear has no bias since
    the batch norm right after it would cancel it; the output linear has no bias either.
    ``output_bn=False`` (medssl's default so far) puts nothing after it (NT-Xent normalises
    the embedding itself); ``output_bn=True`` follows SimCLR's reference code, which puts a
    batch norm on every projection layer, the last one without ReLU and without a shift
    (``center=False``: a learned scale only).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        output_bn: bool = False,
    ) -> None:
        super().__init__()
        hidden = in_dim if hidden_dim is None else hidden_dim
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden, out_dim
        self.output_bn = output_bn
        layers: list[nn.Module] = [
            nn.Linear(in_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim, bias=False),
        ]
        if output_bn:
            layers.append(_output_batch_norm(out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SimCLRModel(nn.Module):
    """Backbone plus projection head; ``forward`` returns the projection (not normalised)."""

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        output_bn: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.head = ProjectionHead(feat_dim, hidden_dim, out_dim, output_bn=output_bn)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``[N, feat_dim]`` (what downstream tasks use)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class Classifier(nn.Module):
    """Backbone plus a linear layer to ``num_classes`` logits.

    With ``freeze_backbone=True`` (linear probe) the backbone's parameters get no gradient
    and it stays in eval mode even under ``model.train()``, so its batch-norm running
    statistics are not updated by the probe's training data; only ``fc`` trains.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        num_classes: int,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.num_classes = num_classes
        self.fc = nn.Linear(feat_dim, num_classes)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``[N, feat_dim]``; computed without autograd when frozen."""
        if self.freeze_backbone:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
