"""Datasets without a dedicated adapter: a labels CSV, or an ImageFolder-style tree.

Both accept any format :func:`medssl.data.imageio.read_image` decodes, DICOM included
(``.dcm`` / ``.dicom``): the adapters only list files, decoding happens in the image cache.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.adapters.nih import NO_FINDING
from medssl.data.files import (
    IMAGE_EXTENSIONS,
    csv_relative_images,
    hidden,
    read_csv,
    require_dir,
    walk_images,
)
from medssl.data.manifest import Manifest
from medssl.errors import MedsslError

DEFAULT_CSV = "labels.csv"
_SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}
_NO_CASE = (
    "each image is its own case: MICLe needs several images per case (patient or lesion) "
    "and finds none, and splits cannot keep a patient's images together"
)


def _csv_file(root: Path, csv_path: str | None) -> Path:
    if root.is_file():
        given = Path(csv_path).expanduser().absolute() if csv_path else root
        if given != root and csv_path != root.name:
            raise MedsslError(
                f"csv: --root {root} is already a CSV file; drop --csv-path {csv_path} "
                "or make --root its folder"
            )
        return root
    root = require_dir(root, "csv")
    path = root / Path(csv_path).expanduser() if csv_path else root / DEFAULT_CSV
    if not path.is_file():
        hint = "" if csv_path else " (name the labels file with --csv-path)"
        raise MedsslError(f"csv: {path} not found{hint}")
    return path


def _cells(frame: pd.DataFrame, column: str, csv_path: Path, what: str) -> list[str]:
    """Stripped cells of ``column``; an empty one is an error naming its row."""
    cells = [c.strip() for c in frame[column]]
    for row, cell in enumerate(cells):
        if not cell:
            raise MedsslError(f"csv: {csv_path} row {row + 2}: empty {what} in column '{column}'")
    return cells


def _multilabel(cells: list[str], sep: str, csv_path: Path) -> tuple[np.ndarray, list[str]]:
    """Multi-hot targets from ``sep``-joined findings; ``No Finding`` means none (as NIH)."""
    rows = [
        {t for t in (s.strip() for s in cell.split(sep)) if t and t != NO_FINDING} for cell in cells
    ]
    names = sorted(set().union(*rows))
    if not names:
        raise MedsslError(f"csv: {csv_path}: no row has a finding (all are '{NO_FINDING}')")
    lookup = {n: i for i, n in enumerate(names)}
    targets = np.zeros((len(cells), len(names)), dtype=np.float32)
    for row, found in enumerate(rows):
        targets[row, [lookup[f] for f in found]] = 1.0
    return targets, names


def load_csv(
    root: str | Path,
    csv_path: str | None = None,
    csv_image: str = "image",
    csv_label: str = "label",
    csv_case: str | None = None,
    csv_source: str | None = None,
    csv_view: str | None = None,
    csv_labels_sep: str | None = None,
) -> Manifest:
    """One row per image: a path (relative to the CSV's folder, or absolute) and a label.

    ``root`` is the folder holding ``labels.csv`` (or ``csv_path``, relative to ``root`` or
    absolute), or the CSV itself. Multi-class unless ``csv_labels_sep`` is given; then each
    label cell lists findings joined by it (``"Edema|Effusion"``, or ``"No Finding"`` for
    none) and the task is multi-label. Class and finding names are sorted. Without
    ``csv_case`` every image is its own case (a manifest warning says so).
    """
    # The CLI passes unset options as None: fall back to the defaults rather than fail.
    csv_image = csv_image or "image"
    csv_label = csv_label or "label"
    path = _csv_file(Path(root).expanduser().absolute(), csv_path)
    optional = [c for c in (csv_case, csv_source, csv_view) if c]
    frame = read_csv(path, list(dict.fromkeys([csv_image, csv_label, *optional])), "csv")
    image_cells = _cells(frame, csv_image, path, "image path")
    images = csv_relative_images(image_cells, path, csv_image, "csv")
    labels = _cells(frame, csv_label, path, "label")
    warnings: list[str] = []
    if csv_case:
        case_ids = _cells(frame, csv_case, path, "case id")
    else:
        case_ids = image_cells
        warnings.append(f"csv: no --csv-case column given, so {_NO_CASE}")
    repeated = sum(n - 1 for n in Counter(images).values() if n > 1)
    if repeated:
        warnings.append(f"csv: {path} lists {repeated} image(s) more than once")
    table = pd.DataFrame(
        {
            "image": images,
            "case_id": case_ids,
            "source": [c.strip() for c in frame[csv_source]] if csv_source else "",
            "view": [c.strip() for c in frame[csv_view]] if csv_view else "",
            "official_split": "",
        }
    )
    if csv_labels_sep:
        targets, names = _multilabel(labels, csv_labels_sep, path)
        manifest = Manifest("csv", table, targets, names, "multilabel")
    else:
        names = sorted(set(labels))
        lookup = {n: i for i, n in enumerate(names)}
        manifest = Manifest(
            "csv", table, np.array([lookup[x] for x in labels]), names, "multiclass"
        )
        if len(names) == 1:
            warnings.append(f"csv: every row of {path} has the label '{names[0]}'")
    manifest.warnings.extend(warnings)
    return manifest


def load_folder(root: str | Path) -> Manifest:
    """ImageFolder layout ``root/<class>/**/<image>``; classes = sorted subfolder names.

    Every image is its own case (the layout has no patient ids; a manifest warning says
    so). Class folders without images are left out with a warning; images lying directly
    in ``root`` belong to no class and are ignored with a warning.
    """
    root = require_dir(root, "folder").absolute()
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not hidden(p.name))
    if not class_dirs:
        raise MedsslError(f"folder: no class subfolders in {root} (expected root/<class>/<image>)")
    warnings: list[str] = []
    rows: list[tuple[str, str, int]] = []
    names: list[str] = []
    empty: list[str] = []
    for folder in class_dirs:
        files = walk_images(folder)
        if not files:
            empty.append(folder.name)
            continue
        rows.extend((str(f), f.relative_to(root).as_posix(), len(names)) for f in files)
        names.append(folder.name)
    if not names:
        raise MedsslError(
            f"folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class subfolders "
            f"of {root} ({', '.join(p.name for p in class_dirs)})"
        )
    if empty:
        warnings.append(f"folder: class folder(s) without images left out: {', '.join(empty)}")
    loose = [f for f in root.iterdir() if f.is_file() and not hidden(f.name)]
    loose = [f for f in loose if f.name.lower().endswith(IMAGE_EXTENSIONS)]
    if loose:
        warnings.append(f"folder: {len(loose)} image(s) directly in {root} belong to no class")
    if {n.lower() for n in names} & _SPLIT_NAMES:
        warnings.append(
            f"folder: class folders are named {', '.join(names)}: if these are splits, "
            "point --root at one split's folder of class folders"
        )
    if len(names) == 1:
        warnings.append(f"folder: only one class ({names[0]}) was found in {root}")
    warnings.append(f"folder: {_NO_CASE}")
    table = pd.DataFrame(rows, columns=["image", "case_id", "target"])
    targets = table.pop("target").to_numpy()
    table["source"] = ""
    table["view"] = ""
    table["official_split"] = ""
    manifest = Manifest("folder", table, targets, names, "multiclass")
    manifest.warnings.extend(warnings)
    return manifest
