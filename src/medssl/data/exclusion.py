"""Leakage exclusion: a labelled set's evaluation cases never enter a pretraining pool.

A pool of unlabeled images is often drawn from the population a labelled set comes from
(the same hospital's archive; HAM10000's own images without labels). Pretraining on the
labelled set's validation or test images would leak them into every model built on it. An
exclusion names the labelled data (a data spec) and its splits; every pool image that is one
of those images -- the same file by path or by content (SHA-256), or with ``by: case`` also
any image of the same case id -- is removed, and with it every other image of its pool case,
so no patient is half in. The run's config records the exclusion; the counts are printed and
stored with the run's metrics.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from medssl.data.manifest import Manifest
from medssl.errors import MedsslError

MATCHES = ("file", "case")
SPLIT_NAMES = ("train", "val", "test", "shift")
DEFAULT_SPLITS = ["val", "test", "shift"]


def exclusion_from_text(text: str, base: Path, option: str = "--exclude") -> dict[str, Any]:
    """``PATH[:SPLITS[:BY]]`` as an exclusion mapping: PATH is a run directory (its data) or a
    YAML file holding a data spec (``dataset``, ``root``, ...) or a ``data:`` block (a sweep
    protocol); SPLITS are comma-separated (default val,test,shift); BY is file or case."""
    path_text, splits, by = text, "", "file"
    if not (base / Path(text).expanduser()).exists() and ":" in text:
        head, _, tail = text.rpartition(":")
        if tail in MATCHES and ":" in head:
            head, _, splits = head.rpartition(":")
            by = tail
        elif tail in MATCHES:
            by = tail
        else:
            splits = tail
        path_text = head
    path = (base / Path(path_text).expanduser()).resolve()
    from medssl.data.spec import spec_at

    data = spec_at(path, option)
    out: dict[str, Any] = {"data": data, "by": by}
    out["splits"] = [s.strip() for s in splits.split(",") if s.strip()] or list(DEFAULT_SPLITS)
    return checked_exclusion(out, option)


def checked_exclusion(value: Any, option: str = "exclude") -> dict[str, Any]:
    """An exclusion mapping (``data``, ``splits``, ``by``) checked like user input."""
    from medssl.data.spec import checked_data

    if not isinstance(value, dict) or "data" not in value:
        raise MedsslError(f"{option}: expected PATH[:SPLITS[:BY]] or a mapping with data, splits")
    unknown = sorted(set(value) - {"data", "splits", "by"})
    if unknown:
        raise MedsslError(f"{option}: unknown key(s) {', '.join(unknown)} (data, splits, by)")
    splits = value.get("splits", DEFAULT_SPLITS)
    splits = [s.strip() for s in splits.split(",")] if isinstance(splits, str) else list(splits)
    bad = [s for s in splits if s not in SPLIT_NAMES]
    if bad or not splits:
        names = ", ".join(SPLIT_NAMES)
        raise MedsslError(f"{option}: splits {bad or splits} (each one of {names})")
    by = value.get("by", "file")
    if by not in MATCHES:
        raise MedsslError(f"{option}: by {by!r} is not one of {', '.join(MATCHES)}")
    data = value["data"]
    if isinstance(data, dict) and data.get("exclude"):
        raise MedsslError(f"{option}: the excluded data cannot have an exclusion of its own")
    return {"data": checked_data(data), "splits": splits, "by": by}


def _digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _file_size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return -1  # a missing image: the image cache reports it


def _pixel_digest(manifest: Manifest, image: str) -> str:
    assert manifest.pixels is not None
    row = int(image.removeprefix("array:"))
    return hashlib.sha256(np.ascontiguousarray(manifest.pixels[row]).tobytes()).hexdigest()


def matching_rows(pool: Manifest, named: Manifest) -> np.ndarray:
    """Pool rows holding one of ``named``'s images: the same path, or the same bytes.

    Files are hashed only where a size matches one of the named files', so a pool of other
    images costs a ``stat`` per file."""
    pool_images = pool.table["image"].tolist()
    named_images = named.table["image"].tolist()
    named_paths = {str(Path(p).resolve()) for p in named_images if not p.startswith("array:")}
    named_sizes = {_file_size(p) for p in named_images if not p.startswith("array:")}
    named_digests: set[str] | None = None
    hit = np.zeros(len(pool_images), dtype=bool)
    for row, image in enumerate(pool_images):
        if image.startswith("array:"):
            key = _pixel_digest(pool, image)
        elif str(Path(image).resolve()) in named_paths:
            hit[row] = True
            continue
        elif _file_size(image) in named_sizes:
            key = _digest(image)
        else:
            continue
        if named_digests is None:
            named_digests = {
                _pixel_digest(named, p) if p.startswith("array:") else _digest(p)
                for p in named_images
                if p.startswith("array:") or _file_size(p) >= 0
            }
        hit[row] = key in named_digests
    return hit


def exclude_from_pool(pool: Manifest, exclusion: dict[str, Any]) -> Manifest:
    """``pool`` without the images of ``exclusion``'s data and splits and without every
    other image of their pool cases; :attr:`Manifest.excluded` says how many went."""
    from medssl.data.spec import DataSpec

    if pool.labelled:
        raise MedsslError(
            "exclude applies to unlabeled pretraining data (dataset images, or unlabeled: "
            "true): a labelled dataset's own splits already keep its evaluation cases apart"
        )
    labelled, splits = DataSpec.from_dict(exclusion["data"]).load()
    present = [s for s in exclusion["splits"] if s in splits]
    rows = np.concatenate([splits[s] for s in present]) if present else np.array([], int)
    named = labelled.subset(rows) if rows.size else None
    hit = matching_rows(pool, named) if named is not None else np.zeros(len(pool), bool)
    if exclusion["by"] == "case" and named is not None:
        hit |= pool.table["case_id"].isin(set(named.table["case_id"])).to_numpy()
    codes, _ = pool.case_codes()
    dropped_cases = np.unique(codes[hit])
    drop = np.isin(codes, dropped_cases)
    if drop.all():
        raise MedsslError(
            f"exclude: every one of the pool's {len(pool)} images is in the excluded splits "
            f"({', '.join(present)}) of {exclusion['data'].get('dataset')}: nothing is left"
        )
    kept = pool.subset(np.flatnonzero(~drop)) if drop.any() else pool
    kept.excluded = {
        "dataset": exclusion["data"].get("dataset"),
        "splits": present,
        "by": exclusion["by"],
        "named_images": int(rows.size),
        "matched_images": int(hit.sum()),
        "images": int(drop.sum()),
        "cases": int(dropped_cases.size),
    }
    return kept


def describe_exclusion(manifest: Manifest) -> str:
    """``"; excluded ..."`` for a pool an exclusion reduced, else ""."""
    e = manifest.excluded
    if not e:
        return ""
    return (
        f"; excluded {e['images']:,} images of {e['cases']:,} cases matching the "
        f"{'/'.join(e['splits'])} splits of {e['dataset']} (by {e['by']})"
    )
