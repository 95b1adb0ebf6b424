"""Augmentation presets for contrastive views and for fine-tuning.

Presets (Azizi et al. 2021, following SimCLR):

- ``derm``: SimCLR's default set: random resized crop, horizontal flip, colour jitter of
  strength 1.0 applied with p=0.8, random grayscale p=0.2, Gaussian blur p=0.5.
- ``cxr``: random crop, colour jitter of strength 0.5, rotation up to 45 degrees and
  horizontal flip; **no Gaussian blur** (and no grayscale: X-rays are grey already).

Every field of :class:`AugmentConfig` can be overridden (``--aug key=value`` on the CLI, or
an ``augment:`` block in a config file or a protocol's pretraining entry, with the preset
under ``preset``: ``augment: {preset: cxr, blur_p: 0.1}``); each value is checked against
the field's range (probabilities in [0, 1], ...).

Two ways to make the views (``--augment-mode``), the same family of transform in both:

- ``per-sample``: torchvision v2 transforms on one image at a time, in DataLoader worker
  processes (:func:`view_transform`);
- ``batch``: kornia transforms on whole uint8 batches on the training device, CPU or GPU, in
  the training process (:mod:`medssl.batch_augment`).

``auto`` (:func:`resolve_augment_mode`) picks ``batch`` wherever kornia is installed: measured
on a 2-core CPU it reaches 0.93 of the model-only ceiling against 0.67 for per-sample views in
two workers (docs/PERFORMANCE.md), and on a GPU it takes augmentation off the CPU altogether.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from medssl.errors import MedsslError
from medssl.options import Given, Where, option, parse_flag_value, read, spelled

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _probability(default: float, what: str) -> Any:
    return option(default, minimum=0, maximum=1, help=f"probability of {what}")


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of one view's random transform (each an option: ``--aug key=value``, an
    ``augment:`` block of a config file or protocol)."""

    crop_scale_min: float = option(0.08, above=0, maximum=1, help="smallest crop (area share)")
    crop_scale_max: float = option(1.0, above=0, maximum=1, help="largest crop (area share)")
    hflip_p: float = _probability(0.5, "a horizontal flip")
    jitter_strength: float = option(1.0, minimum=0, help="colour jitter strength (SimCLR's s)")
    jitter_p: float = _probability(0.8, "colour jitter")
    grayscale_p: float = _probability(0.2, "grey")
    blur_p: float = _probability(0.5, "Gaussian blur")
    blur_sigma_min: float = option(0.1, above=0, help="smallest blur sigma (pixels)")
    blur_sigma_max: float = option(2.0, above=0, help="largest blur sigma (pixels)")
    rotation_degrees: float = option(0.0, minimum=0, maximum=180, help="rotation range (+-)")

    def __post_init__(self) -> None:
        pairs = (("crop_scale_min", "crop_scale_max"), ("blur_sigma_min", "blur_sigma_max"))
        for low, high in pairs:
            a, b = getattr(self, low), getattr(self, high)
            if a > b:
                raise MedsslError(f"augmentation: {low} {a} is above {high} {b}")

    def with_overrides(self, overrides: dict[str, Any] | None) -> AugmentConfig:
        """A copy with ``overrides`` applied, each checked (name, type, range)."""
        if not overrides:
            return self
        values = read(AugmentConfig, Given(overrides, Where("augmentation option ")))
        return dataclasses.replace(self, **values)


PRESETS: dict[str, AugmentConfig] = {
    "derm": AugmentConfig(),
    "cxr": AugmentConfig(jitter_strength=0.5, grayscale_p=0.0, blur_p=0.0, rotation_degrees=45.0),
}


def dataset_preset(dataset: str) -> str:
    """The preset ``dataset`` uses by default (from its record in the adapters' registry)."""
    from medssl.data.adapters import DATASETS

    info = DATASETS.get(dataset)
    return info.preset if info is not None else "derm"


def finetune_augment(rotation_degrees: float = 0.0) -> AugmentConfig:
    """The views of supervised fine-tuning: crop (scale 0.5-1), flip, the preset's rotation,
    no colour change. Both augmentation modes build it like a contrastive view."""
    return AugmentConfig(
        crop_scale_min=0.5, jitter_strength=0.0, grayscale_p=0.0, blur_p=0.0,
        rotation_degrees=rotation_degrees,
    )  # fmt: skip


