"""Decoding one image file to an RGB uint8 array, whatever its format.

DICOM goes through pydicom (rescale slope/intercept, windowing when the file has it,
MONOCHROME1 inverted); everything else through Pillow. Pillow rather than torchvision's
decoders, which torchvision 0.29 deprecates, and because Pillow's JPEG ``draft`` mode decodes
directly at a reduced scale (1/2, 1/4, 1/8) when the working size is small, several times
faster than a full decode followed by a resize. Grayscale becomes 3 channels so X-rays
feed the same RGB backbones as photographs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medssl.errors import MedsslError

_DICOM_EXTS = (".dcm", ".dicom")


def to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 4) -> (H, W, 3): grey repeated, alpha dropped."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_dicom(path: str | Path) -> np.ndarray:
    """A DICOM file's first frame as RGB uint8, with modality LUT and VOI windowing."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(str(path))
    pixels = ds.pixel_array
    if getattr(ds, "NumberOfFrames", 1) not in (None, 1) and pixels.ndim >= 3:
        pixels = pixels[0]
    if getattr(ds, "PhotometricInterpretation", "") in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        return to_rgb(pixels.astype(np.uint8))
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    gray = _scale_to_uint8(np.asarray(values))
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        gray = 255 - gray
    return to_rgb(gray)


def read_image(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Decode ``path`` to an (H, W, 3) uint8 array; a bad file is a one-line MedsslError.

    So is an image over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``
    twice over: a 20000 x 20000 PNG of a few bytes would take 1.2 GB decoded), which the
    callers' ``skip_unreadable`` then counts as unreadable.

    ``min_side`` lets a JPEG decode at a reduced scale whose shorter side stays >= it.
    """
    path = str(path)
    suffix = Path(path).suffix.lower()
    try:
        if suffix in _DICOM_EXTS:
            return read_dicom(path)
        with Image.open(path) as img:
            if min_side and img.format == "JPEG":
                img.draft("RGB", (min_side, min_side))
            array = np.asarray(img.convert("RGB") if img.mode not in ("L", "I;16", "I") else img)
            if array.dtype != np.uint8:
                array = _scale_to_uint8(array)
            return to_rgb(array)
    except FileNotFoundError:
        raise MedsslError(f"image file not found: {path}") from None
    except (
        OSError, RuntimeError, ValueError, SyntaxError, AttributeError,
        Image.DecompressionBombError,  # over Pillow's limit (2 x Image.MAX_IMAGE_PIXELS)
    ) as exc:  # fmt: skip
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MedsslError(f"cannot decode image {path}: {first}") from None


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to ``size`` (antialiased), then a centred square crop.

    ``image`` is one ``(H, W, 3)`` image or a batch ``(N, H, W, 3)`` of one shape; a batch
    gives each image exactly what it would get alone.
    """
    from torchvision.transforms.v2 import functional as F

    tensor = torch.from_numpy(image if image.flags.writeable else image.copy())
    tensor = tensor.movedim(-1, -3)
    tensor = F.resize(tensor, size, antialias=True)
    tensor = F.center_crop(tensor, [size, size])
    return tensor.movedim(-3, -1).contiguous().numpy()


def fit_shape(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` scaled (aspect kept, antialiased) to cover ``height x width``, then the
    excess centre-cropped: nothing is lost for an image of that aspect ratio.

    A square target is :func:`resize_square` itself (the cache's images at source scale 1).
    """
    if height == width:
        return resize_square(image, height)
    from torchvision.transforms.v2 import functional as F

    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    size = [max(height, round(h * scale)), max(width, round(w * scale))]
    tensor = torch.from_numpy(image if image.flags.writeable else image.copy()).permute(2, 0, 1)
    tensor = F.resize(tensor, size, antialias=True)
    tensor = F.center_crop(tensor, [height, width])
    return tensor.permute(1, 2, 0).contiguous().numpy()


def image_shape(path: str | Path) -> tuple[int, int] | None:
    """``(height, width)`` of an image file from its header (no pixel decoding); None when
    the file cannot be read (decoding reports it later)."""
    path = str(path)
    try:
        if Path(path).suffix.lower() in _DICOM_EXTS:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        with Image.open(path) as img:
            return img.height, img.width
    except Exception:  # noqa: BLE001 - unreadable here means unreadable when decoded
        return None
