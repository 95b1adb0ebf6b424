"""Backbones from timm (``--backbone timm:<name>``): building them, and loading timm checkpoints.

Any timm model that returns pooled features with ``num_classes=0`` is a backbone: ResNets,
ConvNeXt, ViT/DeiT, EfficientNet, ... It is always built with ``pretrained=False``, so
nothing is downloaded; weights come from ``--init``: a local file in timm's own key layout
(safetensors, or a ``.pth``/``.pt`` state dict, possibly under ``state_dict`` or ``model``,
as timm and the foundation-model releases ship them) or a medssl run.

Transformers that take ``img_size``/``patch_size`` (ViT, DeiT, ...) are built for the run's
image size, optionally with another patch size (``--patch-size``). A checkpoint made at
another image or patch size is adapted with timm's own helpers: the absolute position
embedding is resampled to the model's grid (``timm.layers.resample_abs_pos_embed``) and the
patch projection to its patch size (``timm.layers.resample_patch_embed``, FlexiViT's
method). An image size that the patch size does not divide is refused with one line.

timm is imported only when a timm backbone is used (importing it takes seconds).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medssl.errors import MedsslError
from medssl.options import spelled

__all__ = [
    "TIMM_PREFIX",
    "build_timm_backbone",
    "is_timm_model",
    "is_timm_name",
    "patch_size_of",
    "timm_backbone_state",
]

#: the prefix that names a timm model as a backbone: ``timm:vit_small_patch16_224``
TIMM_PREFIX = "timm:"
# wrapper prefixes of whole-model checkpoints; under "backbone." (medssl's SimCLRModel and
# Classifier, most SSL code) only those keys are the backbone
_WRAPPERS = ("module.", "model.", "encoder.")


def is_timm_name(name: str) -> bool:
    """Whether backbone ``name`` is a timm model (``timm:<name>``)."""
    return name.startswith(TIMM_PREFIX)


def is_timm_model(module: nn.Module) -> bool:
    """Whether ``module`` was built by timm (its checkpoints use timm's key layout)."""
    return type(module).__module__.startswith("timm.")


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


def _unknown(model_name: str, timm: Any) -> MedsslError:
    close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
    return MedsslError(
        f"{spelled('backbone')} {TIMM_PREFIX}{model_name}: timm {timm.__version__} has no such "
        f"model (timm.list_models() names them){hint}"
    )


def _no_patches(patch_size: int, model_name: str) -> MedsslError:
    return MedsslError(
        f"{spelled('patch_size')} {patch_size}: {TIMM_PREFIX}{model_name} has no patch size "
        "(only transformers such as ViT have one)"
    )


def build_timm_backbone(
    name: str, image_size: int | None = None, patch_size: int = 0
) -> tuple[nn.Module, int]:
    """timm model ``timm:<name>`` without its classifier, randomly initialised; and its width.

    ``image_size`` and ``patch_size`` (0: the model's own) go to models that take them
    (``img_size``, ``patch_size``: ViT, DeiT, ...); a patch size for a model without patches,
    or an image size that is not a multiple of the patch size, is a one-line error.
    """
    import timm

    model_name = name[len(TIMM_PREFIX) :] if is_timm_name(name) else name
    if not timm.is_model(model_name):
        raise _unknown(model_name, timm)
    sized = {"img_size": image_size} if image_size else {}
    if patch_size:
        sized["patch_size"] = patch_size
    try:
        try:
            model = timm.create_model(model_name, pretrained=False, num_classes=0, **sized)
        except TypeError as exc:  # a model without img_size / patch_size arguments
            if not any(k in str(exc) for k in sized):
                raise
            if patch_size:
                raise _no_patches(patch_size, model_name) from None
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
    except MedsslError:
        raise
    except Exception as exc:  # noqa: BLE001 - timm's builders raise anything (asserts too)
        at = f" at {image_size} px" if image_size else ""
        raise MedsslError(
            f"{spelled('backbone')} {TIMM_PREFIX}{model_name}{at}: timm cannot build it "
            f"({_short(exc)})"
        ) from None
    patch = patch_size_of(model)
    if patch_size and not patch:  # a ConvNeXt takes patch_size too: its stem's stride
        raise _no_patches(patch_size, model_name)
    if image_size and patch and image_size % patch:
        raise MedsslError(
            f"{spelled('image_size')} {image_size} is not a multiple of the patch size {patch} "
            f"of {TIMM_PREFIX}{model_name} (choose another image size or {spelled('patch_size')})"
        )
    reduction = _reduction(model)
    if image_size and image_size < reduction:
        raise MedsslError(
            f"{spelled('image_size')} {image_size} is smaller than {TIMM_PREFIX}{model_name}'s "
            f"downsampling ({reduction} px per feature); give at least {reduction}"
        )
    # head_hidden_size: models whose pooled features go through a pre-logits layer
    width = getattr(model, "head_hidden_size", None) or model.num_features
    return model, int(width)


def _reduction(model: nn.Module) -> int:
    """The input pixels per final feature-map pixel (timm's ``feature_info``; 1 if unknown)."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and all(isinstance(f, dict) for f in info):
        return max(int(f.get("reduction", 1)) for f in info)
    return 1


def patch_size_of(model: nn.Module) -> int:
    """A patch-based timm model's patch size (its side), 0 for other models."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    if size is None:
        return 0
    return int(size[0] if isinstance(size, tuple | list) else size)


def _backbone_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's entries of a whole-model or wrapped state dict, in timm's layout."""
    out = dict(state)
    changed = True
    while changed:  # a common wrapper around every key (DDP's module., model., ...)
        changed = False
        for prefix in _WRAPPERS:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    if any(k.startswith("backbone.") for k in out):  # medssl's SimCLRModel / Classifier
        out = {k[len("backbone.") :]: v for k, v in out.items() if k.startswith("backbone.")}
    return out


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _resized_embeddings(
    state: dict[str, torch.Tensor], model: nn.Module, expected: Mapping[str, torch.Tensor]
) -> list[str]:
    """Resample ``pos_embed`` to the model's grid and the patch projection to its patch size;
    what was resampled, as lines for the start banner."""
    done: list[str] = []
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    key = "patch_embed.proj.weight"
    if key in state and key in expected and state[key].shape != expected[key].shape:
        old, new = state[key].shape, expected[key].shape
        if old[:2] == new[:2]:  # same channels: only the patch size differs
            state[key] = resample_patch_embed(state[key], list(new[2:]))
            done.append(f"{key} resampled {list(old[2:])} -> {list(new[2:])}")
    embed = getattr(model, "patch_embed", None)
    key = "pos_embed"
    if key in state and key in expected and state[key].shape != expected[key].shape:
        old, new = state[key], expected[key]
        if old.ndim == 3 and new.ndim == 3 and old.shape[-1] == new.shape[-1] and embed:
            prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
            grid = [int(g) for g in embed.grid_size]
            if int((old.shape[1] - prefix) ** 0.5) ** 2 == old.shape[1] - prefix:
                state[key] = resample_abs_pos_embed(old, grid, num_prefix_tokens=prefix)
                side = int((old.shape[1] - prefix) ** 0.5)
                done.append(f"pos_embed resampled {side}x{side} -> {grid[0]}x{grid[1]}")
    return done


def timm_backbone_state(
    state: Mapping[str, torch.Tensor], model: nn.Module, report: Any = None
) -> dict[str, torch.Tensor]:
    """A timm checkpoint's state dict, made to fit the timm backbone ``model`` if it can.

    Wrapper prefixes are removed (``module.``, ``model.``, ``encoder.`` around every key;
    only the ``backbone.`` entries of a whole medssl model); the classifier named by the
    model's ``pretrained_cfg['classifier']`` (``head``, ``head.fc``, ``fc``, ...) is dropped
    where the backbone has no such keys; position and patch embeddings made at another
    image or patch size are resampled. What still does not fit is for
    :func:`medssl.models.checkpoint.load_into_backbone` to report. ``report`` (a
    :class:`~medssl.models.checkpoint.LoadReport`) receives the keys dropped and the
    embeddings resampled.
    """
    out = _backbone_keys(state)
    expected = model.state_dict()
    heads = _classifier_names(model)

    def head(k: str) -> bool:
        return k not in expected and any(k == h or k.startswith(h + ".") for h in heads)

    dropped = [k for k in out if head(k)]
    out = {k: v for k, v in out.items() if not head(k)}
    resampled = _resized_embeddings(out, model, expected)
    if report is not None:
        report.dropped.extend(dropped)
        report.adapted.extend(resampled)
    return out
