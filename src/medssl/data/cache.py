"""Decode every image once, at the working resolution, into one uint8 array on disk.

SSL runs hundreds of epochs over the same images; decoding JPEG/PNG/DICOM each time would
dominate a CPU run. The first use of a manifest at a size decodes all images in parallel
threads (Pillow releases the GIL while decoding), resizes them and stores an
``(N, H, W, 3)`` uint8 ``.npy`` under the cache directory; later runs memory-map it. The
key covers each file's path, size and modification time, so an edited dataset is decoded
again, and the source shape, so two ``source_scale`` settings never share a file.

The source each training view is cut from (``source_scale``, :func:`source_shape`):

- ``1`` (the default): each image's shorter side resized to the training size ``S`` and a
  centred ``S x S`` crop -- a 4:3 image loses a quarter of its width;
- ``> 1`` (2 is the paper-like setting): the shorter side at ``round(source_scale * S)``
  with the aspect ratio kept. One array needs one shape, so every image is fitted to the
  dataset's most common aspect ratio (:func:`~medssl.data.imageio.fit_shape`): an image of
  that aspect keeps all its pixels, others lose only their excess, centred.

Whatever needs an un-augmented ``S x S`` image (validation, the k-NN monitor, ``medssl
evaluate``/``predict``) takes :func:`eval_images`: the cached image itself at scale 1, else
the source's shorter side resized to ``S`` (antialiased) and a centred ``S x S`` crop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medssl.data.imageio import fit_shape, image_shape, read_image, resize_square, to_rgb
from medssl.data.manifest import Manifest
from medssl.errors import MedsslError
from medssl.fileio import WriteRefused, atomic_write
from medssl.options import spelled

#: the largest ``--image-size``: a 4096 x 4096 RGB image is 48 MiB decoded, and a dataset
#: of them is checked against memory and disk before decoding (:func:`check_room`)
MAX_IMAGE_SIZE = 4096


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEDSSL_CACHE", Path.home() / ".cache" / "medssl"))


def _cache_key(manifest: Manifest, size: int, shape: tuple[int, int]) -> str:
    square = shape == (size, size)  # source scale 1: the key of caches made before scales
    head = f"v1|{manifest.name}|{size}" if square else f"v2|{manifest.name}|{size}|{shape}"
    digest = hashlib.sha1(head.encode())
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


def check_source_scale(source_scale: float) -> float:
    """``source_scale`` as a float >= 1, else a one-line error naming the option."""
    try:
        value = float(source_scale)
    except (TypeError, ValueError):
        value = float("nan")
    if not value >= 1:  # NaN too
        raise MedsslError(f"{spelled('source_scale')} must be >= 1, got {source_scale!r}")
    return value


def _stored_shape(manifest: Manifest, row: int) -> tuple[int, int] | None:
    image = manifest.table.at[row, "image"]
    if manifest.pixels is not None:
        return tuple(manifest.pixels[int(image.removeprefix("array:"))].shape[:2])
    return image_shape(image)


def common_aspect(manifest: Manifest) -> float:
    """The most common width / height of the manifest's images (to 2 decimals; 1 if none
    can be read). Read from the files' headers, in threads."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        shapes = [s for s in pool.map(lambda r: _stored_shape(manifest, r), range(len(manifest)))
                  if s and min(s) > 0]  # fmt: skip
    if not shapes:
        return 1.0
    counts = Counter(round(w / h, 2) for h, w in shapes)
    return counts.most_common(1)[0][0]


def source_shape(size: int, source_scale: float, aspect: float) -> tuple[int, int]:
    """``(height, width)`` of the cached source: ``S x S`` at scale 1, else the shorter side
    ``round(source_scale * S)`` at the aspect ratio ``aspect`` (width / height)."""
    if source_scale == 1:
        return size, size
    short = round(source_scale * size)
    if aspect >= 1:
        return short, max(short, round(short * aspect))
    return max(short, round(short / aspect)), short


def _decode_one(manifest: Manifest, row: int, shape: tuple[int, int]) -> np.ndarray:
    image = manifest.table.at[row, "image"]
    if manifest.pixels is not None:
        array = to_rgb(manifest.pixels[int(image.removeprefix("array:"))])
    else:
        array = read_image(image, min_side=max(shape))
    return fit_shape(array, *shape)


def _decode_all(
    manifest: Manifest, shape: tuple[int, int], skip_unreadable: bool, progress: bool
) -> tuple[np.ndarray, list[int]]:
    pixels = np.zeros((len(manifest), *shape, 3), dtype=np.uint8)
    bad: list[int] = []
    size = "x".join(map(str, shape)) if shape[0] != shape[1] else str(shape[0])

    def work(row: int) -> None:
        try:
            pixels[row] = _decode_one(manifest, row, shape)
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


def check_room(n: int, shape: tuple[int, int], size: int, cache_dir: Path | None) -> None:
    """Refuse, before decoding, ``n`` images of ``shape`` that do not fit in the memory
    available (they are decoded into one array) or, with a ``cache_dir``, on its disk (the
    cache file holds the same bytes): one line naming ``--image-size``."""
    need = n * shape[0] * shape[1] * 3
    what = f"{spelled('image_size')} {size}: {n} decoded images of {shape[0]}x{shape[1]} take"
    memory = available_memory()
    if memory is not None and need > memory:
        raise MedsslError(
            f"{what} {_gib(need)}, more than the {_gib(memory)} of memory available; "
            "choose a smaller size"
        )
    if cache_dir is not None:
        folder = next(p for p in (cache_dir, *cache_dir.parents) if p.exists())
        free = shutil.disk_usage(folder).free
        if need > free:
            raise MedsslError(
                f"{what} {_gib(need)} in the image cache, more than the {_gib(free)} free in "
                f"{folder}; choose a smaller size or another folder with "
                f"{spelled('cache_dir')} or MEDSSL_CACHE"
            )


