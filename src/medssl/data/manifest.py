"""One table that describes any dataset.

A :class:`Manifest` row is one image. Every adapter (HAM10000, NIH, CheXpert, ...) produces
the same shape, so splits, samplers, the image cache and training never look at a
publisher's layout again.

Columns of ``table``:

- ``image``: where the pixels are. A file path, or ``"array:<i>"`` when the adapter holds
  decoded pixels in :attr:`Manifest.pixels` (MedMNIST ``.npz``).
- ``case_id``: the patient or lesion; the unit of splitting and of MICLe bags.
- ``source``: the site or acquisition device (for source-held-out shift tests).
- ``view``: optional acquisition view (PA/AP, ...), empty string when unknown.
- ``official_split``: the publisher's split when there is one (train/test/valid), else "".

Optional metadata columns (:data:`METADATA`), kept by adapters whose publishers give them,
feed the subgroup metrics of ``medssl evaluate`` (:mod:`medssl.subgroups`): ``sex``,
``age`` (years, as published) and ``localization`` (body site).

Labels live beside the table in :attr:`Manifest.targets` so that the table stays light:
``(N,)`` int64 class indices for ``multiclass``, ``(N, K)`` float32 multi-hot with NaN for
uncertain or missing findings for ``multilabel``. An unlabeled manifest (pretraining data:
the ``images`` dataset, or any dataset read with ``unlabeled``) has no class names and
every target is :data:`NO_LABEL`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from medssl.errors import MedsslError

Task = Literal["multiclass", "multilabel"]
COLUMNS = ("image", "case_id", "source", "view", "official_split")
METADATA = ("sex", "age", "localization")
NO_LABEL = -1  #: the target of every row of an unlabeled manifest


@dataclass
class Manifest:
    """Images with labels, cases and sources, plus the ordered class or finding names."""

    name: str
    table: pd.DataFrame
    targets: np.ndarray
    class_names: list[str]
    task: Task
    pixels: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    #: images dropped as unreadable (``--skip-unreadable``) before this manifest was made
    unreadable_dropped: int = 0
    #: what a leakage exclusion left out of this pool (:mod:`medssl.data.exclusion`)
    excluded: dict | None = None

    def __post_init__(self) -> None:
        missing = [c for c in COLUMNS if c not in self.table.columns]
        if missing:
            raise ValueError(f"manifest table lacks columns {missing}")
        if len(self.table) == 0:
            raise MedsslError(f"{self.name}: the dataset has no images")
        if len(self.targets) != len(self.table):
            raise ValueError("targets and table differ in length")
        self.table = self.table.reset_index(drop=True)
        for col in ("case_id", "source", "view", "official_split"):
            self.table[col] = self.table[col].fillna("").astype(str)
        for col in METADATA:
            if col in self.table.columns:
                self.table[col] = self.table[col].fillna("").astype(str)
        if not self.class_names:  # unlabeled: pretraining data
            self.targets = np.full(len(self.table), NO_LABEL, dtype=np.int64)
        elif self.task == "multiclass":
            self.targets = np.asarray(self.targets, dtype=np.int64)
            bad = np.flatnonzero((self.targets < 0) | (self.targets >= len(self.class_names)))
            if bad.size:
                row = int(bad[0])
                raise MedsslError(
                    f"{self.name}: label index {int(self.targets[row])} of image "
                    f"{self.table.at[row, 'image']} is outside the {len(self.class_names)} classes"
                )
        else:
            self.targets = np.asarray(self.targets, dtype=np.float32)
            if self.targets.ndim != 2 or self.targets.shape[1] != len(self.class_names):
                raise ValueError("multilabel targets must be (N, number of findings)")

    def __len__(self) -> int:
        return len(self.table)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)

    def without_labels(self) -> Manifest:
        """The same images, cases and sources with no labels (a pretraining pool)."""
        return Manifest(
            name=self.name,
            table=self.table.copy(),
            targets=np.full(len(self), NO_LABEL, dtype=np.int64),
            class_names=[],
            task="multiclass",
            pixels=self.pixels,
            warnings=list(self.warnings),
            unreadable_dropped=self.unreadable_dropped,
        )

    def require_labels(self, what: str) -> None:
        """A one-line error when ``what`` (fine-tuning, evaluation, k-NN) meets unlabeled data."""
        if not self.labelled:
            raise MedsslError(
                f"{self.name}: the data has no labels ({what} needs them); unlabeled images "
                "serve pretraining only"
            )

    def subset(self, indices: np.ndarray | list[int]) -> Manifest:
        """A manifest of the given rows, in that order (pixels follow when present)."""
        idx = np.asarray(indices, dtype=np.int64)
        table = self.table.iloc[idx].reset_index(drop=True)
        pixels = None
        if self.pixels is not None:
            pos = table["image"].str.removeprefix("array:").astype(np.int64).to_numpy()
            pixels = self.pixels[pos]
            table["image"] = [f"array:{i}" for i in range(len(table))]
        return Manifest(
            name=self.name,
            table=table,
            targets=self.targets[idx],
            class_names=list(self.class_names),
            task=self.task,
            pixels=pixels,
            warnings=list(self.warnings),
            unreadable_dropped=self.unreadable_dropped,
            excluded=self.excluded,
        )

    def case_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Integer code of each row's case, and the case ids in code order."""
        codes, uniques = pd.factorize(self.table["case_id"], sort=True)
        return codes.astype(np.int64), np.asarray(uniques)

    def class_counts(self, rows: np.ndarray | None = None) -> dict[str, int]:
        """Images per class (multiclass) or positive images per finding (multilabel), of
        every row or of ``rows``."""
        targets = self.targets if rows is None else self.targets[rows]
        if not self.labelled:
            return {}
        if self.task == "multiclass":
            counts = np.bincount(targets, minlength=self.num_classes)
        else:
            counts = np.nansum(targets == 1, axis=0)
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    def stratum(self) -> np.ndarray:
        """A label per row for stratified splitting.

        Multiclass: the class. Multilabel: the rarest positive finding of the row (or
        "none"), which keeps rare findings spread over the splits.
        """
        if not self.labelled:
            return np.zeros(len(self), dtype=np.int64)
        if self.task == "multiclass":
            return self.targets.copy()
        positive = self.targets == 1
        prevalence = positive.sum(axis=0)
        order = np.argsort(prevalence, kind="stable")
        strata = np.full(len(self), self.num_classes, dtype=np.int64)
        for k in order[::-1]:
            strata[positive[:, k]] = k
        return strata

    def summary(self) -> dict:
        """Counts that a user checks first: images, cases, bags, classes, sources."""
        per_case = Counter(self.table["case_id"])
        sizes = np.fromiter(per_case.values(), dtype=np.int64)
        out = {
            "images": len(self),
            "cases": len(per_case),
            "multi_image_cases": int((sizes >= 2).sum()),
            "images_per_case_median": float(np.median(sizes)),
            "images_per_case_max": int(sizes.max()),
            "classes": self.class_counts(),
            "sources": {k: int(v) for k, v in self.table["source"].value_counts().items()},
        }
        if self.excluded:
            out["excluded"] = dict(self.excluded)
        return out
