"""NIH ChestX-ray14 (Wang et al. 2017): ``Data_Entry_2017*.csv`` plus PNGs anywhere below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.files import index_images, read_csv, require_dir, resolve_images
from medssl.data.manifest import Manifest
from medssl.errors import MedsslError

#: The 14 findings of ChestX-ray14 (NIH names; ``Effusion`` is pleural effusion).
FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
]  # fmt: skip
NO_FINDING = "No Finding"


def _label_file(root: Path) -> Path:
    candidates = sorted(root.glob("Data_Entry_2017*.csv"))
    if not candidates:
        raise MedsslError(f"nih: no Data_Entry_2017*.csv in {root}")
    return candidates[-1]


#: The official split lists of the NIH release (image names, one per line).
OFFICIAL_LISTS = {"test": "test_list.txt", "train": "train_val_list.txt"}


def _official_split(root: Path, names: pd.Series) -> list[str] | str:
    """``test``/``train`` from the release's list files beside the CSV ("" without them)."""
    members = {
        split: set((root / name).read_text().split())
        for split, name in OFFICIAL_LISTS.items()
        if (root / name).is_file()
    }
    if not members:
        return ""
    return [next((s for s, m in members.items() if n in m), "") for n in names]


def load_nih(root: str | Path) -> Manifest:
    """Case = ``Patient ID``; view = ``View Position``; 14 findings, multi-hot.

    ``official_split`` comes from ``test_list.txt`` / ``train_val_list.txt`` when the root
    holds them (``--split-scheme official``); sex and age are kept for subgroup metrics.
    """
    root = require_dir(root, "nih")
    csv_path = _label_file(root)
    frame = read_csv(csv_path, ["Image Index", "Finding Labels", "Patient ID"], "nih")
    lookup = {name: i for i, name in enumerate(FINDINGS)}
    targets = np.zeros((len(frame), len(FINDINGS)), dtype=np.float32)
    for row, labels in enumerate(frame["Finding Labels"]):
        for label in filter(None, (s.strip() for s in labels.split("|"))):
            if label == NO_FINDING:
                continue
            if label not in lookup:
                raise MedsslError(
                    f"nih: {csv_path} row {row + 2}: finding '{label}' is not one of the 14 "
                    "ChestX-ray14 findings"
                )
            targets[row, lookup[label]] = 1.0
    index = index_images(root, (".png", ".jpg", ".jpeg"))
    table = pd.DataFrame(
        {
            "image": resolve_images(frame["Image Index"], index, csv_path, "nih"),
            "case_id": frame["Patient ID"],
            "source": "nih",
            "view": frame.get("View Position", ""),
            "official_split": _official_split(root, frame["Image Index"]),
            "sex": frame.get("Patient Gender", ""),
            "age": frame.get("Patient Age", ""),
        }
    )
    return Manifest("nih", table, targets, list(FINDINGS), "multilabel")