#: process limits (``ulimit -v``, ``ulimit -d``) and what /proc/self/status says they count
_RLIMITS = (("RLIMIT_AS", "VmSize:"), ("RLIMIT_DATA", "VmData:"))


def available_memory() -> int | None:
    """Bytes of memory this process may still take: Linux's MemAvailable, lowered to the
    room left under a cgroup (container) limit and under the process's own limits
    (:data:`_RLIMITS`); None where none can be read."""
    found = _rlimit_room()
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as fh:
            line = next(line for line in fh if line.startswith("MemAvailable:"))
        found.append(int(line.split()[1]) * 1024)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(0, int(limit) - used))
    return min(found) if found else None


def _rlimit_room() -> list[int]:
    """The room left under each process limit that is set (a limit minus what it counts)."""
    import resource

    room = []
    with contextlib.suppress(OSError, ValueError, AttributeError):
        status = Path("/proc/self/status").read_text().splitlines()
        for name, field in _RLIMITS:
            limit = resource.getrlimit(getattr(resource, name))[0]
            line = next((x for x in status if x.startswith(field)), None)
            if limit != resource.RLIM_INFINITY and line is not None:
                room.append(max(0, limit - int(line.split()[1]) * 1024))
    return room


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _write_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append .npy to a name
        np.save(fh, array)


def _store(data_path: Path, bad_path: Path, pixels: np.ndarray, bad: list[int]) -> None:
    """Write the cache file, its list of unreadable rows first (a cache file is only ever
    read with the list it was made with). A full disk is one line that says which folder."""
    try:
        if bad:
            atomic_write(bad_path, lambda tmp: Path(tmp).write_text(json.dumps(bad)))
        else:
            bad_path.unlink(missing_ok=True)
        atomic_write(data_path, lambda tmp: _write_npy(tmp, pixels))
    except WriteRefused as exc:
        raise MedsslError(
            f"{exc} (the decoded-image cache: free space there, or choose another folder "
            f"with {spelled('cache_dir')} or MEDSSL_CACHE)"
        ) from exc


def decoded_images(
    manifest: Manifest,
    size: int,
    cache_dir: str | Path | None = None,
    skip_unreadable: bool = False,
    progress: bool = True,
    use_cache: bool = True,
    source_scale: float = 1.0,
) -> tuple[Manifest, np.ndarray]:
    """The manifest (minus skipped unreadable rows) and its pixels, ``(N, H, W, 3)`` uint8:
    ``H = W = size`` at ``source_scale`` 1, else :func:`source_shape` (module docstring).

    Unreadable images are an error naming the file, unless ``skip_unreadable``; then they
    are dropped and counted in ``manifest.warnings``.
    """
    if size < 8:
        raise MedsslError(f"--image-size must be at least 8, got {size}")
    if size > MAX_IMAGE_SIZE:
        raise MedsslError(f"{spelled('image_size')}: must be at most {MAX_IMAGE_SIZE}, got {size}")
    source_scale = check_source_scale(source_scale)
    aspect = 1.0 if source_scale == 1 else common_aspect(manifest)
    shape = source_shape(size, source_scale, aspect)
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    key = _cache_key(manifest, size, shape)
    source = "" if shape == (size, size) else f"-source{shape[0]}x{shape[1]}"
    data_path = directory / f"{manifest.name}-{size}px{source}-{key}.npy"
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
        check_room(len(manifest), shape, size, directory if use_cache else None)
        pixels, bad = _decode_all(manifest, shape, skip_unreadable, progress)
        if use_cache:
            _store(data_path, bad_path, pixels, bad)
    if bad:
        keep = np.setdiff1d(np.arange(len(manifest)), bad)
        reduced = manifest.subset(keep)
        reduced.warnings.append(f"{manifest.name}: skipped {len(bad)} unreadable image(s)")
        reduced.unreadable_dropped = len(bad)
        return reduced, np.asarray(pixels[keep])
    return manifest, np.asarray(pixels)


def eval_images(pixels: np.ndarray, size: int, chunk: int = 256) -> np.ndarray:
    """Un-augmented ``(N, size, size, 3)`` images from cached sources ``(N, H, W, 3)``.

    Square ``size`` sources (``source_scale`` 1) are returned as they are, so evaluation
    sees exactly the cached pixels. Larger sources are each resized, shorter side to
    ``size`` (antialiased), and centre-cropped to ``size x size``: deterministic, and the
    same as :func:`~medssl.data.imageio.resize_square` of each source image.
    """
    if pixels.shape[1:3] == (size, size):
        return pixels
    out = np.empty((len(pixels), size, size, 3), dtype=np.uint8)
    for start in range(0, len(pixels), chunk):
        out[start : start + chunk] = resize_square(np.asarray(pixels[start : start + chunk]), size)
    return out
