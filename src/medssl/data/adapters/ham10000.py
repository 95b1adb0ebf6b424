"""HAM10000 (Tschandl et al. 2018): ``HAM10000_metadata.csv`` plus JPEGs anywhere below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.files import index_images, read_csv, require_dir, resolve_images
from medssl.data.manifest import Manifest
from medssl.errors import MedsslError

#: The seven diagnoses, in the order of the official metadata documentation.
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
METADATA = "HAM10000_metadata.csv"


def load_ham10000(root: str | Path) -> Manifest:
    """Case = ``lesion_id``; source = the ``dataset`` column when present."""
    root = require_dir(root, "ham10000")
    csv_path = root / METADATA
    frame = read_csv(csv_path, ["lesion_id", "image_id", "dx"], "ham10000")
    lookup = {name: i for i, name in enumerate(CLASSES)}
    unknown = ~frame["dx"].isin(lookup)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise MedsslError(
            f"ham10000: {csv_path} row {row + 2}: dx '{frame['dx'].iloc[row]}' is not one of "
            f"{', '.join(CLASSES)}"
        )
    index = index_images(root, (".jpg", ".jpeg", ".png"))
    names = [
        i if i.lower().endswith((".jpg", ".jpeg", ".png")) else f"{i}.jpg"
        for i in frame["image_id"]
    ]
    table = pd.DataFrame(
        {
            "image": resolve_images(names, index, csv_path, "ham10000"),
            "case_id": frame["lesion_id"],
            "source": frame.get("dataset", ""),
            "view": "",
            "official_split": "",
            # optional metadata (subgroup analysis, medssl.subgroups)
            "sex": frame.get("sex", ""),
            "age": frame.get("age", ""),
            "localization": frame.get("localization", ""),
        }
    )
    targets = frame["dx"].map(lookup).to_numpy()
    return Manifest("ham10000", table, targets, list(CLASSES), "multiclass")
