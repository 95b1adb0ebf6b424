"""Tiny ImageNet (Le & Yang, 2015): 200 ImageNet classes at 64x64, the natural-image stage.

Layout (ImageFolder / ImageNet convention, as in ``shared/data/tiny-imagenet-200``):
``images/train/<wnid>/<wnid>_<k>.JPEG``, ``images/val/<wnid>/val_<n>.JPEG`` and
``labels.csv`` with columns ``image,label,case_id,source,split`` (label: the WordNet id;
split: the publisher's ``train`` / ``val``). ``classes.csv`` (``index,label,name,...``), when
present, orders the classes by its ``index``. One image per case: MICLe has no partners
here, which is why medssl pretrains SimCLR on it (the paper's stage 1 on ImageNet).

The publisher's own download (``tiny-imagenet-200.zip``) is read as it unpacks, when the
folder has no ``labels.csv``: ``wnids.txt`` (the 200 classes), ``train/<wnid>/images/*.JPEG``
and ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` (file, wnid, box); its
``test/`` has no labels and is left out. Images, cases, splits and class order (sorted
WordNet ids) are those of the converted layout.

Under ``--split-scheme official`` the publisher's val images are the test split (its own
test labels are hidden, as CheXpert's are: :data:`medssl.data.splits.OFFICIAL_ROLES`) and
12.5% of the training images are held out for validation; the canonical scheme re-splits
all images 70/10/20 like any dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.files import csv_relative_images, missing_image, read_csv, require_dir
from medssl.data.manifest import Manifest
from medssl.errors import MedsslError
from medssl.options import read_text

NAME = "tiny-imagenet"
LABELS_CSV = "labels.csv"
CLASSES_CSV = "classes.csv"
#: the publisher's layout: its class list, the validation labels, and the set's own name
#: (the ``source`` of every image, as in the converted labels.csv)
WNIDS = "wnids.txt"
VAL_ANNOTATIONS = "val/val_annotations.txt"
PUBLISHER = "tiny-imagenet-200"


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


def _publisher_rows(base: Path) -> pd.DataFrame:
    """``labels.csv``'s rows for the publisher's layout (module docstring)."""
    classes = read_text(base / WNIDS, f"{NAME}: {base / WNIDS}").split()
    rows = []
    for wnid in classes:
        folder = base / "train" / wnid / "images"
        if not folder.is_dir():
            raise MedsslError(f"{NAME}: {folder} not found (class {wnid} of {base / WNIDS})")
        rows += [(str(p), wnid, p.stem, "train") for p in sorted(folder.glob("*.JPEG"))]
    rows += _publisher_val_rows(base, set(classes))
    if not rows:
        raise MedsslError(f"{NAME}: no images under {base / 'train'} or {base / 'val'}")
    frame = pd.DataFrame(rows, columns=["image", "label", "case_id", "split"])
    return frame.assign(source=PUBLISHER)


def _publisher_val_rows(base: Path, classes: set[str]) -> list[tuple[str, str, str, str]]:
    """The validation images that ``val/val_annotations.txt`` labels with one of ``classes``."""
    annotations = base / VAL_ANNOTATIONS
    if not annotations.is_file():
        raise MedsslError(f"{NAME}: {annotations} not found (the validation labels)")
    rows = []
    text = read_text(annotations, f"{NAME}: {annotations}")
    for line_no, line in enumerate(text.splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in classes:
            raise MedsslError(
                f"{NAME}: {annotations} line {line_no}: expected 'file<TAB>wnid' with a wnid "
                f"of {WNIDS}, got {line[:80]!r}"
            )
        path = str(base / "val" / "images" / fields[0])
        if not os.path.isfile(path):
            path = missing_image(path, f"{NAME}: image {fields[0]} of {annotations} "
                                       f"(line {line_no}) not found at {path}")  # fmt: skip
        rows.append((path, fields[1], Path(fields[0]).stem, "val"))
    return rows


def _rows(base: Path) -> pd.DataFrame:
    """The image rows (``image`` paths, ``label``, ``case_id``, ``split``, maybe ``source``):
    ``labels.csv``, else the publisher's layout."""
    csv_path = base / LABELS_CSV
    if csv_path.is_file() or not (base / WNIDS).is_file():
        if not csv_path.is_file():
            raise MedsslError(
                f"{NAME}: {csv_path} not found, nor the publisher's {base / WNIDS} (the "
                "tiny-imagenet-200.zip layout: wnids.txt, train/, val/val_annotations.txt)"
            )
        frame = read_csv(csv_path, ["image", "label", "case_id", "split"], NAME)
        images = csv_relative_images(list(frame["image"]), csv_path, "image", NAME)
        return frame.assign(image=images)
    return _publisher_rows(base)


def load_tiny_imagenet(root: str | Path) -> Manifest:
    """Every image of ``labels.csv`` (paths relative to ``root``) or of the publisher's
    layout, 200-way multi-class."""
    base = require_dir(Path(root), NAME)
    frame = _rows(base)
    labels = list(frame["label"])
    names = _class_order(base, labels)
    lookup = {n: i for i, n in enumerate(names)}
    table = pd.DataFrame({
        "image": list(frame["image"]),
        "case_id": list(frame["case_id"]),
        "source": list(frame["source"]) if "source" in frame else NAME,
        "view": "",
        "official_split": list(frame["split"]),
    })  # fmt: skip
    return Manifest(NAME, table, np.array([lookup[x] for x in labels]), names, "multiclass")
