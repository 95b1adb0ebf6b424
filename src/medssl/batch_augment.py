"""Views of whole batches on the training device, CPU or GPU (``--augment-mode batch``).

:class:`BatchViewAugment` builds, with :mod:`kornia.augmentation` (rotation, crop, flip,
grayscale, normalisation) and :mod:`medssl.batch_transforms` (colour jitter and blur, written
for speed: see there), the same family of random transform as
:func:`medssl.augment.view_transform` builds with torchvision v2 for the CPU path: the same
steps in the same order, with the same ranges and probabilities, each drawn independently per
sample. It takes a uint8 (or float in ``[0, 1]``) ``(B, 3, H, W)`` batch on
any device and returns a normalised float ``(B, 3, image_size, image_size)`` batch.

The tests read both built transforms back into plain dicts
(``tests/helpers/augment_family.py``) and assert that both paths build the same family.

Randomness: kornia draws its parameters from torch's *global* RNG (the CPU generator, or the
CUDA generator of the module's device after ``.to("cuda")``), the two medssl steps from the
global RNG of the batch's device, so ``torch.manual_seed`` makes a
run reproducible. ``forward(x, generator=g)`` instead derives one seed from ``g`` and runs
under :func:`torch.random.fork_rng`, which leaves the global RNG state untouched.

Known differences from the CPU path (same family, not bit-identical):

- the crop is resized by one batched bilinear warp (``cropping_mode="resample"``), without
  torchvision's antialiasing when downscaling;
- rotation interpolates bilinearly (torchvision's ``RandomRotation`` uses nearest);
- colour jitter draws one order of its four adjustments per batch (torchvision: per sample).
"""

from __future__ import annotations

from typing import Any

import torch

from medssl.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, blur_kernel_size
from medssl.batch_transforms import RandomColorJitter, RandomGaussianBlur
from medssl.errors import MedsslError

_NO_KORNIA = "--augment-mode batch needs kornia: pip install kornia"


def _import_kornia_augmentation() -> Any:
    """``kornia.augmentation``, or the user-facing error when kornia is not installed."""
    try:
        import kornia.augmentation as kaug
    except ImportError:
        raise MedsslError(_NO_KORNIA) from None
    return kaug


class BatchViewAugment(torch.nn.Module):
    """One random contrastive view of every image in a batch, computed on the batch's device.

    Built from the same :class:`~medssl.augment.AugmentConfig` as the CPU path, with kornia:

    1. ``RandomRotation(±rotation_degrees, p=1)`` when ``rotation_degrees > 0``;
    2. ``RandomResizedCrop`` to ``image_size`` with scale ``(crop_scale_min, crop_scale_max)``
       and ratio ``(3/4, 4/3)``;
    3. ``RandomHorizontalFlip(hflip_p)``;
    4. ``RandomColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s, p=jitter_p)`` (``s = jitter_strength``)
       when ``s > 0`` and ``jitter_p > 0``;
    5. ``RandomGrayscale(grayscale_p)`` when ``grayscale_p > 0``;
    6. ``RandomGaussianBlur(blur_kernel_size(image_size), (blur_sigma_min, blur_sigma_max),
       p=blur_p)`` (medssl's) when ``blur_p > 0`` (so the ``cxr`` preset has no blur module);
    7. ``Normalize`` with the ImageNet mean and std.

    Every random parameter is drawn per sample. See the module docstring for reproducibility
    (global RNG / ``generator=``) and for the known differences from the CPU path.

    Args:
        config: the view's augmentation parameters.
        image_size: side of the square output.
        cropping_mode: kornia's ``RandomResizedCrop`` mode: ``"resample"`` (default; one
            batched warp, no host sync) or ``"slice"`` (per-sample slicing and resizing).

    Raises:
        MedsslError: kornia is not installed.
    """

    def __init__(
        self, config: AugmentConfig, image_size: int, cropping_mode: str = "resample"
    ) -> None:
        super().__init__()
        kaug = _import_kornia_augmentation()
        self.config = config
        self.image_size = int(image_size)
        s = config.jitter_strength
        steps: list[torch.nn.Module] = []
        if config.rotation_degrees > 0:
            steps.append(kaug.RandomRotation(float(config.rotation_degrees), p=1.0))
        steps += [
            kaug.RandomResizedCrop(
                (self.image_size, self.image_size),
                scale=(config.crop_scale_min, config.crop_scale_max),
                ratio=(3.0 / 4.0, 4.0 / 3.0),
                cropping_mode=cropping_mode,
                p=1.0,
            ),
            kaug.RandomHorizontalFlip(p=config.hflip_p),
        ]
        if s > 0 and config.jitter_p > 0:
            steps.append(RandomColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=config.jitter_p))
        if config.grayscale_p > 0:
            steps.append(kaug.RandomGrayscale(p=config.grayscale_p))
        if config.blur_p > 0:
            k = blur_kernel_size(self.image_size)
            sigma = (config.blur_sigma_min, config.blur_sigma_max)
            steps.append(RandomGaussianBlur(k, sigma, p=config.blur_p))
        steps.append(
            kaug.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD))
        )
        self.steps = torch.nn.Sequential(*steps)

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment ``images`` and normalise them.

        Args:
            images: ``(B, 3, H, W)``, uint8 in ``[0, 255]`` or floating point in ``[0, 1]``, on
                any device, contiguous or channels_last.
            generator: when given, the random parameters come from one seed drawn from it
                (the global RNG state is saved and restored around the call); otherwise from
                the global RNG.

        Returns:
            Float ``(B, 3, image_size, image_size)`` on ``images.device`` (float32 for uint8
            input, else the input's dtype), channels_last when the input was.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(images.shape)}")
        channels_last = (
            images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
        )
        if images.dtype == torch.uint8:
            x = images.to(torch.float32).div_(255.0)
        elif images.is_floating_point():
            x = images
        else:
            raise ValueError(f"expected a uint8 or floating-point batch, got {images.dtype}")
        out = self.steps(x) if generator is None else self._seeded(x, generator)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return out.contiguous(memory_format=fmt)

    def _seeded(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Run the steps with the global RNGs they use seeded from ``generator``, then restored."""
        seed = int(
            torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item()
        )
        # kornia samples on the device its modules were moved to (CPU unless ``.to(...)``).
        devices = {x.device, generator.device}
        devices |= {d for d in (getattr(m, "device", None) for m in self.steps) if d is not None}
        cuda = sorted(
            {
                torch.cuda.current_device() if d.index is None else d.index
                for d in devices
                if d.type == "cuda"
            }
        )
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            torch.random.default_generator.manual_seed(seed)
            for index in cuda:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
            return self.steps(x)
