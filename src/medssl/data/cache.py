"""Decode every image once, at the working resolution, into one uint8 array on disk.

SSL runs hundreds of epochs over the same images; decoding JPEG/PNG/DICOM each time would
dominate a CPU run. The first use of a manifest at a size decodes all images in parallel
threads (Pillow releases the GIL while decoding), resizes them (shorter side, centre crop)
and stores an ``(N, S, S, 3)`` uint8 ``.npy`` under the cache directory; later runs
memory-map it. The key covers each file's path, size and modification time, so an edited
dataset is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medssl.data.imageio import read_image, resize_square, to_rgb
from medssl.data.manifest import Manifest
from medssl.errors import MedsslError
from medssl.fileio import atomic_write


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEDSSL_CACHE", Path.home() / ".cache" / "medssl"))


def _cache_key(manifest: Manifest, size: int) -> str:
    digest = hashlib.sha1(f"v1|{manifest.name}|{size}".encode())
    if manifest.pixels is not None:  # in-memory images: the pixels are the identity
        digest.update(np.ascontiguousarray(manifest.pixels).tobytes())
        return digest.hexdigest()[:20]
    for image in manifest.table["image"]:
        try:
            stat = os.stat(image)
            digest.update(f"{image}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{image}|missing\n".encode())
    return digest.hexdigest()[:20]


def _decode_one(manifest: Manifest, row: int, size: int) -> np.ndarray:
    image = manifest.table.at[row, "image"]
    if manifest.pixels is not None:
        array = to_rgb(manifest.pixels[int(image.removeprefix("array:"))])
    else:
        array = read_image(image, min_side=size)
    return resize_square(array, size)


def _decode_all(
    manifest: Manifest, size: int, skip_unreadable: bool, progress: bool
) -> tuple[np.ndarray, list[int]]:
    pixels = np.zeros((len(manifest), size, size, 3), dtype=np.uint8)
    bad: list[int] = []

    def work(row: int) -> None:
        try:
            pixels[row] = _decode_one(manifest, row, size)
        except MedsslError:
            if not skip_unreadable:
                raise
            bad.append(row)

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(work, range(len(manifest)))
        bar = tqdm(
            jobs, total=len(manifest), desc=f"decoding {manifest.name} at {size}px",
            unit="img", disable=not progress, file=sys.stderr,
        )  # fmt: skip
        for _ in bar:
            pass
    return pixels, sorted(bad)


def _write_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append .npy to a name
        np.save(fh, array)


def decoded_images(
    manifest: Manifest,
    size: int,
    cache_dir: str | Path | None = None,
    skip_unreadable: bool = False,
    progress: bool = True,
    use_cache: bool = True,
) -> tuple[Manifest, np.ndarray]:
    """The manifest (minus skipped unreadable rows) and its pixels, ``(N, S, S, 3)`` uint8.

    Unreadable images are an error naming the file, unless ``skip_unreadable``; then they
    are dropped and counted in ``manifest.warnings``.
    """
    if size < 8:
        raise MedsslError(f"--image-size must be at least 8, got {size}")
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    key = _cache_key(manifest, size)
    data_path = directory / f"{manifest.name}-{size}px-{key}.npy"
    bad_path = data_path.with_suffix(".skipped.json")
    if use_cache and data_path.is_file():
        pixels = np.load(data_path, mmap_mode="r")
        bad = json.loads(bad_path.read_text()) if bad_path.is_file() else []
        if bad and not skip_unreadable:
            raise MedsslError(
                f"{len(bad)} unreadable image(s) in {manifest.name}, first: "
                f"{manifest.table.at[bad[0], 'image']} (use --skip-unreadable to drop them)"
            )
    else:
        pixels, bad = _decode_all(manifest, size, skip_unreadable, progress)
        if use_cache:
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write(data_path, lambda tmp: _write_npy(tmp, pixels))
            bad_path.write_text(json.dumps(bad)) if bad else bad_path.unlink(missing_ok=True)
    if bad:
        keep = np.setdiff1d(np.arange(len(manifest)), bad)
        reduced = manifest.subset(keep)
        reduced.warnings.append(f"{manifest.name}: skipped {len(bad)} unreadable image(s)")
        reduced.unreadable_dropped = len(bad)
        return reduced, np.asarray(pixels[keep])
    return manifest, np.asarray(pixels)
