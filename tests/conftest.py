"""Shared fixtures: the real data beside the project, and small synthetic manifests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medssl.data.manifest import Manifest

SHARED_DATA = Path(
    os.environ.get("MEDSSL_SHARED_DATA", Path(__file__).parents[1] / ".." / "shared" / "data")
).resolve()


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (CI always has it beside the project)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session decodes into its own cache, never the user's."""
    monkeypatch.setenv("MEDSSL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def make_manifest(
    case_sizes: list[int],
    labels: list[int] | None = None,
    n_classes: int = 3,
    sources: list[str] | None = None,
) -> Manifest:
    """A multiclass manifest whose case c has case_sizes[c] images (no files behind it)."""
    rows = []
    for case, size in enumerate(case_sizes):
        for _ in range(size):
            rows.append(
                {
                    "image": f"array:{len(rows)}",
                    "case_id": f"case{case}",
                    "source": sources[case] if sources else "site",
                    "view": "",
                    "official_split": "",
                }
            )
    case_labels = labels if labels is not None else [c % n_classes for c in range(len(case_sizes))]
    targets = np.repeat(np.asarray(case_labels), case_sizes)
    pixels = np.zeros((len(rows), 8, 8, 3), dtype=np.uint8)
    return Manifest(
        "synthetic",
        pd.DataFrame(rows),
        targets,
        [f"c{i}" for i in range(n_classes)],
        "multiclass",
        pixels=pixels,
    )