AUGMENT_MODES = ("auto", "per-sample", "batch")
#: ``--augment-on`` (before 0.2) -> ``--augment-mode``
DEPRECATED_AUGMENT_ON = {"cpu": "per-sample", "gpu": "batch"}


def kornia_available() -> bool:
    try:
        import kornia.augmentation  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_augment_mode(mode: str) -> str:
    """``per-sample`` or ``batch`` for a requested ``--augment-mode``.

    ``auto`` is ``batch`` when kornia is installed (faster on the CPU and the GPU, see the
    module docstring), else ``per-sample``. The old ``--augment-on`` values ``cpu`` and ``gpu``
    still work, with a deprecation warning on stderr.
    """
    if mode in DEPRECATED_AUGMENT_ON:
        new = DEPRECATED_AUGMENT_ON[mode]
        print(
            f"warning: augment_on {mode!r} is deprecated; use --augment-mode {new} "
            "(augment_mode in config files and protocols)",
            file=sys.stderr,
        )
        return new
    if mode not in AUGMENT_MODES:
        raise MedsslError(
            f"{spelled('augment_mode')} {mode!r} is not one of {', '.join(AUGMENT_MODES)}"
        )
    if mode == "auto":
        return "batch" if kornia_available() else "per-sample"
    return mode


def expand_augment_block(given: Given) -> None:
    """An ``augment:`` mapping in a config file or protocol: its ``preset`` key (optional) is
    the preset, its other keys are augmentation parameters (over ``augment_overrides``).
    Messages then name them as written (``augment.blur_p``, ``augment.preset``)."""
    block = given.get("augment")
    if not isinstance(block, Mapping):
        return
    where = given.where_of("augment") or Where(f"{spelled('augment')}: ")
    inner = where.inside("augment")
    block = dict(block)
    name = block.pop("preset", "")
    overrides = given.get("augment_overrides")
    if isinstance(overrides, Mapping):
        block = {**overrides, **block}
    given.set("augment", name, Where(fixed=f"{inner.prefix}preset"))
    given.set("augment_overrides", block, Where(fixed=inner.prefix[:-1], blocks=(
        ("augment_overrides", inner),
    )))  # fmt: skip


def preset(name: str, overrides: dict[str, Any] | None = None) -> AugmentConfig:
    if name not in PRESETS:
        raise MedsslError(f"{spelled('augment')} {name!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[name].with_overrides(overrides)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["blur_p=0", "rotation_degrees=30"]`` -> ``{"blur_p": 0, ...}``: values as a config
    file would hold them, checked by the caller (:func:`medssl.options.read`)."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MedsslError(f"--aug {item!r}: expected key=value")
        result[key.strip()] = parse_flag_value(value.strip(), float)
    return result


def blur_kernel_size(image_size: int) -> int:
    """SimCLR's kernel: 10% of the image side, odd, at least 3."""
    k = max(3, int(round(0.1 * image_size)))
    return k if k % 2 else k + 1


def _normalize() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def view_transform(config: AugmentConfig, image_size: int) -> v2.Compose:
    """One contrastive view: uint8 CHW tensor in, normalised float CHW tensor out."""
    s = config.jitter_strength
    steps: list[v2.Transform] = []
    if config.rotation_degrees > 0:
        steps.append(v2.RandomRotation(config.rotation_degrees))
    steps += [
        v2.RandomResizedCrop(
            image_size, scale=(config.crop_scale_min, config.crop_scale_max), antialias=True
        ),
        v2.RandomHorizontalFlip(config.hflip_p),
    ]
    if s > 0 and config.jitter_p > 0:
        jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
        steps.append(v2.RandomApply([jitter], p=config.jitter_p))
    if config.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(config.grayscale_p))
    if config.blur_p > 0:
        blur = v2.GaussianBlur(
            blur_kernel_size(image_size), sigma=(config.blur_sigma_min, config.blur_sigma_max)
        )
        steps.append(v2.RandomApply([blur], p=config.blur_p))
    return v2.Compose(steps + _normalize())


def finetune_transform(image_size: int, rotation_degrees: float = 0.0) -> v2.Compose:
    """Light supervised augmentation (:func:`finetune_augment`), one image at a time."""
    return view_transform(finetune_augment(rotation_degrees), image_size)


def eval_transform() -> v2.Compose:
    """Evaluation: the cached image as is (already resized and centre-cropped)."""
    return v2.Compose(_normalize())
