"""The batch view augmentation (kornia + medssl.batch_transforms) against the CPU (torchvision
v2) one; runs on CPU."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
from torchvision.transforms import v2

from helpers.augment_family import describe_batch, describe_transform
from medssl.augment import PRESETS, AugmentConfig, preset, view_transform
from medssl.batch_augment import BatchViewAugment
from medssl.batch_transforms import RandomGaussianBlur
from medssl.errors import MedsslError

#: Everything random switched off: the view is the normalised input itself.
IDENTITY = {
    "crop_scale_min": 1.0,
    "crop_scale_max": 1.0,
    "hflip_p": 0.0,
    "jitter_p": 0.0,
    "grayscale_p": 0.0,
    "blur_p": 0.0,
    "rotation_degrees": 0.0,
}
#: Only the random resized crop left on.
CROP_ONLY = {**IDENTITY, "crop_scale_min": 0.08}


@pytest.fixture
def kornia() -> Any:
    return pytest.importorskip("kornia")


def _images(batch: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)


def _distinct(out: torch.Tensor) -> bool:
    """Whether every pair of samples in ``out`` differs."""
    return all(
        not torch.allclose(out[i], out[j]) for i in range(len(out)) for j in range(i + 1, len(out))
    )


@pytest.mark.parametrize(
    ("name", "overrides", "size"),
    [
        ("derm", {}, 32),
        ("cxr", {}, 32),
        ("derm", {}, 224),
        ("cxr", {}, 224),
        ("derm", {"rotation_degrees": 30, "blur_p": 0}, 64),
        ("cxr", {"rotation_degrees": 30}, 64),
        ("cxr", {"blur_p": 0.3, "grayscale_p": 0.1, "blur_sigma_max": 1.5}, 64),
        ("derm", {"jitter_strength": 0.5, "crop_scale_min": 0.2, "hflip_p": 0.0}, 96),
        ("derm", {"jitter_p": 0}, 32),
        ("derm", {"jitter_strength": 1.5}, 32),
    ],
)
@pytest.mark.usefixtures("kornia")
def test_batch_and_cpu_paths_describe_the_same_family(
    name: str, overrides: dict[str, float], size: int
) -> None:
    config = preset(name, overrides)
    gpu = describe_batch(BatchViewAugment(config, size))
    cpu = describe_transform(view_transform(config, size))
    assert gpu == cpu
    assert gpu["crop_size"] == size
    assert gpu["crop_scale"] == (config.crop_scale_min, config.crop_scale_max)
    assert gpu["crop_ratio"] == (0.75, round(4 / 3, 6))
    assert gpu["rotation_degrees"] == config.rotation_degrees
    assert gpu["blur"] == (config.blur_p > 0)
    assert gpu["hflip_p"] == config.hflip_p


@pytest.mark.usefixtures("kornia")
def test_describe_reads_the_settings_back() -> None:
    derm = describe_batch(BatchViewAugment(PRESETS["derm"], 224))
    assert derm["jitter"] == (0.8, 0.8, 0.8, 0.2, 0.8)
    assert derm["grayscale_p"] == 0.2
    assert (derm["blur_kernel"], derm["blur_sigma"], derm["blur_p"]) == (23, (0.1, 2.0), 0.5)
    assert derm["order"] == ("crop", "hflip", "jitter", "grayscale", "blur", "normalize")
    cxr = describe_batch(BatchViewAugment(PRESETS["cxr"], 224))
    assert cxr["jitter"] == (0.4, 0.4, 0.4, 0.1, 0.8)
    assert cxr["order"] == ("rotation", "crop", "hflip", "jitter", "normalize")
    # The comparison is not vacuous: different configs give different descriptions.
    assert derm != describe_transform(view_transform(PRESETS["cxr"], 224))
    assert derm != describe_transform(view_transform(PRESETS["derm"], 128))


def test_describe_transform_names_unknown_steps() -> None:
    compose = v2.Compose([v2.RandomVerticalFlip(), v2.RandomApply([v2.RandomInvert()], p=0.3)])
    assert describe_transform(compose)["order"] == (
        "RandomVerticalFlip",
        "RandomApply[RandomInvert]",
    )


def test_cxr_has_no_blur_in_either_path(kornia: Any) -> None:
    config = PRESETS["cxr"]
    aug = BatchViewAugment(config, 64)
    assert not any(isinstance(m, RandomGaussianBlur) for m in aug.modules())
    assert not any(isinstance(m, kornia.augmentation.RandomGrayscale) for m in aug.modules())
    assert describe_batch(aug)["blur"] is False
    cpu = view_transform(config, 64)
    flat = [t for step in cpu.transforms for t in getattr(step, "transforms", [step])]
    assert not any(isinstance(t, v2.GaussianBlur) for t in flat)
    assert describe_transform(cpu)["blur"] is False


@pytest.mark.parametrize("name", ["derm", "cxr"])
@pytest.mark.usefixtures("kornia")
def test_output_shape_dtype_and_device(name: str) -> None:
    aug = BatchViewAugment(PRESETS[name], 24)
    x = _images(batch=5, size=40)
    out = aug(x)
    assert out.shape == (5, 3, 24, 24)
    assert out.dtype == torch.float32
    assert out.device == x.device
    assert torch.isfinite(out).all()
    # Normalised: values live in [(0 - mean) / std, (1 - mean) / std], not [0, 255].
    assert out.min() >= -2.2 and out.max() <= 2.7
    # A float batch in [0, 1] is the same input as the uint8 one.
    torch.manual_seed(3)
    from_uint8 = aug(x)
    torch.manual_seed(3)
    from_float = aug(x.float() / 255)
    torch.testing.assert_close(from_float, from_uint8)


@pytest.mark.parametrize(
    ("hflip_p", "cropping_mode", "atol"),
    [(0.0, "slice", 1e-5), (1.0, "slice", 1e-5), (0.0, "resample", 1e-4), (1.0, "resample", 1e-4)],
)
@pytest.mark.usefixtures("kornia")
def test_with_randomness_off_output_is_the_cpu_paths_normalisation(
    hflip_p: float, cropping_mode: str, atol: float
) -> None:
    # Slice mode crops the whole image by indexing, so only normalisation is left to compare;
    # the default resample mode's identity warp adds float32 rounding (about 3e-6 before
    # normalisation), hence the looser bound there.
    config = AugmentConfig().with_overrides({**IDENTITY, "hflip_p": hflip_p})
    x = _images(batch=3, size=32)
    out = BatchViewAugment(config, 32, cropping_mode=cropping_mode)(x)
    cpu = view_transform(config, 32)
    expected = torch.stack([cpu(img) for img in x])
    torch.testing.assert_close(out, expected, atol=atol, rtol=0)


@pytest.mark.usefixtures("kornia")
def test_identical_images_get_different_crops() -> None:
    aug = BatchViewAugment(AugmentConfig().with_overrides(CROP_ONLY), 16)
    x = _images(batch=1, size=48).expand(4, -1, -1, -1)
    torch.manual_seed(0)
    out = aug(x)
    assert _distinct(out)
    crop = aug.steps[0]
    boxes = crop._params["src"]
    assert len({tuple(b.flatten().tolist()) for b in boxes}) == 4


@pytest.mark.usefixtures("kornia")
def test_identical_images_get_different_colour_jitter() -> None:
    aug = BatchViewAugment(AugmentConfig().with_overrides({**IDENTITY, "jitter_p": 1.0}), 32)
    x = _images(batch=1, size=32).expand(4, -1, -1, -1)
    torch.manual_seed(0)
    assert _distinct(aug(x))


@pytest.mark.parametrize("name", ["derm", "cxr"])
@pytest.mark.usefixtures("kornia")
def test_global_seed_makes_it_reproducible(name: str) -> None:
    aug = BatchViewAugment(PRESETS[name], 24)
    x = _images(batch=6, size=32)
    torch.manual_seed(123)
    first = aug(x)
    torch.manual_seed(123)
    again = aug(x)
    torch.manual_seed(124)
    other = aug(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.usefixtures("kornia")
def test_generator_makes_it_reproducible_and_leaves_the_global_rng_alone() -> None:
    aug = BatchViewAugment(PRESETS["derm"], 24)
    x = _images(batch=6, size=32)
    state = torch.get_rng_state()
    first = aug(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # the global seed does not matter when a generator is given
    again = aug(x, generator=torch.Generator().manual_seed(7))
    other = aug(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Successive calls on one generator give fresh views.
    g = torch.Generator().manual_seed(7)
    assert not torch.equal(aug(x, generator=g), aug(x, generator=g))


@pytest.mark.parametrize("name", ["derm", "cxr"])
@pytest.mark.usefixtures("kornia")
def test_no_grad_and_channels_last(name: str) -> None:
    aug = BatchViewAugment(PRESETS[name], 24)
    x = _images(batch=4, size=32)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous()
    with torch.no_grad():
        torch.manual_seed(5)
        plain = aug(x)
        torch.manual_seed(5)
        cl = aug(x_cl)
    assert not cl.requires_grad
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert plain.is_contiguous()
    torch.testing.assert_close(cl, plain, atol=1e-5, rtol=0)
    with torch.inference_mode():
        assert aug(x_cl.float() / 255).shape == (4, 3, 24, 24)


@pytest.mark.usefixtures("kornia")
def test_rejects_batches_it_cannot_read() -> None:
    aug = BatchViewAugment(PRESETS["derm"], 16)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        aug(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        aug(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))  # NHWC
    with pytest.raises(ValueError, match="uint8 or floating-point"):
        aug(torch.zeros(2, 3, 32, 32, dtype=torch.int32))


def test_without_kornia_construction_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "kornia" or m.startswith("kornia.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "kornia", None)  # makes `import kornia...` raise ImportError
    with pytest.raises(MedsslError) as info:
        BatchViewAugment(PRESETS["derm"], 32)
    assert str(info.value) == "--augment-mode batch needs kornia: pip install kornia"
