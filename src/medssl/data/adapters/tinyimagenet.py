"""Tiny ImageNet (Le & Yang, 2015): 200 ImageNet classes at 64x64, the natural-image stage.

Layout (ImageFolder / ImageNet convention, as in ``shared/data/tiny-imagenet-200``):
``images/train/<wnid>/<wnid>_<k>.JPEG``, ``images/val/<wnid>/val_<n>.JPEG`` and
``labels.csv`` with columns ``image,label,case_id,source,split`` (label: the WordNet id;
split: the publisher's ``train`` / ``val``). ``classes.csv`` (``index,label,name,...``), when
present, orders the classes by its ``index``. One image per case: MICLe has no partners
here, which is why medssl pretrains SimCLR on it (the paper's stage 1 on ImageNet).

Under ``--split-scheme official`` the publisher's val images are the test split (its own
test labels are hidden, as CheXpert's are: :data:`medssl.data.splits.OFFICIAL_ROLES`) and
12.5% of the training images are held out for validation; the canonical scheme re-splits
all images 70/10/20 like any dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.files import csv_relative_images, read_csv, require_dir
from medssl.data.manifest import Manifest
from medssl.errors import MedsslError

NAME = "tiny-imagenet"
LABELS_CSV = "labels.csv"
CLASSES_CSV = "classes.csv"


def _class_order(root: Path, labels: list[str]) -> list[str]:
    """Class names in ``classes.csv``'s index order (sorted names without that file)."""
    path = root / CLASSES_CSV
    present = sorted(set(labels))
    if not path.is_file():
        return present
    table = read_csv(path, ["index", "label"], NAME)
    try:
        pairs = zip(table["index"].astype(int), table["label"], strict=True)
        order = [label for _, label in sorted(pairs)]
    except ValueError:
        raise MedsslError(f"{NAME}: {path}: column 'index' holds a non-integer") from None
    unknown = sorted(set(present) - set(order))
    if unknown:
        raise MedsslError(f"{NAME}: label {unknown[0]!r} of {LABELS_CSV} is not in {path}")
    kept = set(present)
    return [c for c in order if c in kept]


def load_tiny_imagenet(root: str | Path) -> Manifest:
    """Every image of ``labels.csv`` (paths relative to ``root``), 200-way multi-class."""
    base = require_dir(Path(root), NAME)
    csv_path = base / LABELS_CSV
    frame = read_csv(csv_path, ["image", "label", "case_id", "split"], NAME)
    images = csv_relative_images(list(frame["image"]), csv_path, "image", NAME)
    labels = list(frame["label"])
    names = _class_order(base, labels)
    lookup = {n: i for i, n in enumerate(names)}
    table = pd.DataFrame({
        "image": images,
        "case_id": list(frame["case_id"]),
        "source": list(frame["source"]) if "source" in frame else NAME,
        "view": "",
        "official_split": list(frame["split"]),
    })  # fmt: skip
    return Manifest(NAME, table, np.array([lookup[x] for x in labels]), names, "multiclass")
