"""``source_scale``: training views cut from a source larger than the training size.

The cache, the views cut from it (both augmentation modes), the un-augmented S x S images
of evaluation, a finetune run's evaluation and prediction, and the option's checks.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from helpers.data import write_ham_layout
from medssl.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, view_transform
from medssl.cli import main
from medssl.data.cache import decoded_images, eval_images
from medssl.data.datasets import PairViews
from medssl.data.imageio import read_image, resize_square
from medssl.data.manifest import Manifest

SIZE = 16
#: crops only: what a view holds is then the source's own pixels, resized
CROPS_ONLY = AugmentConfig(hflip_p=0.0, jitter_strength=0.0, grayscale_p=0.0, blur_p=0.0)


def banded_image(height: int = 120, width: int = 160, band: int = 10) -> np.ndarray:
    """Black, with red bands at the far left and right: a square centre crop drops them."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, :band, 0] = image[:, width - band :, 0] = 255
    return image


def file_manifest(folder, images: list[np.ndarray], name: str = "files") -> Manifest:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, image in enumerate(images):
        path = folder / f"im{i}.png"
        Image.fromarray(image).save(path)
        rows.append({"image": str(path), "case_id": f"c{i}", "source": "s", "view": "",
                     "official_split": ""})  # fmt: skip
    targets = np.arange(len(images)) % 2
    return Manifest(name, pd.DataFrame(rows), targets, ["a", "b"], "multiclass")


def redness(views: torch.Tensor) -> float:
    """The largest red-minus-green of normalised views, back in [0, 1] units."""
    mean = torch.tensor(IMAGENET_MEAN).view(-1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(-1, 3, 1, 1)
    rgb = views * std + mean
    return float((rgb[:, 0] - rgb[:, 1]).max())


def per_sample_views(pixels: np.ndarray, n: int = 60) -> torch.Tensor:
    view = view_transform(CROPS_ONLY, SIZE)
    dataset = PairViews(pixels, view, view, seed=0)
    return torch.stack([dataset[(0, 0, epoch)][0] for epoch in range(n)])


def test_cache_keeps_the_aspect_at_scale_2(tmp_path):
    usual = [banded_image() for _ in range(3)]  # 4:3, the most common aspect
    manifest = file_manifest(tmp_path / "img", [*usual, np.full((50, 50, 3), 90, np.uint8)])
    _, pixels = decoded_images(manifest, SIZE, tmp_path / "cache", progress=False,
                               source_scale=2)  # fmt: skip
    assert pixels.shape == (4, 32, 43, 3)  # shorter side 2 x 16, width 32 * 4 / 3
    assert pixels[0, :, 0, 0].min() > 200 and pixels[0, :, -1, 0].min() > 200  # bands kept
    assert (pixels[3] == 90).all()  # another aspect: scaled to cover, excess centre-cropped
    # scale 1 is its own cache file, the square thumbnail of before
    _, square = decoded_images(manifest, SIZE, tmp_path / "cache", progress=False)
    assert square.shape == (4, SIZE, SIZE, 3)
    names = sorted(p.name for p in (tmp_path / "cache").glob("*.npy"))
    assert len(names) == 2 and any("source32x43" in n for n in names)
    # the key holds the source shape: scale 2 read again is the same file, not rebuilt
    _, again = decoded_images(manifest, SIZE, tmp_path / "cache", progress=False,
                              source_scale=2.0)  # fmt: skip
    assert isinstance(again, np.ndarray) and np.array_equal(again, pixels)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_views_are_cut_from_the_whole_source(tmp_path):
    manifest = file_manifest(tmp_path / "img", [banded_image()])
    _, square = decoded_images(manifest, SIZE, tmp_path / "c", progress=False)
    _, source = decoded_images(manifest, SIZE, tmp_path / "c", progress=False, source_scale=2)
    square_views, source_views = per_sample_views(square), per_sample_views(source)
    assert square_views.shape == source_views.shape == (60, 3, SIZE, SIZE)
    assert redness(square_views) < 0.05  # the centre crop dropped the bands
    assert redness(source_views) > 0.5  # some crops reach the bands
    try:
        from medssl.batch_augment import BatchViewAugment
    except ImportError:  # kornia absent: the per-sample path is the only one
        return
    batch = torch.from_numpy(np.repeat(source, 60, axis=0)).permute(0, 3, 1, 2)
    views = BatchViewAugment(CROPS_ONLY, SIZE)(batch, generator=torch.Generator().manual_seed(0))
    assert views.shape == (60, 3, SIZE, SIZE) and redness(views) > 0.5


def test_scale_1_is_the_cache_and_views_of_before(tmp_path):
    images = [banded_image(), np.random.default_rng(0).integers(0, 255, (40, 30, 3), np.uint8)]
    manifest = file_manifest(tmp_path / "img", images)
    _, pixels = decoded_images(manifest, SIZE, tmp_path / "c", progress=False, source_scale=1)
    # before source_scale: each file decoded, shorter side to S, centre crop, key "v1"
    before = np.stack([resize_square(read_image(p, min_side=SIZE), SIZE)
                       for p in manifest.table["image"]])  # fmt: skip
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, before)
    digest = hashlib.sha1(f"v1|files|{SIZE}".encode())
    for path in manifest.table["image"]:
        stat = os.stat(path)
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    key = digest.hexdigest()[:20]
    assert [p.name for p in (tmp_path / "c").glob("*.npy")] == [f"files-{SIZE}px-{key}.npy"]
    assert eval_images(pixels, SIZE) is pixels  # evaluation: the cached images themselves
    torch.testing.assert_close(per_sample_views(pixels), per_sample_views(before), rtol=0, atol=0)


