"""Finding image files under a dataset root and reading publisher CSVs with clear errors."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path

import pandas as pd

from medssl.errors import MedsslError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")

#: within :func:`missing_images_kept`: a listed image that does not exist stays in the manifest
_KEEP_MISSING: ContextVar[bool] = ContextVar("keep_missing_images", default=False)


@contextlib.contextmanager
def missing_images_kept(keep: bool = True) -> Iterator[None]:
    """Within the block, an adapter keeps a listed image that does not exist (its expected
    path) instead of stopping: decoding reports it unreadable, and ``--skip-unreadable``
    drops it as it drops an undecodable one."""
    token = _KEEP_MISSING.set(keep)
    try:
        yield
    finally:
        _KEEP_MISSING.reset(token)


def missing_image(path: str | Path, message: str) -> str:
    """``path`` of a listed image that does not exist, kept within :func:`missing_images_kept`;
    elsewhere the error ``message`` (naming the CSV row)."""
    if not _KEEP_MISSING.get():
        raise MedsslError(message)
    return str(path)


def require_dir(root: str | Path, dataset: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MedsslError(f"{dataset}: --root {root} is not a directory")
    return root


def index_images(root: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    """Map file name (with extension) to path for every image anywhere under ``root``.

    Publishers split images over several folders (HAM10000's part_1/part_2, NIH's
    images_001..012); indexing by name lets adapters ignore that. Hidden files such as
    ``.DS_Store`` are skipped.
    """
    exts = tuple(e.lower() for e in extensions)
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if not fname.startswith(".") and fname.lower().endswith(exts):
                found.setdefault(fname, Path(dirpath) / fname)
    return found


def hidden(name: str) -> bool:
    """A hidden file or folder, or macOS's archive metadata: never an image of the data."""
    return name.startswith(".") or name == "__MACOSX"


def walk_images(folder: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files anywhere below ``folder``, sorted; hidden files and folders skipped."""
    exts = tuple(e.lower() for e in extensions)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not hidden(d))
        names = [f for f in sorted(filenames) if not hidden(f) and f.lower().endswith(exts)]
        found.extend(Path(dirpath) / f for f in names)
    return found


def read_csv(path: Path, required: Iterable[str], dataset: str) -> pd.DataFrame:
    """Read a CSV and check it has the columns an adapter needs."""
    if not path.is_file():
        raise MedsslError(f"{dataset}: {path} not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise MedsslError(f"{dataset}: cannot parse {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise MedsslError(
            f"{dataset}: {path} lacks column(s) {', '.join(missing)} "
            f"(has: {', '.join(frame.columns[:12])})"
        )
    if frame.empty:
        raise MedsslError(f"{dataset}: {path} has no rows")
    return frame


def csv_relative_images(
    names: Iterable[str], csv_path: Path, column: str, dataset: str
) -> list[str]:
    """Absolute or CSV-relative image paths (relative to the CSV's folder); a missing file is
    an error naming its row and column."""
    base = csv_path.parent
    paths: list[str] = []
    for row, name in enumerate(names):
        path = Path(name).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            paths.append(missing_image(path, (
                f"{dataset}: image {name} in {csv_path} (row {row + 2}, column '{column}') "
                f"not found at {path}"
            )))  # fmt: skip
            continue
        paths.append(str(path))
    return paths


def resolve_images(
    names: Iterable[str], index: dict[str, Path], csv_path: Path, dataset: str
) -> list[str]:
    """Paths for the image names a CSV lists; a missing file is an error naming its row."""
    paths: list[str] = []
    for row, name in enumerate(names):
        path = index.get(name)
        if path is None:
            paths.append(missing_image(csv_path.parent / name, (
                f"{dataset}: image {name} listed in {csv_path} (row {row + 2}) "
                f"was not found under {csv_path.parent}"
            )))  # fmt: skip
            continue
        paths.append(str(path))
    return paths
