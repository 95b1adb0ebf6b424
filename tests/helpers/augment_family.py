"""What family of random transform each augmentation path builds, read back as a plain dict.

:func:`describe_transform` reads a CPU view transform (torchvision v2, from
:func:`medssl.augment.view_transform`), :func:`describe_batch` a
:class:`~medssl.batch_augment.BatchViewAugment` (kornia), both into the same keys, so a test
can assert that the two paths build transforms of the same family. Both read the transform
objects' attributes, kornia's private ones included (``_param_generator``, ``flags``), which
is why this lives with the tests rather than in medssl.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torchvision.transforms import v2

if TYPE_CHECKING:
    from medssl.batch_augment import BatchViewAugment

_DIGITS = 6

#: Step names in the order both paths apply them (a missing step is left out).
STEP_NAMES = ("rotation", "crop", "hflip", "jitter", "grayscale", "blur", "normalize")


def _num(value: Any) -> float:
    """A Python float rounded so that float32 and float64 spellings compare equal."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1)[0].item()
    return round(float(value), _DIGITS)


def _values(value: Any) -> list[float]:
    """A scalar, sequence or tensor as a flat list of floats."""
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.detach().cpu().reshape(-1).tolist()]
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [float(v) for v in value]
    return [float(value)]


def _pair(value: Any) -> tuple[float, float]:
    """A ``(lo, hi)`` range as a tuple of rounded floats; a scalar ``x`` reads as ``(x, x)``."""
    vals = _values(value)
    return (round(vals[0], _DIGITS), round(vals[-1], _DIGITS))


def _vector(value: Any) -> tuple[float, ...]:
    return tuple(round(v, _DIGITS) for v in _values(value))


def _amount(value: Any, centre: float) -> float:
    """Jitter strength from either spelling: a scalar ``x`` or a range ``(centre - x, centre + x)``.

    The upper end is used because torchvision clips the lower one at 0 (brightness 1.6 is stored
    as ``(0.0, 2.6)``). ``None`` (torchvision's "off") reads as 0.
    """
    if value is None:
        return 0.0
    vals = _values(value)
    if len(vals) == 1:
        return round(vals[0], _DIGITS)
    return round(vals[-1] - centre, _DIGITS)


def _jitter(jitter: Any, p: Any) -> tuple[float, ...]:
    """(brightness, contrast, saturation, hue, p) of a torchvision or medssl colour jitter."""
    return (
        _amount(jitter.brightness, 1.0),
        _amount(jitter.contrast, 1.0),
        _amount(jitter.saturation, 1.0),
        _amount(jitter.hue, 0.0),
        _num(p),
    )


def _size(value: Any) -> int:
    vals = [int(v) for v in _values(value)]
    if len(set(vals)) != 1:
        raise ValueError(f"expected a square size, got {vals}")
    return vals[0]


def _empty_description() -> dict[str, Any]:
    return {
        "order": [],
        "crop_size": None,
        "crop_scale": None,
        "crop_ratio": None,
        "hflip_p": 0.0,
        "rotation_degrees": 0.0,
        "jitter": None,
        "grayscale_p": 0.0,
        "blur": False,
        "blur_kernel": None,
        "blur_sigma": None,
        "blur_p": 0.0,
        "normalize": None,
    }


def _finish(desc: dict[str, Any]) -> dict[str, Any]:
    desc["order"] = tuple(desc["order"])
    return desc


