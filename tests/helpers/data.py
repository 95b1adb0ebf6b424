"""Test data: the real data beside the project, small synthetic manifests and dataset layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medssl.data.manifest import Manifest

SHARED_DATA = Path(
    os.environ.get("MEDSSL_SHARED_DATA", Path(__file__).parents[2] / ".." / "shared" / "data")
).resolve()


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (CI always has it beside the project)")
    return path


def make_manifest(
    case_sizes: list[int],
    labels: list[int] | None = None,
    n_classes: int = 3,
    sources: list[str] | None = None,
) -> Manifest:
    """A multiclass manifest whose case c has case_sizes[c] images (no files behind it)."""
    rows = []
    for case, size in enumerate(case_sizes):
        for _ in range(size):
            rows.append(
                {
                    "image": f"array:{len(rows)}",
                    "case_id": f"case{case}",
                    "source": sources[case] if sources else "site",
                    "view": "",
                    "official_split": "",
                }
            )
    case_labels = labels if labels is not None else [c % n_classes for c in range(len(case_sizes))]
    targets = np.repeat(np.asarray(case_labels), case_sizes)
    pixels = np.zeros((len(rows), 8, 8, 3), dtype=np.uint8)
    return Manifest(
        "synthetic",
        pd.DataFrame(rows),
        targets,
        [f"c{i}" for i in range(n_classes)],
        "multiclass",
        pixels=pixels,
    )


def write_ham_layout(root: Path, n_lesions: int = 24, seed: int = 0) -> Path:
    """A tiny dataset in HAM10000's published layout (metadata CSV + JPEG folders).

    Lesion l has 1-3 images; classes cycle over nv, mel, bkl; sources alternate between a
    Vienna source and rosendahl (the canonical shift source). Images are 24x18 PNGs with a
    class-dependent colour, so a classifier can learn something in a few steps.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = ["nv", "mel", "bkl"]
    colours = {"nv": (180, 120, 90), "mel": (60, 40, 30), "bkl": (140, 140, 60)}
    rows = []
    folder = root / "HAM10000_images_part_1"
    folder.mkdir(parents=True, exist_ok=True)
    for lesion in range(n_lesions):
        dx = classes[lesion % 3]
        source = "rosendahl" if lesion % 4 == 3 else "vidir_modern"
        for k in range(1 + lesion % 3):
            image_id = f"ISIC_{lesion:03d}{k}"
            noise = rng.integers(-40, 40, size=(18, 24, 3))
            pixels = np.clip(np.array(colours[dx]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{image_id}.png")
            rows.append((f"HAM_{lesion:04d}", f"{image_id}.png", dx, source))
    frame = pd.DataFrame(rows, columns=["lesion_id", "image_id", "dx", "dataset"])
    frame.to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def write_tiny_imagenet_layout(root: Path, n_classes: int = 3, n_train: int = 8, n_val: int = 4,
                               seed: int = 0) -> Path:  # fmt: skip
    """A tiny dataset in Tiny ImageNet's layout as ``shared/data/tiny-imagenet-200`` has it:
    ``images/{train,val}/<wnid>/*.JPEG``, ``labels.csv`` (image,label,case_id,source,split)
    and ``classes.csv`` (index,label,name,n_train,n_val); one image per case, 20x20 JPEGs
    with a class-dependent colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, classes = [], []
    for c in range(n_classes):
        wnid = f"n{c:08d}"
        classes.append({"index": c, "label": wnid, "name": f"class {c}", "n_train": n_train,
                        "n_val": n_val})  # fmt: skip
        for split, count in (("train", n_train), ("val", n_val)):
            folder = root / "images" / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                name = f"{wnid}_{k}.JPEG" if split == "train" else f"val_{c}_{k}.JPEG"
                colour = np.array([60 + 60 * c, 200 - 50 * c, 120])
                noise = rng.integers(-30, 30, size=(20, 20, 3))
                Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(
                    folder / name, format="JPEG"
                )
                image = f"images/{split}/{wnid}/{name}"
                rows.append({"image": image, "label": wnid, "case_id": Path(name).stem,
                             "source": "tiny", "split": split})  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    pd.DataFrame(classes).to_csv(root / "classes.csv", index=False)
    return root
