"""Pediatric pneumonia chest X-rays (Kermany et al. 2018).

Layout: ``chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg``. The label is the folder;
the patient comes from the file name: ``personN_bacteria_M.jpeg`` / ``personN_virus_M.jpeg``
for pneumonia, ``IM-XXXX-YYYY.jpeg`` and ``NORMAL2-IM-XXXX-YYYY.jpeg`` for normal. Patients
are keyed conservatively on (file-name family, number): every image of ``person12`` is one
case whatever its subtype or official split. With that key some patients sit in both the
official train and test folders; the manifest records it as a warning.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.files import require_dir
from medssl.data.manifest import Manifest
from medssl.data.splits import official_split_overlap
from medssl.errors import MedsslError

CLASSES = ["NORMAL", "PNEUMONIA"]
SUBTYPE_CLASSES = ["NORMAL", "BACTERIA", "VIRUS"]
_PERSON = re.compile(r"^person(\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL = re.compile(r"^(NORMAL2-)?IM-(\d+)-", re.IGNORECASE)
_EXTS = (".jpeg", ".jpg", ".png")


def parse_pneumonia_name(name: str) -> tuple[str, str]:
    """(case id, subtype) from a file name; subtype is bacteria, virus or normal."""
    if m := _PERSON.match(name):
        return f"person{int(m.group(1))}", m.group(2).lower()
    if m := _NORMAL.match(name):
        prefix = "NORMAL2-IM" if m.group(1) else "IM"
        return f"{prefix}-{int(m.group(2)):04d}", "normal"
    raise MedsslError(f"pneumonia: cannot read a patient number from file name {name}")


def _find_root(root: Path) -> Path:
    for candidate in (root, root / "chest_xray"):
        if any((candidate / s).is_dir() for s in ("train", "test", "val")):
            return candidate
    raise MedsslError(f"pneumonia: no chest_xray/{{train,test,val}} folders under {root}")


def load_pneumonia(root: str | Path, subtypes: bool = False) -> Manifest:
    """NORMAL / PNEUMONIA, or NORMAL / BACTERIA / VIRUS with ``subtypes=True``."""
    base = _find_root(require_dir(root, "pneumonia"))
    rows: list[dict] = []
    for split_dir in sorted(p for p in base.iterdir() if p.is_dir() and p.name[0] != "."):
        for label in CLASSES:
            folder = split_dir / label
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.name.startswith(".") or path.suffix.lower() not in _EXTS:
                    continue
                case_id, subtype = parse_pneumonia_name(path.name)
                if (subtype == "normal") != (label == "NORMAL"):
                    raise MedsslError(f"pneumonia: {path} is named {subtype} but filed {label}")
                cls = subtype.upper() if subtypes else label
                rows.append(
                    {"image": str(path), "case_id": case_id, "source": "guangzhou",
                     "view": "", "official_split": split_dir.name, "cls": cls}
                )  # fmt: skip
    if not rows:
        raise MedsslError(f"pneumonia: no images under {base}")
    table = pd.DataFrame(rows)
    names = SUBTYPE_CLASSES if subtypes else CLASSES
    targets = table.pop("cls").map({n: i for i, n in enumerate(names)}).to_numpy()
    manifest = Manifest("pneumonia", table, np.asarray(targets), list(names), "multiclass")
    shared = official_split_overlap(manifest)
    if shared:
        manifest.warnings.append(
            f"{shared} patient numbers appear in both official split folders "
            f"({', '.join(sorted(set(table['official_split'])))}): the official split leaks "
            "patients (the canonical split scheme pools the folders and re-splits by case)"
        )
    return manifest
