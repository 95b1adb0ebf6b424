"""Metrics per subgroup of the evaluated images: sex, age band, body site, source, view.

The groups come from the manifest's metadata (:data:`medssl.data.manifest.METADATA` plus
``source`` and ``view``), where the dataset carries it: HAM10000 sex, age, localization and
source; NIH sex, age and view; CheXpert sex, age and view. An attribute enters the analysis
when the evaluated images hold at least two of its values. Every group is reported, however
small: a group with fewer than :data:`SMALL_SUBGROUP_CASES` cases is flagged ``small`` (its
interval is wide and its point estimate unstable), never dropped, and a metric that cannot
be computed in a group (one class only) is None with a note saying why.

Intervals are the case-level bootstrap of :func:`medssl.metrics.evaluate_predictions` on
the group's own rows. Exact ages are never reported, only bands.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medssl.metrics import evaluate_predictions

#: (lower bound, upper bound, label) of the age bands, in years
AGE_BANDS: list[tuple[float, float, str]] = [
    (0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"),
    (80, math.inf, "80+"),
]  # fmt: skip
#: groups with fewer cases than this are flagged ``small``
SMALL_SUBGROUP_CASES = 30
UNKNOWN = "unknown"
#: attributes in report order
ATTRIBUTES = ("sex", "age_band", "localization", "source", "view")
#: what a group reports (a subset of evaluate_predictions' output)
_KEYS = (
    "n", "n_cases", "accuracy", "balanced_accuracy", "auc_macro", "auc_mean_selected", "ece",
    "brier", "sensitivity", "specificity", "ci",
)  # fmt: skip
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YyMmDd]?)\s*$")
_SEX = {"m": "male", "male": "male", "f": "female", "female": "female"}


def age_band(value: str) -> str:
    """The band of an age as published: ``58``, ``58.0``, NIH's older ``058Y`` (also months
    ``M`` and days ``D``); anything else is ``unknown``."""
    match = _AGE.match(str(value))
    if not match:
        return UNKNOWN
    years = float(match.group(1)) / {"": 1, "y": 1, "m": 12, "d": 365.25}[match.group(2).lower()]
    return next(label for low, high, label in AGE_BANDS if low <= years < high)


def sex_group(value: str) -> str:
    """``female``, ``male`` or ``unknown`` from M/F, male/female in any case."""
    return _SEX.get(str(value).strip().lower(), UNKNOWN)


def subgroup_columns(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The group of every row per attribute that has at least two values in ``table``."""
    out: dict[str, np.ndarray] = {}
    for attribute in ATTRIBUTES:
        column = "age" if attribute == "age_band" else attribute
        if column not in table.columns:
            continue
        raw = table[column].astype(str)
        if attribute == "age_band":
            values = raw.map(age_band)
        elif attribute == "sex":
            values = raw.map(sex_group)
        else:
            values = raw.str.strip().replace("", UNKNOWN)
        if values.nunique() >= 2:
            out[attribute] = values.to_numpy(dtype=str)
    return out


def _sort_key(attribute: str, value: str) -> tuple[int, Any]:
    if attribute == "age_band":
        labels = [label for _, _, label in AGE_BANDS]
        return (0, labels.index(value)) if value in labels else (1, value)
    return (1 if value == UNKNOWN else 0, value)


def _notes(group: dict[str, Any], task: str, min_cases: int) -> list[str]:
    notes = []
    if group["n_cases"] < min_cases:
        notes.append(f"fewer than {min_cases} cases: a wide interval, an unstable estimate")
    headline = "auc_macro" if task == "multiclass" else "auc_mean_selected"
    if group.get(headline) is None and group.get("auc_macro") is None:
        notes.append("no AUC: the group lacks positives or negatives")
    return notes


def subgroup_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    task: str,
    class_names: Sequence[str],
    case_ids: np.ndarray,
    columns: dict[str, np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    mean_over: Sequence[str] | None = None,
    positive_class: str | None = None,
    threshold: float | None = None,
    min_cases: int = SMALL_SUBGROUP_CASES,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{attribute: {group: metrics}}`` for the rows of each group, all groups kept.

    Each group holds the point metrics and case-level intervals of
    :func:`~medssl.metrics.evaluate_predictions` (sensitivity and specificity at
    ``threshold`` when given), its class counts, ``small`` and ``notes``.
    """
    targets = np.asarray(targets)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for attribute, values in columns.items():
        groups: dict[str, dict[str, Any]] = {}
        for value in sorted(set(values), key=lambda v: _sort_key(attribute, v)):
            rows = np.flatnonzero(values == value)
            full = evaluate_predictions(
                probs[rows], targets[rows], task, class_names, case_ids[rows], n_boot=n_boot,
                seed=seed, mean_over=mean_over, positive_class=positive_class,
                threshold=threshold,
            )  # fmt: skip
            group = {k: full[k] for k in _KEYS if k in full}
            if task == "multiclass":
                counts = np.bincount(targets[rows].astype(np.int64), minlength=len(class_names))
            else:
                counts = np.nansum(targets[rows] == 1, axis=0)
            group["class_counts"] = {
                str(n): int(c) for n, c in zip(class_names, counts, strict=True)
            }
            notes = _notes(group, task, min_cases)
            group["small"] = group["n_cases"] < min_cases
            group["notes"] = notes
            groups[value] = group
        out[attribute] = groups
    return out