def describe_transform(compose: v2.Compose) -> dict[str, Any]:
    """The family of a CPU view transform (from :func:`medssl.augment.view_transform`).

    Reads the torchvision v2 objects themselves (``RandomResizedCrop.scale``,
    ``RandomRotation.degrees``, ``ColorJitter`` ranges, ``RandomApply.p`` ...) into the dict
    :func:`describe_batch` returns:

    - ``order``: step names from :data:`STEP_NAMES` in application order (an unknown
      transform appears under its class name);
    - ``crop_size``, ``crop_scale`` ``(lo, hi)``, ``crop_ratio`` ``(lo, hi)``;
    - ``hflip_p``; ``rotation_degrees`` (0 when absent);
    - ``jitter``: ``(brightness, contrast, saturation, hue, p)`` or ``None``;
    - ``grayscale_p`` (0 when absent);
    - ``blur`` (whether there is a blur step), ``blur_kernel``, ``blur_sigma``, ``blur_p``;
    - ``normalize``: ``(mean, std)``.
    """
    desc = _empty_description()
    for step in compose.transforms:
        if isinstance(step, v2.ToDtype):
            continue  # the batch path converts dtype on entry
        if isinstance(step, v2.RandomApply):
            inner = list(step.transforms)
            if len(inner) == 1 and isinstance(inner[0], v2.ColorJitter):
                desc["order"].append("jitter")
                desc["jitter"] = _jitter(inner[0], step.p)
                continue
            if len(inner) == 1 and isinstance(inner[0], v2.GaussianBlur):
                blur = inner[0]
                desc["order"].append("blur")
                desc.update(
                    blur=True,
                    blur_kernel=_size(blur.kernel_size),
                    blur_sigma=_pair(blur.sigma),
                    blur_p=_num(step.p),
                )
                continue
            desc["order"].append(f"RandomApply[{','.join(type(t).__name__ for t in inner)}]")
        elif isinstance(step, v2.RandomRotation):
            desc["order"].append("rotation")
            desc["rotation_degrees"] = max(abs(v) for v in _pair(step.degrees))
        elif isinstance(step, v2.RandomResizedCrop):
            desc["order"].append("crop")
            desc.update(
                crop_size=_size(step.size),
                crop_scale=_pair(step.scale),
                crop_ratio=_pair(step.ratio),
            )
        elif isinstance(step, v2.RandomHorizontalFlip):
            desc["order"].append("hflip")
            desc["hflip_p"] = _num(step.p)
        elif isinstance(step, v2.ColorJitter):  # unwrapped: always applied
            desc["order"].append("jitter")
            desc["jitter"] = (
                _amount(step.brightness, 1.0),
                _amount(step.contrast, 1.0),
                _amount(step.saturation, 1.0),
                _amount(step.hue, 0.0),
                1.0,
            )
        elif isinstance(step, v2.RandomGrayscale):
            desc["order"].append("grayscale")
            desc["grayscale_p"] = _num(step.p)
        elif isinstance(step, v2.GaussianBlur):  # unwrapped: always applied
            desc["order"].append("blur")
            desc.update(
                blur=True,
                blur_kernel=_size(step.kernel_size),
                blur_sigma=_pair(step.sigma),
                blur_p=1.0,
            )
        elif isinstance(step, v2.Normalize):
            desc["order"].append("normalize")
            desc["normalize"] = (_vector(step.mean), _vector(step.std))
        else:
            desc["order"].append(type(step).__name__)
    return _finish(desc)


def describe_batch(aug: BatchViewAugment) -> dict[str, Any]:
    """The family of a batch view transform, read back from its kornia and medssl modules.

    Same keys and conventions as :func:`describe_transform` of the CPU path, so
    ``describe_batch(BatchViewAugment(c, n)) == describe_transform(view_transform(c, n))``.
    """
    import kornia.augmentation as kaug

    from medssl.batch_transforms import RandomColorJitter, RandomGaussianBlur

    desc = _empty_description()
    for step in aug.steps:
        if isinstance(step, kaug.RandomRotation):
            desc["order"].append("rotation")
            desc["rotation_degrees"] = _rotation_degrees(step)
        elif isinstance(step, kaug.RandomResizedCrop):
            gen = step._param_generator
            desc["order"].append("crop")
            desc.update(
                crop_size=_size(step.flags["size"]),
                crop_scale=_pair(gen.scale),
                crop_ratio=_pair(gen.ratio),
            )
        elif isinstance(step, kaug.RandomHorizontalFlip):
            desc["order"].append("hflip")
            desc["hflip_p"] = _num(step.p)
        elif isinstance(step, RandomColorJitter):
            desc["order"].append("jitter")
            desc["jitter"] = _jitter(step, step.p)
        elif isinstance(step, kaug.RandomGrayscale):
            desc["order"].append("grayscale")
            desc["grayscale_p"] = _num(step.p)
        elif isinstance(step, RandomGaussianBlur):
            desc["order"].append("blur")
            desc.update(
                blur=True,
                blur_kernel=step.kernel_size,
                blur_sigma=_pair(step.sigma),
                blur_p=_num(step.p),
            )
        elif isinstance(step, kaug.Normalize):
            desc["order"].append("normalize")
            desc["normalize"] = (_vector(step.flags["mean"]), _vector(step.flags["std"]))
        else:
            desc["order"].append(type(step).__name__)
    return _finish(desc)


def _rotation_degrees(step: torch.nn.Module) -> float:
    """Half-width of a kornia ``RandomRotation`` range."""
    gen = step._param_generator
    dist = getattr(gen, "sampler_dict", {}).get("degrees")
    if dist is not None and hasattr(dist, "low"):
        return max(abs(_num(dist.low)), abs(_num(dist.high)))
    lo, hi = _pair(gen.samplers[0][0])  # a scalar d reads as (d, d) and means (-d, d)
    return max(abs(lo), abs(hi))