def test_evaluation_images_are_the_documented_resize_and_centre_crop(tmp_path):
    manifest = file_manifest(tmp_path / "img", [banded_image(), banded_image(90, 160)])
    _, source = decoded_images(manifest, SIZE, tmp_path / "c", progress=False, source_scale=2)
    images = eval_images(source, SIZE)
    assert images.shape == (2, SIZE, SIZE, 3) and images.dtype == np.uint8
    for row in range(2):  # shorter side to S (antialiased), centred S x S crop of the source
        expected = torch.from_numpy(source[row]).permute(2, 0, 1)
        short = min(source.shape[1:3])
        expected = torch.nn.functional.interpolate(  # an independent statement of the same
            expected[None].float(), size=(SIZE, int(source.shape[2] * SIZE / short)),
            mode="bilinear", antialias=True, align_corners=False,
        )[0]  # fmt: skip
        left = (expected.shape[2] - SIZE) // 2
        expected = expected[:, :, left : left + SIZE].round().clamp(0, 255).permute(1, 2, 0)
        assert np.abs(images[row].astype(int) - expected.numpy().astype(int)).max() <= 1
        assert np.array_equal(images[row], resize_square(source[row], SIZE))
    assert redness_free(images)


def redness_free(images: np.ndarray) -> bool:
    """No red band in the centre crop (the bands lie outside it)."""
    return bool((images[..., 0].astype(int) - images[..., 1] < 60).all())


@pytest.fixture(scope="module")
def ham_root(tmp_path_factory):
    return write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=24)


def test_finetune_evaluate_and_predict_at_scale_2(ham_root, tmp_path):
    from medssl.commands.evaluate import evaluate_run
    from medssl.commands.predict import predict_images
    from medssl.data.spec import DataSpec
    from medssl.train.finetune import FinetuneConfig, finetune

    run = tmp_path / "ft"
    finetune(FinetuneConfig(
        data=DataSpec("ham10000", str(ham_root)).to_dict(), out=str(run), image_size=SIZE,
        source_scale=2, epochs=1, batch_size=8, num_workers=0, progress=False,
        precision="fp32", cache_dir=str(ham_root / "cache"),
    ))  # fmt: skip
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["source_scale"] == 2 and config["source_shape"] == [32, 43]
    # predict fits new files to the run's source shape: equal to evaluating them
    files = sorted((ham_root / "HAM10000_images_part_1").glob("*.png"))[:6]
    csv = tmp_path / "images.csv"
    pd.DataFrame({"image": [str(f) for f in files], "label": ["nv"] * 6}).to_csv(csv, index=False)
    evaluate_run(run, "all", DataSpec("csv", str(csv)).to_dict(), n_boot=5, name="six")
    with np.load(run / "predictions_six.npz") as npz:
        expected = npz["probs"]
    result = predict_images(run, csv, progress=False)
    torch.testing.assert_close(torch.from_numpy(result.probs), torch.from_numpy(expected),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    # a run made before the option existed (no source_scale, source_shape) is a scale-1 run
    old = {k: v for k, v in config.items() if k not in ("source_scale", "source_shape")}
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert evaluate_run(run, "test", n_boot=5)["n"] > 0
    assert predict_images(run, csv, progress=False).probs.shape == expected.shape
    caches = [p.name for p in (ham_root / "cache").glob(f"ham10000-{SIZE}px-*.npy")]
    assert len([n for n in caches if "source" not in n]) == 1  # evaluated on the S x S cache


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
@pytest.mark.parametrize("value", ["0.5", "x"])
def test_a_bad_source_scale_is_one_line(ham_root, tmp_path, capsys, command, value):
    base = [command, "--dataset", "ham10000", "--root", str(ham_root), "--out",
            str(tmp_path / "r"), "--quiet"]  # fmt: skip
    assert main([*base, "--source-scale", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--source-scale" in err and value in err
    config = tmp_path / "run.yaml"
    config.write_text(f"source_scale: {value}\n")
    assert main([*base, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--config {config}: source_scale" in err
    assert not (tmp_path / "r").exists()
