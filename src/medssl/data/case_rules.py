"""Case ids from the metadata users already have: MICLe's bags for unlabeled images.

A case rule (``--case-by``) says which images belong to one patient, study or lesion:

- ``image``: every image is its own case (SimCLR's view of the data);
- ``parent``: the folder holding the image (``patient_17/img1.png``, ``patient_17/img2.png``);
- ``regex:PATTERN``: the one group of a regular expression searched in the image's path
  relative to the root (``regex:person(\\d+)_`` for the pediatric pneumonia file names);
- ``column:NAME``: a column of the image CSV;
- ``dicom:TAG[+TAG...]``: DICOM header tags, joined (``dicom:PatientID``,
  ``dicom:StudyInstanceUID``, ``dicom:PatientID+ViewPosition`` for one bag per patient and view).

An image the rule finds no id for (a file name the pattern misses, a DICOM file without the
tag, a non-DICOM file under a ``dicom:`` rule) is its own case, and a warning counts them; a
rule that finds no id at all is an error (it is surely the wrong rule). Case ids stay inside
the manifest: every file that leaves a run hashes them (:mod:`medssl.case_ids`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medssl.errors import MedsslError

KINDS = ("image", "parent", "regex", "column", "dicom")
#: DICOM tags read as the image's view (the manifest's ``view`` column), first found wins
VIEW_TAGS = ("ViewPosition", "ImageLaterality", "Laterality")
_DICOM_EXTS = (".dcm", ".dicom")


@dataclass(frozen=True)
class CaseRule:
    kind: str
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


def parse_case_rule(text: str, option: str = "--case-by") -> CaseRule:
    """A rule from its spelling; a mistake is one line naming ``option``."""
    kind, _, arg = (text or "image").strip().partition(":")
    if kind not in KINDS:
        raise MedsslError(
            f"{option} {text!r}: not a case rule (image, parent, regex:PATTERN, column:NAME, "
            "dicom:TAG[+TAG])"
        )
    if kind in ("image", "parent"):
        if arg:
            raise MedsslError(f"{option} {text!r}: {kind} takes no argument")
        return CaseRule(kind)
    if not arg:
        raise MedsslError(f"{option} {text!r}: {kind}: needs its argument, e.g. {_EXAMPLES[kind]}")
    if kind == "regex":
        try:
            groups = re.compile(arg).groups
        except re.error as exc:
            raise MedsslError(f"{option} {text!r}: not a regular expression ({exc})") from None
        if groups != 1:
            raise MedsslError(
                f"{option} {text!r}: the pattern needs exactly one group (the case id), "
                f"has {groups}"
            )
    if kind == "dicom":
        tags = arg.split("+")
        if not all(t.isidentifier() for t in tags):
            raise MedsslError(f"{option} {text!r}: DICOM tags are keywords like PatientID")
    return CaseRule(kind, arg)


_EXAMPLES = {
    "regex": r"regex:person(\d+)_",
    "column": "column:patient_id",
    "dicom": "dicom:PatientID",
}


def is_dicom(path: str | Path) -> bool:
    return str(path).lower().endswith(_DICOM_EXTS)


def dicom_header(path: str | Path, tags: Sequence[str]) -> dict[str, str]:
    """The given tags of a DICOM file's header (pixels not read); absent or empty ones are
    left out. An unreadable header is an error naming the file."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(tags))
    except Exception as exc:  # pydicom raises several kinds for damaged files
        raise MedsslError(f"{path}: not a readable DICOM file ({exc})") from None
    out: dict[str, str] = {}
    for tag in tags:
        value = getattr(ds, tag, None)
        if value is not None and str(value).strip():
            out[tag] = str(value).strip()
    return out


def dicom_views(paths: Sequence[str]) -> list[str]:
    """The view of each DICOM image (:data:`VIEW_TAGS`); "" for other files."""
    views: list[str] = []
    for path in paths:
        header = dicom_header(path, VIEW_TAGS) if is_dicom(path) else {}
        views.append(next((header[t] for t in VIEW_TAGS if t in header), ""))
    return views


def case_ids(
    rule: CaseRule,
    paths: Sequence[str],
    root: Path,
    frame: pd.DataFrame | None = None,
    where: str = "",
) -> tuple[list[str], list[str]]:
    """Each image's case id under ``rule``, and warnings.

    ``paths`` are the images' files (absolute), ``root`` the folder the rule's relative
    paths start from, ``frame`` the CSV rows the images came from (``column:`` rules).
    An image without an id is its own case: its id is its path.
    """
    if rule.kind == "image":
        return list(paths), []
    if rule.kind == "column":
        if frame is None:
            raise MedsslError(f"--case-by {rule}: column rules need a CSV of images")
        if rule.arg not in frame.columns:
            raise MedsslError(
                f"--case-by {rule}: {where} has no column {rule.arg!r} "
                f"(has: {', '.join(map(str, frame.columns))})"
            )
        found = [str(c).strip() for c in frame[rule.arg].fillna("")]
    elif rule.kind == "parent":
        found = [_relative(p, root).rpartition("/")[0] for p in paths]
    elif rule.kind == "regex":
        pattern = re.compile(rule.arg)
        matches = [pattern.search(_relative(p, root)) for p in paths]
        found = [m.group(1) or "" if m else "" for m in matches]
    else:  # dicom
        tags = rule.arg.split("+")
        found = []
        for p in paths:
            header = dicom_header(p, tags) if is_dicom(p) else {}
            found.append("+".join(header[t] for t in tags) if all(t in header for t in tags)
                         else "")  # fmt: skip
    missing = [p for p, f in zip(paths, found, strict=True) if not f]
    if len(missing) == len(paths):
        raise MedsslError(
            f"--case-by {rule}: no image of {where or root} has a case id under this rule "
            f"(e.g. {_relative(paths[0], root)}); check the rule"
        )
    warnings = []
    if missing:
        warnings.append(
            f"--case-by {rule}: {len(missing)} of {len(paths)} images have no case id under "
            f"this rule and are each their own case (e.g. {_relative(missing[0], root)})"
        )
    ids = [f or p for p, f in zip(paths, found, strict=True)]
    return ids, warnings


def _relative(path: str, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (the path itself if outside ``root``)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()
