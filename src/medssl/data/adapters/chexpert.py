"""CheXpert (Irvin et al. 2019): ``train.csv`` and ``valid.csv`` plus JPEGs below.

The ``Path`` column of the official CSVs is relative to the *parent* of the dataset folder
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``), but people move and
rename that folder. Each path is therefore tried as ``root/Path``, ``root.parent/Path`` and
``root/<Path without its first component>``; whichever works for the first row is tried first
for the others.

Label cells are ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain) or blank (not
mentioned in the report, read as negative as in the CheXpert paper). ``uncertain`` picks the
paper's policy for ``-1.0``: ``ignore`` (NaN, masked out of the loss and metrics), ``positive``
(U-Ones) or ``negative`` (U-Zeros).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.data.files import missing_image, read_csv, require_dir
from medssl.data.manifest import Manifest
from medssl.errors import MedsslError

#: The 14 label columns of the official CSVs, in their order.
CHEXPERT_FINDINGS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
]  # fmt: skip

#: The five findings of the CheXpert competition (CheXpert names).
COMPETITION_FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]

#: CheXpert finding -> medssl's shared name (the NIH ChestX-ray14 name), so that a model
#: trained on one dataset is evaluated on the same finding in the other. Findings not listed
#: keep their CheXpert name (Atelectasis, Cardiomegaly, Consolidation, Edema, Pneumonia and
#: Pneumothorax are spelled the same in both). "Pleural Other" is *not* NIH's
#: "Pleural_Thickening" and "Lung Opacity" is not "Infiltration", so neither is mapped.
CHEXPERT_TO_SHARED = {"Pleural Effusion": "Effusion"}
SHARED_TO_CHEXPERT = {v: k for k, v in CHEXPERT_TO_SHARED.items()}

UNCERTAIN_POLICIES = {"ignore": np.nan, "positive": 1.0, "negative": 0.0}
SPLITS = {"train": "train.csv", "valid": "valid.csv"}
_PATIENT = re.compile(r"^patient\d+$")


def _find_root(root: Path) -> Path:
    """``root``, or its single subfolder holding the CSVs (a root one level too high)."""
    if (root / SPLITS["train"]).is_file() or (root / SPLITS["valid"]).is_file():
        return root
    inner = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / SPLITS["train"]).is_file()]
    return inner[0] if len(inner) == 1 else root


def _select_findings(findings: list[str] | str | None, available: list[str]) -> list[str]:
    """CheXpert column names for the requested findings (CheXpert or shared names)."""
    if findings is None:
        return list(COMPETITION_FINDINGS)
    if isinstance(findings, str):  # "Edema,Effusion" from a command line
        findings = [f.strip() for f in findings.split(",") if f.strip()]
    if not findings:
        raise MedsslError("chexpert: --findings is empty")
    columns: list[str] = []
    for name in findings:
        column = SHARED_TO_CHEXPERT.get(name, name)
        if column not in available:
            raise MedsslError(
                f"chexpert: unknown finding '{name}' (available: {', '.join(available)}; "
                f"shared names: {', '.join(f'{v}={k}' for k, v in CHEXPERT_TO_SHARED.items())})"
            )
        if column in columns:
            raise MedsslError(f"chexpert: finding '{name}' is requested twice")
        columns.append(column)
    return columns


def _case_id(path: str, csv_path: Path, row: int) -> str:
    for part in re.split(r"[\\/]", path):
        if _PATIENT.match(part):
            return part
    raise MedsslError(
        f"chexpert: {csv_path} row {row + 2}: no patientNNNNN folder in Path '{path}'"
    )


def _view(frontal: str, projection: str) -> str:
    """``Frontal-AP``, ``Frontal-PA``, ``Lateral``, ``Frontal`` or ""."""
    return "-".join(p for p in (frontal.strip(), projection.strip()) if p)


def _candidates(root: str, parent: str, rel: str) -> list[str]:
    """Where ``Path`` may point (strings and ``os.path``: pathlib is slow for 200k rows)."""
    if os.path.isabs(rel):
        return [rel]
    out = [os.path.join(root, rel), os.path.join(parent, rel)]
    _first, sep, rest = rel.replace("\\", "/").partition("/")
    if sep and rest:
        out.append(os.path.join(root, rest))
    return out


def _resolve(root: Path, paths: pd.Series, csv_path: Path) -> list[str]:
    """Existing image file of every ``Path``; a missing one is an error naming its row."""
    root_s, parent_s = str(root), str(root.parent)
    resolved: list[str] = []
    preferred = 0  # index of the candidate that worked last: tried first
    for row, rel in enumerate(paths):
        candidates = _candidates(root_s, parent_s, rel)
        if preferred < len(candidates) and os.path.isfile(candidates[preferred]):
            resolved.append(candidates[preferred])
            continue
        for i, candidate in enumerate(candidates):
            if os.path.isfile(candidate):
                resolved.append(candidate)
                preferred = i
                break
        else:
            resolved.append(missing_image(candidates[0], (
                f"chexpert: image {rel} listed in {csv_path} (row {row + 2}) was not found "
                f"(tried {', '.join(dict.fromkeys(candidates))})"
            )))  # fmt: skip
    return resolved


def _labels(
    frame: pd.DataFrame, columns: list[str], uncertain_value: float, csv_path: Path
) -> np.ndarray:
    targets = np.zeros((len(frame), len(columns)), dtype=np.float32)
    for k, column in enumerate(columns):
        cells = frame[column].str.strip()
        values = pd.to_numeric(cells.replace("", "0"), errors="coerce")
        bad = ~values.isin([1.0, 0.0, -1.0]).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise MedsslError(
                f"chexpert: {csv_path} row {row + 2}, column '{column}': value "
                f"'{cells.iloc[row]}' is not 1.0, 0.0, -1.0 or blank"
            )
        col = values.to_numpy(dtype=np.float32)
        col[col == -1.0] = uncertain_value
        targets[:, k] = col
    return targets


def load_chexpert(
    root: str | Path, findings: list[str] | str | None = None, uncertain: str = "ignore"
) -> Manifest:
    """Case = the ``patientNNNNN`` folder; view = ``Frontal/Lateral`` + ``AP/PA``.

    ``findings`` takes CheXpert names or shared names (``Effusion``); the manifest always
    uses the shared names (:data:`CHEXPERT_TO_SHARED`). Default: the five competition
    findings; a comma-separated string (from a command line) works too. Both official CSVs
    are read; ``official_split`` is ``train`` or ``valid``.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise MedsslError(
            f"chexpert: --uncertain '{uncertain}' is not one of {', '.join(UNCERTAIN_POLICIES)}"
        )
    root = _find_root(require_dir(root, "chexpert").absolute())
    for name in SPLITS.values():
        if not (root / name).is_file():
            raise MedsslError(
                f"chexpert: {root / name} not found (the official layout has "
                f"{' and '.join(SPLITS.values())} in the dataset folder)"
            )
    columns: list[str] | None = None
    tables: list[pd.DataFrame] = []
    targets: list[np.ndarray] = []
    for split, name in SPLITS.items():
        csv_path = root / name
        frame = read_csv(csv_path, ["Path"], "chexpert")
        if columns is None:
            available = [c for c in CHEXPERT_FINDINGS if c in frame.columns]
            columns = _select_findings(findings, available)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise MedsslError(f"chexpert: {csv_path} lacks finding column(s) {', '.join(missing)}")
        targets.append(_labels(frame, columns, UNCERTAIN_POLICIES[uncertain], csv_path))
        empty = pd.Series([""] * len(frame), index=frame.index, dtype=object)
        frontal, projection = frame.get("Frontal/Lateral", empty), frame.get("AP/PA", empty)
        views = [_view(f, p) for f, p in zip(frontal, projection, strict=True)]
        tables.append(
            pd.DataFrame(
                {
                    "image": _resolve(root, frame["Path"], csv_path),
                    "case_id": [_case_id(p, csv_path, r) for r, p in enumerate(frame["Path"])],
                    "source": "chexpert",
                    "view": views,
                    "official_split": split,
                    "sex": frame.get("Sex", empty).to_numpy(),
                    "age": frame.get("Age", empty).to_numpy(),
                }
            )
        )
    assert columns is not None
    names = [CHEXPERT_TO_SHARED.get(c, c) for c in columns]
    table = pd.concat(tables, ignore_index=True)
    return Manifest("chexpert", table, np.concatenate(targets), names, "multilabel")
