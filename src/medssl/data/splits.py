"""Case-level splits, source-held-out shift sets and nested label fractions.

Every function here works on cases, never on images: all images of a patient or lesion
land in the same split, so no case is ever seen in training and evaluation.

Why not scikit-learn's ``StratifiedGroupKFold``: it yields k equal folds, while the
protocols need arbitrary fractions (70/10/20) and *nested* label fractions (the 10% subset
inside the 25% subset). A per-stratum shuffle with largest-remainder allocation gives both
in a few lines and is exactly reproducible from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medssl.data.manifest import Manifest
from medssl.errors import MedsslError

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


@dataclass(frozen=True)
class Splits:
    """Row indices of a manifest per split name (train, val, test and optionally shift).

    ``scheme`` says how they were made (:data:`SPLIT_SCHEMES`); ``warnings`` are problems of
    the split itself (a publisher's split that leaks patients), shown with the data's own
    warnings by every command that loads data.
    """

    indices: dict[str, np.ndarray]
    scheme: str = "canonical"
    warnings: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.indices:
            raise MedsslError(f"no split '{name}' (have: {', '.join(self.indices)})")
        return self.indices[name]

    def __contains__(self, name: str) -> bool:
        return name in self.indices

    def names(self) -> list[str]:
        return list(self.indices)


def case_strata(manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """Case code per row, and one stratum per case (its most common row stratum)."""
    codes, uniques = manifest.case_codes()
    row_strata = manifest.stratum()
    n_strata = int(row_strata.max()) + 1
    counts = np.zeros((len(uniques), n_strata), dtype=np.int64)
    np.add.at(counts, (codes, row_strata), 1)
    return codes, counts.argmax(axis=1)


def _allocate(n: int, fractions: list[float]) -> list[int]:
    """Split n items into len(fractions) parts by largest remainder."""
    raw = np.asarray(fractions) * n
    parts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - parts), kind="stable")[: n - parts.sum()]:
        parts[i] += 1
    return parts.tolist()


def split_cases(
    manifest: Manifest,
    rows: np.ndarray | None = None,
    fractions: dict[str, float] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split the given rows (default: all) by case, stratified by label.

    Within each stratum (the case's label), cases are shuffled with ``seed`` and dealt out
    in proportion to ``fractions``.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if any(f < 0 for f in fractions.values()) or not np.isclose(sum(fractions.values()), 1.0):
        raise MedsslError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    rows = np.arange(len(manifest)) if rows is None else np.asarray(rows, dtype=np.int64)
    codes, strata = case_strata(manifest)
    cases = np.unique(codes[rows])
    rng = np.random.default_rng(seed)
    assigned = np.full(strata.shape[0], -1, dtype=np.int64)
    for stratum in np.unique(strata[cases]):
        members = cases[strata[cases] == stratum]
        members = members[rng.permutation(members.size)]
        start = 0
        for split_id, size in enumerate(_allocate(members.size, list(fractions.values()))):
            assigned[members[start : start + size]] = split_id
            start += size
    row_split = assigned[codes[rows]]
    return {name: rows[row_split == i] for i, name in enumerate(fractions)}


def source_mask(manifest: Manifest, sources: tuple[str, ...] | list[str]) -> np.ndarray:
    """Rows acquired at any of ``sources``; an unknown source name is an error."""
    present = set(manifest.table["source"])
    unknown = [s for s in sources if s not in present]
    if unknown:
        raise MedsslError(
            f"{manifest.name}: unknown source(s) {', '.join(unknown)} "
            f"(have: {', '.join(sorted(present))})"
        )
    return manifest.table["source"].isin(list(sources)).to_numpy()


def canonical_splits(
    manifest: Manifest, seed: int = 0, shift_sources: list[str] | None = None
) -> Splits:
    """The canonical protocol (DESIGN.md): the rows split 70/10/20 by case (official splits
    are pooled, since they can leak patients); ``shift_sources`` are held out as the shift
    split. A dataset's default shift sources (HAM10000: rosendahl) come from its record in
    :data:`medssl.data.adapters.DATASETS`, through :class:`~medssl.data.spec.DataSpec`.
    """
    all_rows = np.arange(len(manifest))
    if shift_sources:
        shift = source_mask(manifest, shift_sources)
        # a case seen at a shift source is held out entirely, even if imaged elsewhere too
        codes, _ = manifest.case_codes()
        shift = np.isin(codes, np.unique(codes[shift]))
        parts = split_cases(manifest, all_rows[~shift], seed=seed)
        parts["shift"] = all_rows[shift]
    else:
        parts = split_cases(manifest, all_rows, seed=seed)
    return Splits(parts)


#: How splits are made: medssl's canonical re-split by case, or the publisher's own split.
SPLIT_SCHEMES = ("canonical", "official")

#: What each publisher's ``official_split`` values are, as medssl split roles. CheXpert's
#: test set is hidden, so its public ``valid`` set is the test set everyone reports on.
OFFICIAL_ROLES: dict[str, dict[str, str]] = {
    "chexpert": {"train": "train", "valid": "test"},
    "tiny-imagenet": {"train": "train", "val": "test"},  # its test labels are hidden too
}
_GENERIC_ROLES = {
    "train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
#: Share of the official training cases held out for validation when the publisher
#: defines no validation split (10/80: the canonical protocol's 70/10 train/val ratio).
OFFICIAL_VAL_FRACTION = 0.125
#: An official validation split this small makes model selection noisy (Kermany's pediatric
#: pneumonia val folder has 16 images); a warning says so.
SMALL_VAL_IMAGES = 50


def official_splits(
    manifest: Manifest, seed: int = 0, shift_sources: list[str] | None = None
) -> Splits:
    """The publisher's split (``official_split``), mapped to train / val / test.

    Without an official validation split, :data:`OFFICIAL_VAL_FRACTION` of the official
    training cases are held out for it (by case, stratified, ``seed``). Images in no
    official split are left out; ``shift_sources`` are held out as the shift split. Cases
    that the publisher puts in more than one split stay where the publisher put them: that
    is the official protocol, but a warning gives their number, since it inflates scores.
    """
    column = manifest.table["official_split"].to_numpy(dtype=str)
    if not (column != "").any():
        raise MedsslError(
            f"{manifest.name}: --split-scheme official: this dataset has no publisher split "
            "(use --split-scheme canonical)"
        )
    roles = OFFICIAL_ROLES.get(manifest.name, _GENERIC_ROLES)
    unknown = sorted({v for v in column if v and v not in roles})
    if unknown:
        raise MedsslError(
            f"{manifest.name}: --split-scheme official: official split '{unknown[0]}' is not "
            f"one of {', '.join(roles)}"
        )
    role = np.array([roles.get(v, "") for v in column])
    warnings: list[str] = []
    if (role == "").any():
        warnings.append(
            f"{manifest.name}: {int((role == '').sum())} image(s) in no official split are left out"
        )
    all_rows = np.arange(len(manifest))
    held_out = np.zeros(len(manifest), dtype=bool)
    if shift_sources:
        codes, _ = manifest.case_codes()
        shift = source_mask(manifest, shift_sources)
        held_out = np.isin(codes, np.unique(codes[shift]))
    parts = {name: all_rows[(role == name) & ~held_out] for name in ("train", "val", "test")}
    if parts["test"].size == 0 or parts["train"].size == 0:
        missing = "test" if parts["test"].size == 0 else "train"
        raise MedsslError(
            f"{manifest.name}: --split-scheme official: the publisher's split has no {missing} "
            "images here"
        )
    if parts["val"].size == 0:
        fractions = {"train": 1 - OFFICIAL_VAL_FRACTION, "val": OFFICIAL_VAL_FRACTION}
        parts.update(split_cases(manifest, parts["train"], fractions, seed=seed))
    elif parts["val"].size < SMALL_VAL_IMAGES:
        warnings.append(
            f"{manifest.name}: the official validation split has only {parts['val'].size} "
            "images: choosing the best epoch on it is noisy"
        )
    if shift_sources:
        parts["shift"] = all_rows[held_out]
    splits = Splits(parts, "official")
    shared = cases_shared_between_splits(manifest, splits)
    if shared:
        warnings.append(
            f"{manifest.name}: {shared} case(s) are in more than one official split (the "
            "publisher's split leaks patients): scores on its test split are optimistic"
        )
    return Splits(parts, "official", tuple(warnings))


def make_splits(
    manifest: Manifest,
    scheme: str = "canonical",
    seed: int = 0,
    shift_sources: list[str] | None = None,
) -> Splits:
    """The splits of ``scheme``: :func:`canonical_splits` or :func:`official_splits`; an
    unlabeled manifest is one pretraining pool (:func:`pool_splits`) whatever the scheme."""
    if not manifest.labelled:
        return pool_splits(manifest)
    if scheme == "canonical":
        return canonical_splits(manifest, seed, shift_sources)
    if scheme == "official":
        return official_splits(manifest, seed, shift_sources)
    raise MedsslError(f"--split-scheme {scheme!r} is not one of {', '.join(SPLIT_SCHEMES)}")


def pool_splits(manifest: Manifest) -> Splits:
    """Unlabeled data is not split: every image is a pretraining image ("train"). What must
    stay out of pretraining (a labelled set's evaluation cases) is removed from the pool
    before (:mod:`medssl.data.exclusion`)."""
    return Splits({"train": np.arange(len(manifest), dtype=np.int64)}, "pool")


def cases_shared_between_splits(manifest: Manifest, splits: Splits) -> int:
    """How many cases appear in more than one split (0 for a leak-free split)."""
    if not splits.indices:
        return 0
    codes, _ = manifest.case_codes()
    seen = np.zeros(codes.max() + 1, dtype=np.int64)
    for rows in splits.indices.values():
        seen[np.unique(codes[rows])] += 1
    return int((seen > 1).sum())


def official_split_overlap(manifest: Manifest) -> int:
    """Cases that the publisher's own split puts in more than one of its splits."""
    has_official = manifest.table["official_split"] != ""
    per_case = manifest.table[has_official].groupby("case_id")["official_split"].nunique()
    return int((per_case > 1).sum())


def label_fraction(
    manifest: Manifest, train_rows: np.ndarray, fraction: float, seed: int = 0
) -> np.ndarray:
    """Rows of the cases kept when only ``fraction`` of the training cases are labeled.

    Nested by construction: for one seed, each stratum's cases are put in one random order
    and a fraction keeps a prefix of it, so the 10% cases are inside the 25% cases, which
    are inside 100%. Every stratum keeps at least one case when ``fraction > 0``.
    """
    if not 0 < fraction <= 1:
        raise MedsslError(f"--label-fraction must be in (0, 1], got {fraction}")
    train_rows = np.asarray(train_rows, dtype=np.int64)
    if fraction == 1:
        return train_rows
    codes, strata = case_strata(manifest)
    cases = np.unique(codes[train_rows])
    rng = np.random.default_rng([seed, 7919])
    keep: list[np.ndarray] = []
    for stratum in np.unique(strata[cases]):
        members = cases[strata[cases] == stratum]
        members = members[rng.permutation(members.size)]
        keep.append(members[: max(1, int(round(fraction * members.size)))])
    kept = np.isin(codes[train_rows], np.concatenate(keep))
    return train_rows[kept]
