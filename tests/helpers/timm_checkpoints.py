"""Checkpoints in timm's own layout, made by the tests (nothing is downloaded).

timm's ``test_vit`` / ``test_convnext`` are its own tiny test models (a few hundred thousand
parameters), so a run on them takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: (backbone, image size, patch size) of the tiny timm runs: a ViT (layer norm, class token,
#: position embedding) and a ConvNeXt (its head.norm belongs to the pooled features)
TINY_VIT = ("timm:test_vit", 16, 8)
TINY_CONVNEXT = ("timm:test_convnext", 32, 0)


def timm_model(backbone: str, num_classes: int = 3, seed: int = 0, **kwargs):  # noqa: ANN003, ANN201
    """A timm model with a classifier, as a public checkpoint holds it (random weights)."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model(
        backbone.removeprefix("timm:"), pretrained=False, num_classes=num_classes, **kwargs
    )


def save_timm_checkpoint(
    path: Path, backbone: str, wrap: str | None = None, seed: int = 0, **kwargs
) -> dict[str, torch.Tensor]:  # noqa: ANN003
    """Save a timm model's state dict (classifier included) to ``path``: safetensors by
    suffix, else ``torch.save``, optionally nested under ``wrap`` (``state_dict``, ``model``).
    Returns the state dict saved."""
    state = {
        k: v.detach().clone()
        for k, v in timm_model(backbone, seed=seed, **kwargs).state_dict().items()
    }
    if path.suffix == ".safetensors":
        import safetensors.torch

        safetensors.torch.save_file(state, str(path))
    else:
        torch.save({wrap: state} if wrap else state, path)
    return state
