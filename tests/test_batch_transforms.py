"""medssl's batch colour jitter and blur against torchvision's per-image functions."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.transforms.v2 import functional as tvf

from medssl.batch_transforms import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    RandomColorJitter,
    RandomGaussianBlur,
    adjust_colors,
    blur_separable,
    gaussian_kernels,
    shift_hue,
)


def _images(n: int = 6, height: int = 9, width: int = 11, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, height, width, generator=g)
    images[:, :, 0, :] = images[:, :1, 0, :]  # grey pixels: no hue
    images[:, 1, 1, :] = images[:, 0, 1, :]  # ties between the largest channels
    images[:, 2, 2, :] = images[:, 1, 2, :]
    return images


def test_shift_hue_equals_torchvision_adjust_hue() -> None:
    images = _images()
    turns = torch.tensor([-0.5, -0.13, 0.0, 0.07, 0.25, 0.5])
    pairs = zip(images, turns, strict=True)
    expected = torch.stack([tvf.adjust_hue(im, float(t)) for im, t in pairs])
    torch.testing.assert_close(shift_hue(images, turns), expected, atol=1e-5, rtol=0)


_TORCHVISION = {
    BRIGHTNESS: tvf.adjust_brightness,
    CONTRAST: tvf.adjust_contrast,
    SATURATION: tvf.adjust_saturation,
    HUE: tvf.adjust_hue,
}


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2)])
def test_adjust_colors_equals_torchvision_per_image(order: tuple[int, ...]) -> None:
    images = _images()
    g = torch.Generator().manual_seed(1)
    factors = [torch.rand(6, generator=g) * 1.6 + 0.2 for _ in range(3)]
    hue = torch.rand(6, generator=g) * 0.4 - 0.2
    params = [*factors, hue]
    out = adjust_colors(images, *params, order=order)
    for b, image in enumerate(images):
        expected = image
        for step in order:
            expected = _TORCHVISION[step](expected, float(params[step][b]))
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=0)


def test_adjust_colors_rejects_an_unknown_step() -> None:
    ones = torch.ones(1)
    with pytest.raises(ValueError, match="unknown colour adjustment 4"):
        adjust_colors(_images(1), ones, ones, ones, ones * 0, order=(4,))


def test_jitter_changes_about_p_of_the_images_and_leaves_the_rest() -> None:
    torch.manual_seed(0)
    images = _images(n=400, height=4, width=4)
    out = RandomColorJitter(0.8, 0.8, 0.8, 0.2, p=0.3)(images)
    changed = (out - images).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert 0.22 < changed.float().mean() < 0.38  # 0.3 +- 4 standard errors
    torch.testing.assert_close(out[~changed], images[~changed], atol=1e-5, rtol=0)


def test_jitter_draws_factors_inside_its_ranges() -> None:
    jitter = RandomColorJitter(0.5, 0.0, 0.0, 0.0)
    assert jitter.brightness == (0.5, 1.5)
    assert jitter.contrast == jitter.saturation == (1.0, 1.0)
    assert jitter.hue == (0.0, 0.0)
    torch.manual_seed(0)
    images = torch.full((300, 3, 2, 2), 0.5)
    ratio = jitter(images)[:, 0, 0, 0] / 0.5  # brightness alone: a plain scale
    assert ratio.min() >= 0.5 and ratio.max() <= 1.5
    assert ratio.min() < 0.55 and ratio.max() > 1.45  # the whole range is used
    with pytest.raises(ValueError, match="hue must be in"):
        RandomColorJitter(0.1, 0.1, 0.1, 0.6)


def test_jitter_uses_every_order() -> None:
    torch.manual_seed(0)
    jitter = RandomColorJitter(0.8, 0.8, 0.8, 0.2)
    orders = set()
    original = torch.randperm
    with pytest.MonkeyPatch.context() as mp:

        def spy(n: int, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
            result = original(n, *args, **kwargs)
            orders.add(tuple(result.tolist()))
            return result

        mp.setattr(torch, "randperm", spy)
        for _ in range(300):
            jitter(_images(n=1, height=3, width=3))
    assert orders == set(itertools.permutations(range(4)))


@pytest.mark.parametrize("size", [3, 7])
def test_blur_equals_torchvision_gaussian_blur_per_image(size: int) -> None:
    images = _images(n=4, height=12, width=10)
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    out = blur_separable(images, gaussian_kernels(sigma, size))
    for b, image in enumerate(images):
        expected = tvf.gaussian_blur(image, [size, size], [float(sigma[b])] * 2)
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=0)


def test_blur_leaves_images_it_does_not_pick_untouched() -> None:
    torch.manual_seed(0)
    images = _images(n=300, height=8, width=8)
    out = RandomGaussianBlur(5, (0.5, 2.0), p=0.5)(images)
    changed = (out - images).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert 0.38 < changed.float().mean() < 0.62  # 0.5 +- 4 standard errors
    assert torch.equal(out[~changed], images[~changed])


def test_blur_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="kernel_size must be a positive odd number, got 4"):
        RandomGaussianBlur(4, (0.1, 2.0))
    with pytest.raises(ValueError, match="sigma must be a range"):
        RandomGaussianBlur(3, (2.0, 0.1))
