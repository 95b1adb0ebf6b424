"""Unlabeled images for pretraining: a folder scanned recursively, or a CSV of image paths.

Every format :func:`medssl.data.imageio.read_image` decodes is read, DICOM included. Cases
(MICLe's bags) come from a case rule (:mod:`medssl.data.case_rules`): the parent folder, a
file-name pattern, a CSV column or DICOM tags. For DICOM files the view (ViewPosition,
laterality) fills the manifest's ``view`` column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.case_rules import case_ids, dicom_views, is_dicom, parse_case_rule
from medssl.data.files import IMAGE_EXTENSIONS, csv_relative_images, read_csv, walk_images
from medssl.data.manifest import Manifest
from medssl.errors import MedsslError

NAME = "images"


def load_images(
    root: str | Path,
    case_by: str = "image",
    csv_path: str | None = None,
    csv_image: str = "image",
    csv_source: str | None = None,
    csv_view: str | None = None,
) -> Manifest:
    """Unlabeled images under ``root`` (a folder), or listed by a CSV (``root`` itself, or
    ``csv_path`` relative to ``root``), with cases from ``case_by``."""
    rule = parse_case_rule(case_by)
    root = Path(root).expanduser().absolute()
    frame: pd.DataFrame | None = None
    if root.is_file() or csv_path:
        path = root if root.is_file() else root / Path(csv_path).expanduser()
        needed = [csv_image, *(c for c in (csv_source, csv_view) if c)]
        frame = read_csv(path, needed, NAME)
        cells = [str(c).strip() for c in frame[csv_image]]
        empty = next((row for row, cell in enumerate(cells) if not cell), None)
        if empty is not None:
            raise MedsslError(f"{NAME}: {path} row {empty + 2}: empty image path")
        paths = [str(p) for p in csv_relative_images(cells, path, csv_image, NAME)]
        base, where = path.parent, str(path)
    elif root.is_dir():
        given = [f for f, v in (("--csv-source", csv_source), ("--csv-view", csv_view)) if v]
        if given:
            raise MedsslError(f"{NAME}: {', '.join(given)} need a CSV of images (--csv-path)")
        paths = [str(p) for p in walk_images(root)]
        if not paths:
            raise MedsslError(
                f"{NAME}: no image files ({', '.join(IMAGE_EXTENSIONS)}) anywhere under {root}"
            )
        base, where = root, str(root)
    else:
        raise MedsslError(f"{NAME}: --root {root} is neither a folder of images nor a CSV file")
    ids, warnings = case_ids(rule, paths, base, frame, where)
    if frame is not None and csv_view:
        views = [str(v).strip() for v in frame[csv_view]]
    elif any(is_dicom(p) for p in paths):
        views = dicom_views(paths)
    else:
        views = [""] * len(paths)
    table = pd.DataFrame(
        {
            "image": paths,
            "case_id": ids,
            "source": [str(s).strip() for s in frame[csv_source]] if csv_source else "",
            "view": views,
            "official_split": "",
        }
    )
    manifest = Manifest(NAME, table, np.zeros(len(table), dtype=np.int64), [], "multiclass")
    if rule.kind == "image":
        warnings.append(
            f"{NAME}: every image is its own case (--case-by image): MICLe then pairs two "
            "views of one image, as SimCLR does; name a case rule for multi-image bags"
        )
    manifest.warnings.extend(warnings)
    return manifest
