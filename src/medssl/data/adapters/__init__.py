"""Adapters: one function per public dataset layout, each returning a :class:`Manifest`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medssl.data.manifest import Manifest
from medssl.errors import MedsslError


def _ham10000(root: Path, **options: Any) -> Manifest:
    from medssl.data.adapters.ham10000 import load_ham10000

    return load_ham10000(root)


def _nih(root: Path, **options: Any) -> Manifest:
    from medssl.data.adapters.nih import load_nih

    return load_nih(root)


def _pneumonia(root: Path, **options: Any) -> Manifest:
    from medssl.data.adapters.pneumonia import load_pneumonia

    return load_pneumonia(root, subtypes=bool(options.get("subtypes", False)))


def _chexpert(root: Path, **options: Any) -> Manifest:
    from medssl.data.adapters.chexpert import load_chexpert

    return load_chexpert(
        root,
        findings=options.get("findings"),
        uncertain=options.get("uncertain") or "ignore",
    )


def _medmnist(root: Path, **options: Any) -> Manifest:
    from medssl.data.adapters.medmnist import load_medmnist

    return load_medmnist(root)


def _csv(root: Path, **options: Any) -> Manifest:
    from medssl.data.adapters.generic import load_csv

    return load_csv(root, **{k: v for k, v in options.items() if k.startswith("csv_")})


def _folder(root: Path, **options: Any) -> Manifest:
    from medssl.data.adapters.generic import load_folder

    return load_folder(root)


ADAPTERS: dict[str, Callable[..., Manifest]] = {
    "ham10000": _ham10000,
    "nih": _nih,
    "pneumonia": _pneumonia,
    "chexpert": _chexpert,
    "medmnist": _medmnist,
    "csv": _csv,
    "folder": _folder,
}


def load_manifest(dataset: str, root: str | Path, **options: Any) -> Manifest:
    """Read ``root`` in the layout of ``dataset`` (see :data:`ADAPTERS`)."""
    if dataset not in ADAPTERS:
        raise MedsslError(f"--dataset {dataset!r} is not one of {', '.join(ADAPTERS)}")
    return ADAPTERS[dataset](Path(root).expanduser(), **options)
