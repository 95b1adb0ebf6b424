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


def _synthetic(root: Path, **options: Any) -> Manifest:
    """The procedurally generated demo dataset; ``root`` is ignored (nothing is read).

    Options: ``synthetic_cases`` (default 600), ``image_size`` (render size, default 32)
    and ``synthetic_seed`` (default 0). The canonical shift split (the held-out site) comes
    from :class:`~medssl.data.spec.DataSpec`, which fills ``shift_sources`` for it.
    """
    from medssl.data.synthetic import make_synthetic

    try:
        n_cases = int(options.get("synthetic_cases") or 600)
        image_size = int(options.get("image_size") or 32)
        seed = int(options.get("synthetic_seed") or 0)
    except (TypeError, ValueError) as exc:
        raise MedsslError(f"synthetic dataset options: {exc}") from None
    if n_cases < 8:
        raise MedsslError(f"synthetic_cases must be at least 8, got {n_cases}")
    if image_size < 8:
        raise MedsslError(f"synthetic image_size must be at least 8, got {image_size}")
    return make_synthetic(n_cases, image_size, seed)


ADAPTERS: dict[str, Callable[..., Manifest]] = {
    "ham10000": _ham10000,
    "nih": _nih,
    "pneumonia": _pneumonia,
    "chexpert": _chexpert,
    "medmnist": _medmnist,
    "csv": _csv,
    "folder": _folder,
    "synthetic": _synthetic,
}

#: datasets that read nothing from disk, so ``--root`` is not needed
NO_ROOT = {"synthetic"}


def load_manifest(dataset: str, root: str | Path, **options: Any) -> Manifest:
    """Read ``root`` in the layout of ``dataset`` (see :data:`ADAPTERS`)."""
    if dataset not in ADAPTERS:
        raise MedsslError(f"--dataset {dataset!r} is not one of {', '.join(ADAPTERS)}")
    return ADAPTERS[dataset](Path(root).expanduser(), **options)
