"""MedMNIST v2 (Yang et al. 2023): one ``.npz`` per dataset with pixels and labels inside.

Keys ``{train,val,test}_{images,labels}``; images ``(N, H, W)`` or ``(N, H, W, 3)`` uint8;
labels ``(N, 1)`` class indices (multi-class) or ``(N, K)`` 0/1 (multi-label, ChestMNIST).
The pixels stay in memory (:attr:`Manifest.pixels`), so ``image`` is ``array:<i>``.

The npz carries no patient ids: every image is its own case. The official MedMNIST splits
were made per patient where the source data allowed it, which a case-level re-split cannot
reproduce; the manifest says so in its warnings. The npz carries no class names either, so
classes are ``class_0`` .. ``class_{C-1}`` (the names are in MedMNIST's ``INFO`` dict).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.manifest import Manifest
from medssl.errors import MedsslError

SPLITS = ("train", "val", "test")
KEYS = tuple(f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels"))


def _npz_file(root: Path) -> Path:
    """``root`` itself, or the only ``.npz`` in the directory ``root``."""
    if root.is_file():
        if root.suffix.lower() != ".npz":
            raise MedsslError(f"medmnist: --root {root} is not a .npz file")
        return root
    if not root.is_dir():
        raise MedsslError(f"medmnist: --root {root} is neither a .npz file nor a directory")
    found = sorted(p for p in root.iterdir() if p.suffix.lower() == ".npz" and p.is_file())
    found = [p for p in found if not p.name.startswith(".")]
    if not found:
        raise MedsslError(f"medmnist: no .npz file in {root}")
    if len(found) > 1:
        raise MedsslError(
            f"medmnist: several .npz files in {root} ({', '.join(p.name for p in found)}); "
            "pass one of them as --root"
        )
    return found[0]


def _as_uint8(images: np.ndarray, path: Path, key: str) -> np.ndarray:
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
        raise MedsslError(
            f"medmnist: {path} key {key} has shape {images.shape}; expected (N, H, W) or "
            "(N, H, W, 3) (3D MedMNIST volumes are not supported)"
        )
    if images.dtype == np.uint8:
        return images
    if images.size and (
        not np.issubdtype(images.dtype, np.integer) or images.min() < 0 or images.max() > 255
    ):
        raise MedsslError(f"medmnist: {path} key {key} is {images.dtype}, expected uint8 pixels")
    return images.astype(np.uint8)


def load_medmnist(root: str | Path) -> Manifest:
    """Case = ``<split>-<index>`` (one image each); ``official_split`` = train/val/test."""
    path = _npz_file(Path(root).expanduser())
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise MedsslError(f"medmnist: {path} holds a single array, not an .npz archive")
        with loaded as npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise MedsslError(
                    f"medmnist: {path} lacks key(s) {', '.join(missing)} "
                    f"(has: {', '.join(npz.files) or 'none'})"
                )
            arrays = {k: npz[k] for k in KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MedsslError(f"medmnist: cannot read {path}: {first}") from None

    images, labels, tables = [], [], []
    for split in SPLITS:
        img = _as_uint8(arrays[f"{split}_images"], path, f"{split}_images")
        lab = np.asarray(arrays[f"{split}_labels"])
        if lab.ndim == 1:
            lab = lab[:, None]
        if lab.ndim != 2 or len(lab) != len(img):
            raise MedsslError(
                f"medmnist: {path}: {split}_labels has shape {lab.shape} but {split}_images "
                f"holds {len(img)} images"
            )
        if images and img.shape[1:] != images[0].shape[1:]:
            raise MedsslError(
                f"medmnist: {path}: {split}_images are {img.shape[1:]} but train_images are "
                f"{images[0].shape[1:]}"
            )
        images.append(img)
        labels.append(lab)
        tables.append(pd.DataFrame({"case_id": [f"{split}-{i}" for i in range(len(img))]}))
        tables[-1]["official_split"] = split
    if len({lab.shape[1] for lab in labels}) > 1:
        raise MedsslError(
            f"medmnist: {path}: the label arrays differ in columns "
            f"({', '.join(f'{s}: {lab.shape[1]}' for s, lab in zip(SPLITS, labels, strict=True))})"
        )
    label = np.concatenate(labels)
    if label.size and (not np.all(np.isfinite(label)) or np.any(label != np.round(label))):
        raise MedsslError(f"medmnist: {path}: labels must be whole numbers")
    if label.shape[1] > 1:
        if not np.isin(label, (0, 1)).all():
            raise MedsslError(f"medmnist: {path}: multi-label labels must be 0 or 1")
        task, targets, n_classes = "multilabel", label.astype(np.float32), label.shape[1]
    else:
        if label.size and label.min() < 0:
            raise MedsslError(f"medmnist: {path}: negative class index {int(label.min())}")
        targets = label[:, 0].astype(np.int64)
        task, n_classes = "multiclass", int(targets.max()) + 1 if targets.size else 0

    table = pd.concat(tables, ignore_index=True)
    table["image"] = [f"array:{i}" for i in range(len(table))]
    table["source"] = path.stem.lower()
    table["view"] = ""
    manifest = Manifest(
        "medmnist",
        table,
        targets,
        [f"class_{i}" for i in range(n_classes)],
        task,  # type: ignore[arg-type]
        pixels=np.concatenate(images),
    )
    manifest.warnings.append(
        f"medmnist: {path.name} has no patient ids, so each image is its own case: MICLe "
        "finds no multi-image cases, and a case-level re-split cannot keep a patient's "
        "images together as the official MedMNIST split does"
    )
    return manifest
