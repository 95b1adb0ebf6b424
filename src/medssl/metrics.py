"""Evaluation metrics on plain numpy arrays: point estimates and case-level bootstrap CIs.

Nothing here knows about models. Callers pass predicted probabilities and ground truth:

* multiclass (e.g. dermatology conditions): ``probs`` (N, C), integer ``labels`` (N,);
* multilabel (e.g. chest X-ray findings): ``probs`` (N, K), float ``targets`` (N, K) with
  1 = positive, 0 = negative and NaN = missing/uncertain (excluded for that finding only).

Confidence intervals resample *cases* (patients), not images: a patient usually contributes
several images whose errors are correlated, so an image-level bootstrap would give intervals
that are too narrow (Azizi et al. 2021 report case-level intervals for the same reason).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    roc_auc_score,
)

from medssl.errors import MedsslError
from medssl.options import parse_yaml, read_text

__all__ = [
    "CHEXPERT_FIVE",
    "bootstrap_ci",
    "ECE_BINS",
    "bootstrap_cis",
    "case_level",
    "ClassMap",
    "class_map_from_dict",
    "evaluate_predictions",
    "expected_calibration_error",
    "load_class_map",
    "load_class_mapping",
    "map_classes",
    "merge_model_classes",
    "multiclass_calibration",
    "multiclass_metrics",
    "multilabel_calibration",
    "multilabel_metrics",
    "positive_rows",
    "reliability_points",
    "sensitivity_specificity",
    "threshold_for_sensitivity",
]

#: The five CheXpert competition findings, with NIH ChestX-ray14-style names. Their mean AUC
#: is the headline chest X-ray number in the paper.
CHEXPERT_FIVE: list[str] = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion"]


# --------------------------------------------------------------------------- validation


def _check_names(names: Sequence[str], expected: int, what: str) -> list[str]:
    names = [str(n) for n in names]
    if len(names) != expected:
        raise MedsslError(
            f"{len(names)} {what} names given but the predictions have {expected} columns"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MedsslError(f"duplicate {what} names: {', '.join(dup)}")
    return names


#: how far past [0, 1] a probability may lie from float rounding alone (then it is clipped)
PROB_TOLERANCE = 1e-4


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise MedsslError(
            f"probabilities must be a 2-D array (rows, classes), got shape {probs.shape}"
        )
    if probs.shape[0] == 0:
        raise MedsslError("no predictions to evaluate (0 rows)")
    if not np.all(np.isfinite(probs)):
        raise MedsslError("probabilities contain NaN or infinite values")
    low, high = float(probs.min()), float(probs.max())
    if low < -PROB_TOLERANCE or high > 1 + PROB_TOLERANCE:
        raise MedsslError(
            f"probabilities must lie in [0, 1], got values from {low:.6g} to {high:.6g} "
            "(scores or logits instead of probabilities?)"
        )
    # float32 rounding (a softmax, or model classes merged by summing) can pass 1 by ~1e-7,
    # which scikit-learn's Brier score refuses
    return np.clip(probs, 0.0, 1.0)


def _check_labels(labels: np.ndarray, n_rows: int, n_classes: int) -> np.ndarray:
    raw = np.asarray(labels)
    if raw.ndim != 1 or raw.shape[0] != n_rows:
        raise MedsslError(f"labels must have shape ({n_rows},), got {raw.shape}")
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise MedsslError("labels must be integer class indices")
    elif raw.dtype.kind not in "iub":
        raise MedsslError(f"labels must be integer class indices, got dtype {raw.dtype}")
    out = raw.astype(np.int64)
    bad = out[(out < 0) | (out >= n_classes)]
    if bad.size:
        raise MedsslError(
            f"label {int(bad[0])} is outside the {n_classes} classes (valid: 0..{n_classes - 1})"
        )
    return out


def _check_targets(targets: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    targets = np.asarray(targets, dtype=np.float64)
    if targets.shape != shape:
        raise MedsslError(
            f"targets must have the same shape as the probabilities {shape}, got {targets.shape}"
        )
    known = targets[~np.isnan(targets)]
    bad = known[(known != 0.0) & (known != 1.0)]
    if bad.size:
        # e.g. CheXpert's -1 "uncertain": it must be turned into NaN (or 0/1) upstream,
        # silently treating it as negative would bias every AUC.
        raise MedsslError(f"targets must be 0, 1 or NaN (missing/uncertain), found {bad[0]:g}")
    return targets


def _resolve_mean_over(mean_over: Sequence[str] | None, names: list[str]) -> list[str] | None:
    """The findings to average for ``auc_mean_selected`` (None: not applicable).

    Without an explicit list the CheXpert five are used when the dataset has them all, so a
    non-chest multilabel dataset does not fail just because it lacks chest findings.
    """
    if mean_over is None:
        return list(CHEXPERT_FIVE) if all(n in names for n in CHEXPERT_FIVE) else None
    if isinstance(mean_over, str):
        mean_over = [mean_over]
    selected = list(dict.fromkeys(str(n) for n in mean_over))
    if not selected:
        raise MedsslError("mean_over is empty: name at least one finding")
    unknown = [n for n in selected if n not in names]
    if unknown:
        raise MedsslError(
            f"mean_over names unknown finding(s) {', '.join(unknown)}; "
            f"available: {', '.join(names)}"
        )
    return selected


# --------------------------------------------------------------------------- point metrics


def multiclass_metrics(
    probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Top-1 accuracy, balanced accuracy and one-vs-rest AUCs of a multiclass classifier.

    The AUC of class ``c`` is the binary ROC AUC of ``probs[:, c]`` for ``labels == c``;
    computing it per class (instead of sklearn's multiclass mode) keeps it defined when some
    classes are absent from ``labels`` and does not require rows to sum to 1. Classes that
    are absent (or are the only class present) get ``None`` and are listed in
    ``auc_skipped_classes``; ``auc_macro`` is the mean over the others (None if none).
    Balanced accuracy is the mean recall over the classes present in ``labels``.
    """
    probs = _check_probs(probs)
    n, c = probs.shape
    names = _check_names(class_names, c, "class")
    labels = _check_labels(labels, n, c)

    preds = probs.argmax(axis=1)
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected when a class is missing.
        warnings.simplefilter("ignore")
        bal = float(balanced_accuracy_score(labels, preds))

    per_class: dict[str, float | None] = {}
    skipped: list[str] = []
    for k, name in enumerate(names):
        y = labels == k
        if y.all() or not y.any():
            per_class[name] = None
            skipped.append(name)
        else:
            per_class[name] = float(roc_auc_score(y, probs[:, k]))
    values = [v for v in per_class.values() if v is not None]
    return {
        "n": int(n),
        "accuracy": float(accuracy_score(labels, preds)),
        "balanced_accuracy": bal,
        "auc_macro": float(np.mean(values)) if values else None,
        "auc_per_class": per_class,
        "auc_skipped_classes": skipped,
    }


def multilabel_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    finding_names: Sequence[str],
    mean_over: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per-finding ROC AUCs of a multilabel classifier, ignoring NaN targets per finding.

    A finding needs at least one positive and one negative among its non-NaN rows, else its
    AUC is None and it is listed in ``auc_skipped_findings``. ``auc_macro`` averages all
    evaluable findings. ``auc_mean_selected`` averages the findings in ``mean_over``
    (default :data:`CHEXPERT_FIVE` when all five exist, else not computed); it is None when
    any selected finding is not evaluable, because a mean over a silently smaller set is
    not comparable with published numbers.
    """
    probs = _check_probs(probs)
    n, k = probs.shape
    names = _check_names(finding_names, k, "finding")
    targets = _check_targets(targets, (n, k))
    selected = _resolve_mean_over(mean_over, names)

    per_finding: dict[str, float | None] = {}
    n_labelled: dict[str, int] = {}
    skipped: list[str] = []
    for j, name in enumerate(names):
        known = ~np.isnan(targets[:, j])
        y = targets[known, j] == 1.0
        n_labelled[name] = int(known.sum())
        if y.all() or not y.any():
            per_finding[name] = None
            skipped.append(name)
        else:
            per_finding[name] = float(roc_auc_score(y, probs[known, j]))
    values = [v for v in per_finding.values() if v is not None]
    mean_sel: float | None = None
    if selected is not None and all(per_finding[s] is not None for s in selected):
        mean_sel = float(np.mean([per_finding[s] for s in selected]))
    return {
        "n": int(n),
        "auc_macro": float(np.mean(values)) if values else None,
        "auc_mean_selected": mean_sel,
        "mean_over": selected,
        "auc_per_finding": per_finding,
        "auc_skipped_findings": skipped,
        "n_labelled_per_finding": n_labelled,
    }


# --------------------------------------------------------------------------- calibration

#: Equal-width confidence bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15


def _bin_ids(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each confidence among ``n_bins`` equal-width bins ``(lo, hi]`` (0 in the first),
    exactly as ``sklearn.calibration.calibration_curve(strategy="uniform")`` bins them."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], np.asarray(confidence, dtype=np.float64))


def expected_calibration_error(
    confidence: np.ndarray,
    outcome: np.ndarray,
    n_bins: int = ECE_BINS,
    sample_weight: np.ndarray | None = None,
) -> float | None:
    """ECE = sum over bins of (share of rows in the bin) x |observed rate - mean confidence|.

    ``outcome`` is 1 where the predicted event happened (the top class was right, the
    finding is present). scikit-learn has no ECE: ``calibration_curve`` returns the per-bin
    means but not the bin sizes that weight them, so it is computed here, on the bins
    ``calibration_curve`` uses, so that a reliability diagram and its ECE describe the same
    bins. Per bin, share x |rate - confidence| = |sum of (outcome - confidence)| / total
    weight, which is what the code sums. None without rows.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    gap = np.asarray(outcome, dtype=np.float64) - conf
    w = np.ones_like(conf) if sample_weight is None else np.asarray(sample_weight, np.float64)
    total = float(w.sum())
    if conf.size == 0 or total <= 0:
        return None
    per_bin = np.bincount(_bin_ids(conf, n_bins), weights=w * gap, minlength=n_bins)
    return float(np.abs(per_bin).sum() / total)


def _brier(labels: np.ndarray, probs: np.ndarray) -> float:
    """scikit-learn's (multiclass) Brier score: mean over rows of the summed squared error,
    halved for two classes so that it is the usual binary Brier score."""
    with warnings.catch_warnings():
        # merged model classes leave rows summing to less than 1: still a valid score
        warnings.simplefilter("ignore")
        return float(brier_score_loss(labels, probs, labels=list(range(probs.shape[1]))))


def multiclass_calibration(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Top-label ECE (confidence = the largest probability, outcome = that class is right;
    :data:`ECE_BINS` bins) and the Brier score (scikit-learn; 0 to 2, binary 0 to 1)."""
    probs = _check_probs(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    correct = probs.argmax(axis=1) == labels
    brier = _brier(labels, probs) if probs.shape[1] >= 2 else None
    return {"ece": expected_calibration_error(probs.max(axis=1), correct), "brier": brier}


def multilabel_calibration(
    probs: np.ndarray, targets: np.ndarray, finding_names: Sequence[str]
) -> dict[str, Any]:
    """Per-finding ECE and Brier score of each finding's probability over its known rows,
    and their means over the findings with known rows (``ece``, ``brier``)."""
    probs = _check_probs(probs)
    names = _check_names(finding_names, probs.shape[1], "finding")
    targets = _check_targets(targets, probs.shape)
    ece: dict[str, float | None] = {}
    brier: dict[str, float | None] = {}
    for j, name in enumerate(names):
        known = ~np.isnan(targets[:, j])
        y, p = targets[known, j], probs[known, j]
        ece[name] = expected_calibration_error(p, y)
        brier[name] = float(brier_score_loss(y, p, pos_label=1.0)) if known.any() else None
    mean = {
        key: float(np.mean(vals)) if (vals := [v for v in d.values() if v is not None]) else None
        for key, d in (("ece", ece), ("brier", brier))
    }
    return {**mean, "ece_per_finding": ece, "brier_per_finding": brier}


def reliability_points(
    probs: np.ndarray, targets: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observed rate, mean confidence, rows) per non-empty bin, for a reliability diagram.

    Multiclass (``targets`` (N,)): top-label confidence against top-label accuracy.
    Multilabel (``targets`` (N, K)): every known (row, finding) pooled. The rates come from
    scikit-learn's ``calibration_curve``; the row counts (for marker sizes) from the same bins.
    """
    from sklearn.calibration import calibration_curve

    probs = _check_probs(probs)
    targets = np.asarray(targets)
    if targets.ndim == 1:
        labels = _check_labels(targets, probs.shape[0], probs.shape[1])
        conf, outcome = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.int64)
    else:
        t = _check_targets(targets, probs.shape)
        known = ~np.isnan(t)
        conf, outcome = probs[known], t[known].astype(np.int64)
    if conf.size == 0:
        raise MedsslError("no known targets: no reliability diagram")
    conf = np.clip(conf, 0.0, 1.0)
    rate, mean_conf = calibration_curve(outcome, conf, n_bins=n_bins, strategy="uniform",
                                        pos_label=1)  # fmt: skip
    counts = np.bincount(_bin_ids(conf, n_bins), minlength=n_bins)
    return rate, mean_conf, counts[counts > 0]


# ------------------------------------------------------------------ operating point


def threshold_for_sensitivity(scores: np.ndarray, positive: np.ndarray, target: float) -> float:
    """The largest threshold ``t`` at which "positive if score >= t" reaches ``target``
    sensitivity on these rows: the ceil(target x positives)-th largest positive score.

    Computed directly rather than read off ``sklearn.metrics.roc_curve`` because it needs
    positives only (a validation split may lack negatives) and is exact at ties.
    """
    if not 0.0 < float(target) <= 1.0:
        raise MedsslError(f"--target-sensitivity must be in (0, 1], got {target}")
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(positive, bool)])[::-1]
    if pos.size == 0:
        raise MedsslError("no positive case to set the operating point on")
    k = max(1, math.ceil(float(target) * pos.size - 1e-9))
    return float(pos[k - 1])


def sensitivity_specificity(
    scores: np.ndarray,
    positive: np.ndarray,
    negative: np.ndarray,
    threshold: float,
    sample_weight: np.ndarray | None = None,
) -> dict[str, float | None]:
    """Sensitivity and specificity of "positive if score >= threshold" (None where the rows
    hold no positive / no negative). Rows neither positive nor negative do not count."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.ones_like(s) if sample_weight is None else np.asarray(sample_weight, np.float64)
    called = s >= threshold
    pos, neg = np.asarray(positive, bool), np.asarray(negative, bool)
    wp, wn = float(w[pos].sum()), float(w[neg].sum())
    return {
        "sensitivity": float(w[pos & called].sum() / wp) if wp > 0 else None,
        "specificity": float(w[neg & ~called].sum() / wn) if wn > 0 else None,
    }


def positive_rows(targets: np.ndarray, task: str, column: int) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) masks of one class (one-vs-rest) or finding (NaN: neither)."""
    t = np.asarray(targets)
    if task == "multiclass":
        pos = t.astype(np.int64) == column
        return pos, ~pos
    col = t[:, column].astype(np.float64)
    return col == 1.0, col == 0.0


# --------------------------------------------------------------------------- cases


def case_level(
    probs: np.ndarray, targets: np.ndarray, case_ids: np.ndarray, task: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One prediction per case: the mean of its images' probabilities.

    Returns ``(probs, targets, case ids, conflicting)``, cases in sorted id order. A case
    keeps its images' label when they agree. Multiclass cases whose images disagree are
    left out; multilabel findings on which a case's known images disagree become NaN for
    that case (e.g. a patient's follow-up images with and without an effusion).
    ``conflicting`` counts the cases affected.
    """
    probs = _check_probs(probs)
    layout = _CaseLayout(np.asarray(case_ids))
    codes, counts = layout.case_of_row, layout.counts.astype(np.float64)
    mean = np.stack(
        [np.bincount(codes, weights=probs[:, j], minlength=layout.n_cases) / counts
         for j in range(probs.shape[1])], axis=1,
    )  # fmt: skip
    ids = layout.ids
    if task == "multiclass":
        labels = _check_labels(targets, probs.shape[0], probs.shape[1])
        low = np.full(layout.n_cases, np.iinfo(np.int64).max)
        high = np.full(layout.n_cases, -1)
        np.minimum.at(low, codes, labels)
        np.maximum.at(high, codes, labels)
        agree = low == high
        return mean[agree], low[agree], ids[agree], int((~agree).sum())
    t = _check_targets(targets, probs.shape)
    known = ~np.isnan(t)
    out = np.full(mean.shape, np.nan)
    conflict = np.zeros(layout.n_cases, bool)
    for j in range(t.shape[1]):
        n_known = np.bincount(codes, weights=known[:, j], minlength=layout.n_cases)
        n_pos = np.bincount(codes, weights=np.nan_to_num(t[:, j]) * known[:, j],
                            minlength=layout.n_cases)  # fmt: skip
        mixed = (n_pos > 0) & (n_pos < n_known)
        conflict |= mixed
        ok = (n_known > 0) & ~mixed
        out[ok, j] = (n_pos[ok] > 0).astype(np.float64)
    return mean, out, ids, int(conflict.sum())


# --------------------------------------------------------------------------- bootstrap


class _CaseLayout:
    """Rows grouped by case in CSR form: case ``i`` owns ``order[offsets[i]:offsets[i+1]]``."""

    def __init__(self, case_ids: np.ndarray) -> None:
        ids = np.asarray(case_ids)
        if ids.ndim != 1 or ids.shape[0] == 0:
            raise MedsslError(f"case_ids must be a non-empty 1-D array, got shape {ids.shape}")
        if ids.dtype == object:
            ids = ids.astype(str)
        self.ids, inverse = np.unique(ids, return_inverse=True)
        self.case_of_row = inverse.reshape(-1)
        self.order = np.argsort(self.case_of_row, kind="stable")
        self.counts = np.bincount(self.case_of_row)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.n_cases = int(self.counts.shape[0])
        self.n_rows = int(ids.shape[0])

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Case indices of one resample: ``n_cases`` cases drawn with replacement."""
        return rng.integers(0, self.n_cases, size=self.n_cases)

    def rows(self, draws: np.ndarray) -> np.ndarray:
        """Row indices of the drawn cases, each case bringing all its rows (twice if drawn
        twice)."""
        lens = self.counts[draws]
        # Output position p lies in the segment of draw s; it maps to
        # order[offsets[case] + p - out_start[s]].
        out_start = np.cumsum(lens) - lens
        shift = np.repeat(self.offsets[draws] - out_start, lens)
        return self.order[shift + np.arange(int(lens.sum()))]

    def row_weights(self, draws: np.ndarray) -> np.ndarray:
        """How often each row occurs in the resample (same multiset as :meth:`rows`)."""
        per_case = np.bincount(draws, minlength=self.n_cases).astype(np.float64)
        return per_case[self.case_of_row]


def _check_boot_args(n_boot: int, alpha: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise MedsslError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise MedsslError(f"alpha must be between 0 and 1, got {alpha!r}")


def _as_value(v: object) -> float:
    """A metric value as float, NaN for 'undefined' (None or NaN)."""
    if v is None:
        return math.nan
    f = float(v)  # type: ignore[arg-type]
    return f if math.isfinite(f) else math.nan


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    ok = values[~np.isnan(values)]
    # Dropping undefined resamples biases the rest; past half dropped the CI means little.
    if ok.size == 0 or 2 * ok.size < values.size:
        return (math.nan, math.nan)
    lo, hi = np.percentile(ok, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return (float(lo), float(hi))


def _bootstrap_many(
    metrics_fn: Callable[[np.ndarray], Mapping[str, object]],
    names: Sequence[str],
    layout: _CaseLayout,
    n_boot: int,
    seed: int,
    alpha: float,
) -> dict[str, tuple[float, float]]:
    """Several metrics over the same resamples; ``metrics_fn`` gets the drawn case indices.

    Every caller draws from the same random stream, so with equal seeds each metric's
    interval is exactly what :func:`bootstrap_ci` would give for it alone.
    """
    _check_boot_args(n_boot, alpha)
    rng = np.random.default_rng(seed)
    values = np.full((len(names), int(n_boot)), np.nan)
    for b in range(int(n_boot)):
        out = metrics_fn(layout.draw(rng))
        for i, name in enumerate(names):
            values[i, b] = _as_value(out[name])
    return {name: _interval(values[i], alpha) for i, name in enumerate(names)}


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray], float | None],
    case_ids: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile ``1 - alpha`` confidence interval of a metric by case-level bootstrap.

    Each resample draws as many cases as there are, with replacement; every drawn case
    brings all its rows (rows of a case drawn twice appear twice). ``metric_fn`` gets the
    row indices (into the arrays ``case_ids`` describes) and returns the metric, or
    None/NaN when it is undefined on that resample (e.g. only one class drawn); such
    resamples are dropped, and if more than half are dropped the result is ``(nan, nan)``.
    """
    key = "metric"
    layout = _CaseLayout(case_ids)
    ci = _bootstrap_many(
        lambda draws: {key: metric_fn(layout.rows(draws))}, [key], layout, n_boot, seed, alpha
    )
    return ci[key]


def bootstrap_cis(
    metrics_fn: Callable[[np.ndarray], Mapping[str, float | None]],
    names: Sequence[str],
    case_ids: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """:func:`bootstrap_ci` for several metrics computed together on the same resamples.

    ``metrics_fn`` gets the row indices of a resample and returns a mapping holding every
    name in ``names``; each interval equals what :func:`bootstrap_ci` gives for it alone.
    """
    layout = _CaseLayout(case_ids)
    return _bootstrap_many(
        lambda draws: metrics_fn(layout.rows(draws)), names, layout, n_boot, seed, alpha
    )


# ------------------------------------------------- fast metrics for the bootstrap loop
# Calling sklearn (and sorting) thousands of times is slow on real test sets. A resample is
# the original rows with integer multiplicities, so the metrics are computed as weighted
# sums over the original rows, sorted once. They equal the sklearn numbers on the resampled
# rows up to rounding (the tests compare the intervals with bootstrap_ci over sklearn).


class _WeightedAUC:
    """Column-wise ROC AUCs of ``scores`` (N, C) under row weights, with the sorting done once.

    AUC = P(score_pos > score_neg) + P(tie) / 2 over weighted (positive, negative) pairs,
    which is what ``roc_auc_score`` gives on the rows repeated by their weights. Each column's
    distinct scores form "groups" (dense ranks) numbered consecutively across columns; a call
    sums negative weight per group, cumulates it, and looks it up at each positive entry.
    Entries neither positive nor negative (NaN targets) do not count.
    """

    def __init__(self, scores: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> None:
        n_cols = scores.shape[1]
        order = np.argsort(scores, axis=0, kind="stable")
        s = np.take_along_axis(scores, order, axis=0)
        new_group = np.ones(s.shape, dtype=bool)
        new_group[1:] = s[1:] != s[:-1]
        sorted_rank = np.cumsum(new_group, axis=0) - 1
        rank = np.empty_like(sorted_rank)
        np.put_along_axis(rank, order, sorted_rank, axis=0)
        n_groups = sorted_rank[-1] + 1
        self.first_group = np.concatenate([[0], np.cumsum(n_groups)[:-1]])
        self.last_group = self.first_group + n_groups - 1
        self.n_groups = int(n_groups.sum())
        self.n_cols = n_cols
        gid = (rank + self.first_group).ravel()
        pos_flat = np.flatnonzero(pos.ravel())
        neg_flat = np.flatnonzero(neg.ravel())
        neg_flat = neg_flat[np.argsort(gid[neg_flat], kind="stable")]  # sequential bincount
        self.pos_gid, self.pos_row, self.pos_col = gid[pos_flat], *np.divmod(pos_flat, n_cols)
        self.neg_gid, self.neg_row = gid[neg_flat], neg_flat // n_cols

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """AUC per column (NaN where a column has no positive or no negative weight)."""
        neg_w = np.bincount(self.neg_gid, weights=w[self.neg_row], minlength=self.n_groups)
        cum = np.cumsum(neg_w)
        col_base = cum[self.first_group] - neg_w[self.first_group]  # negatives of earlier cols
        g = self.pos_gid
        below = cum[g] - neg_w[g] - col_base[self.pos_col]
        pos_w = w[self.pos_row]
        num = np.bincount(
            self.pos_col, weights=pos_w * (below + 0.5 * neg_w[g]), minlength=self.n_cols
        )
        n_pos = np.bincount(self.pos_col, weights=pos_w, minlength=self.n_cols)
        n_neg = cum[self.last_group] - col_base
        out = np.full(self.n_cols, np.nan)
        ok = (n_pos > 0) & (n_neg > 0)
        out[ok] = num[ok] / (n_pos[ok] * n_neg[ok])
        return out


def _nanmean_or_none(values: np.ndarray) -> float | None:
    ok = values[~np.isnan(values)]
    return float(ok.mean()) if ok.size else None


class _FastMulticlass:
    def __init__(self, probs: np.ndarray, labels: np.ndarray) -> None:
        self.n_classes = probs.shape[1]
        self.labels = labels
        self.correct = (probs.argmax(axis=1) == labels).astype(np.float64)
        onehot = labels[:, None] == np.arange(self.n_classes)[None, :]
        self.auc = _WeightedAUC(probs, onehot, ~onehot)
        # calibration as multiclass_calibration computes it
        confidence = probs.max(axis=1)
        self.bins = _bin_ids(confidence)
        self.gap = self.correct - confidence
        scale = 0.5 if self.n_classes == 2 else 1.0  # scikit-learn's binary Brier score
        self.squared = scale * ((probs - onehot) ** 2).sum(axis=1)

    def __call__(self, w: np.ndarray) -> dict[str, float | None]:
        counts = np.bincount(self.labels, weights=w, minlength=self.n_classes)
        hits = np.bincount(self.labels, weights=w * self.correct, minlength=self.n_classes)
        present = counts > 0
        total = counts.sum()
        per_bin = np.bincount(self.bins, weights=w * self.gap, minlength=ECE_BINS)
        return {
            "accuracy": float(hits.sum() / total),
            "balanced_accuracy": float(np.mean(hits[present] / counts[present])),
            "auc_macro": _nanmean_or_none(self.auc(w)),
            "ece": float(np.abs(per_bin).sum() / total),
            "brier": float((w * self.squared).sum() / total) if self.n_classes >= 2 else None,
        }


class _FastMultilabel:
    def __init__(self, probs: np.ndarray, targets: np.ndarray, selected: list[int] | None) -> None:
        self.selected = selected
        self.auc = _WeightedAUC(probs, targets == 1.0, targets == 0.0)
        # calibration per finding over its known entries, as multilabel_calibration
        self.n_cols = probs.shape[1]
        known = ~np.isnan(targets)
        self.row, self.col = np.nonzero(known)
        p, t = probs[known], targets[known]
        self.cell = self.col * ECE_BINS + _bin_ids(p)
        self.gap, self.squared = t - p, (p - t) ** 2

    def __call__(self, w: np.ndarray) -> dict[str, float | None]:
        aucs = self.auc(w)
        mean_sel: float | None = None
        if self.selected is not None and not np.isnan(aucs[self.selected]).any():
            mean_sel = float(aucs[self.selected].mean())
        wr = w[self.row]
        total = np.bincount(self.col, weights=wr, minlength=self.n_cols)
        per_bin = np.bincount(self.cell, weights=wr * self.gap, minlength=self.n_cols * ECE_BINS)
        gaps = np.abs(per_bin).reshape(self.n_cols, ECE_BINS).sum(axis=1)
        sq = np.bincount(self.col, weights=wr * self.squared, minlength=self.n_cols)
        ok = total > 0
        return {
            "auc_macro": _nanmean_or_none(aucs),
            "auc_mean_selected": mean_sel,
            "ece": float(np.mean(gaps[ok] / total[ok])) if ok.any() else None,
            "brier": float(np.mean(sq[ok] / total[ok])) if ok.any() else None,
        }


class _FastOperatingPoint:
    """Sensitivity and specificity at a fixed threshold under row weights."""

    def __init__(self, scores: np.ndarray, pos: np.ndarray, neg: np.ndarray, threshold: float):
        called = np.asarray(scores) >= threshold
        self.pos, self.neg = pos.astype(np.float64), neg.astype(np.float64)
        self.tp, self.tn = self.pos * called, self.neg * ~called

    def __call__(self, w: np.ndarray) -> dict[str, float | None]:
        wp, wn = float(w @ self.pos), float(w @ self.neg)
        return {
            "sensitivity": float(w @ self.tp) / wp if wp > 0 else None,
            "specificity": float(w @ self.tn) / wn if wn > 0 else None,
        }


def _jsonable(v: Any) -> Any:
    """Plain Python types only; NaN becomes None (strict JSON has no NaN)."""
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def evaluate_predictions(
    probs: np.ndarray,
    targets: np.ndarray,
    task: Literal["multiclass", "multilabel"],
    class_names: Sequence[str],
    case_ids: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    mean_over: Sequence[str] | None = None,
    alpha: float = 0.05,
    positive_class: str | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Point metrics plus case-level bootstrap CIs, as a JSON-serialisable dict.

    ``targets`` are integer labels (N,) for ``multiclass`` and a float (N, K) matrix with
    NaN for missing for ``multilabel``. ``ci`` maps metric name to ``[lo, hi]`` (None where
    undefined) for accuracy, balanced_accuracy, auc_macro (multiclass) or auc_macro and
    auc_mean_selected (multilabel), and for the calibration metrics ``ece`` and ``brier``
    (:func:`multiclass_calibration`, :func:`multilabel_calibration`). All metrics share the
    same resamples.

    ``positive_class`` (a class, one-vs-rest, or a finding) with ``threshold`` adds
    ``sensitivity`` and ``specificity`` of "positive if its probability >= threshold", with
    intervals, and an ``operating_point`` block (the positive class's AUC, counts).
    """
    probs = _check_probs(probs)
    n = probs.shape[0]
    case_arr = np.asarray(case_ids)
    if case_arr.ndim != 1 or case_arr.shape[0] != n:
        raise MedsslError(
            f"case_ids must have one entry per prediction row ({n}), got shape {case_arr.shape}"
        )
    fast: Callable[[np.ndarray], Mapping[str, object]]
    if task == "multiclass":
        point = multiclass_metrics(probs, targets, class_names)
        labels = _check_labels(targets, n, probs.shape[1])
        point.update(multiclass_calibration(probs, labels))
        fast = _FastMulticlass(probs, labels)
        ci_names = ["accuracy", "balanced_accuracy", "auc_macro", "ece", "brier"]
    elif task == "multilabel":
        point = multilabel_metrics(probs, targets, class_names, mean_over)
        names = [str(x) for x in class_names]
        selected = point["mean_over"]
        sel_idx = None if selected is None else [names.index(x) for x in selected]
        checked = _check_targets(targets, probs.shape)
        point.update(multilabel_calibration(probs, checked, names))
        fast = _FastMultilabel(probs, checked, sel_idx)
        ci_names = ["auc_macro", "auc_mean_selected", "ece", "brier"]
    else:
        raise MedsslError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
    if positive_class is not None and threshold is not None:
        block, op_fast = _operating_point(probs, targets, task, class_names, positive_class,
                                          threshold)  # fmt: skip
        point.update(sensitivity=block["sensitivity"], specificity=block["specificity"])
        point["operating_point"] = block
        ci_names += ["sensitivity", "specificity"]
        base = fast
        fast = lambda w: {**base(w), **op_fast(w)}  # noqa: E731

    layout = _CaseLayout(case_arr)
    ci = _bootstrap_many(
        lambda draws: fast(layout.row_weights(draws)), ci_names, layout, n_boot, seed, alpha
    )
    out = dict(point)
    out.update(
        {
            "task": task,
            "n_cases": layout.n_cases,
            "n_boot": int(n_boot),
            "seed": int(seed),
            "alpha": float(alpha),
            "ece_bins": ECE_BINS,
            "ci": {name: list(ci[name]) for name in ci_names},
        }
    )
    return _jsonable(out)


def _operating_point(
    probs: np.ndarray,
    targets: np.ndarray,
    task: str,
    class_names: Sequence[str],
    positive_class: str,
    threshold: float,
) -> tuple[dict[str, Any], _FastOperatingPoint]:
    """The operating point block of :func:`evaluate_predictions` and its bootstrap path."""
    names = [str(c) for c in class_names]
    if positive_class not in names:
        raise MedsslError(
            f"--positive-class {positive_class!r} is not one of the evaluated classes "
            f"({', '.join(names)})"
        )
    k = names.index(positive_class)
    pos, neg = positive_rows(targets, task, k)
    scores = probs[:, k]
    auc = (
        float(roc_auc_score(pos[pos | neg], scores[pos | neg])) if pos.any() and neg.any() else None
    )
    block = {
        "positive_class": positive_class,
        "threshold": float(threshold),
        "auc": auc,
        "n_positive": int(pos.sum()),
        "n_negative": int(neg.sum()),
        **sensitivity_specificity(scores, pos, neg, threshold),
    }
    return block, _FastOperatingPoint(scores, pos, neg, threshold)


# --------------------------------------------------------------------------- class mapping


def map_classes(
    labels: np.ndarray,
    source_names: Sequence[str],
    mapping: Mapping[str, str | None],
    target_names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Translate an external dataset's labels into a model's class indices.

    ``labels`` index ``source_names`` (the dataset's classes); ``mapping`` sends a source
    class name to one of ``target_names`` (the model's classes) or to None. Rows of source
    classes mapped to None, or absent from ``mapping``, are excluded.

    Returns ``(mapped, keep, report)``: ``mapped`` has one entry per input row, the model
    class index, or -1 where excluded (use ``mapped[keep]``); ``keep`` is the boolean mask;
    ``report["unmapped"]`` counts excluded rows per unmapped source class.
    """
    source = [str(s) for s in source_names]
    target = [str(t) for t in target_names]
    for what, names in (("source", source), ("target", target)):
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise MedsslError(f"duplicate {what} class names: {', '.join(dup)}")
    extra = [k for k in mapping if k not in source]
    if extra:
        raise MedsslError(
            f"class mapping names unknown source class(es) "
            f"{', '.join(map(str, extra))}; dataset classes: {', '.join(source)}"
        )
    for src, dst in mapping.items():
        if dst is not None and dst not in target:
            raise MedsslError(
                f"class mapping sends {src!r} to {dst!r}, which is not a model "
                f"class; model classes: {', '.join(target)}"
            )
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise MedsslError(f"labels must be 1-D, got shape {labels.shape}")
    labels = _check_labels(labels, labels.shape[0], len(source))

    target_index = {t: i for i, t in enumerate(target)}
    lookup = np.array([target_index.get(mapping.get(s) or "", -1) for s in source], np.int64)
    mapped = lookup[labels]
    keep = mapped >= 0
    counts = np.bincount(labels, minlength=len(source))
    unmapped_names = [s for s in source if mapping.get(s) is None]
    if labels.size and not keep.any():
        raise MedsslError(
            "class mapping excludes every row: no class of the data maps to a model class "
            f"(the data's classes: {', '.join(source)}; the model's: {', '.join(target)}); "
            "map them with --class-map FILE ({data class: model class or null})"
        )
    used_targets = {mapping[s] for s in source if mapping.get(s) is not None}
    report = {
        "n_rows": int(labels.shape[0]),
        "n_kept": int(keep.sum()),
        "n_excluded": int((~keep).sum()),
        "unmapped": {s: int(counts[source.index(s)]) for s in unmapped_names},
        "not_in_mapping": [s for s in source if s not in mapping],
        "model_classes_without_source": [t for t in target if t not in used_targets],
    }
    return mapped, keep, report


def _read_class_map_file(p: Path) -> Any:
    """The parsed contents of a class mapping file (``.json`` as JSON, else YAML)."""
    text = read_text(p, f"class mapping {p}")
    if p.suffix.lower() == ".json":

        def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [k for k, _ in pairs]
            twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
            if twice is not None:
                raise MedsslError(f"class mapping {p}: {twice!r} is written twice; keep one")
            return dict(pairs)

        try:
            return json.loads(text, object_pairs_hook=unique)
        except json.JSONDecodeError as e:
            raise MedsslError(
                f"class mapping {p} is not valid JSON: {e.msg} at line {e.lineno}"
            ) from None
    try:
        import yaml  # noqa: F401 - parse_yaml's
    except ImportError:
        raise MedsslError(
            f"reading YAML class mapping {p} needs PyYAML (pip install pyyaml), or use a .json file"
        ) from None
    return parse_yaml(text, f"class mapping {p}")


def _check_class_entries(data: Any, where: str) -> dict[str, str | None]:
    """``data`` as ``{source class: model class or None}``; errors start with ``where``."""
    if not isinstance(data, dict):
        raise MedsslError(
            f"{where} must be a mapping of source class to model "
            f"class (or null), got {type(data).__name__}"
        )
    out: dict[str, str | None] = {}
    for k, v in data.items():
        if not isinstance(k, str):
            raise MedsslError(f"{where}: key {k!r} is not a class name (quote it)")
        if v is not None and not isinstance(v, str):
            raise MedsslError(f"{where}: value for {k!r} must be a class name or null, got {v!r}")
        out[k] = v
    return out


def load_class_mapping(path: str | Path) -> dict[str, str | None]:
    """Read ``{"source class": "model class" or null}`` from a JSON or YAML file.

    ``.json`` files are parsed as JSON, anything else as YAML (which also accepts JSON).
    """
    p = Path(path)
    return _check_class_entries(_read_class_map_file(p), f"class mapping {p}")


@dataclass
class ClassMap:
    """How an external dataset's classes meet a model's classes.

    ``classes`` sends each dataset class to an evaluation class or None (excluded); None
    as a whole matches the classes by name. ``model_classes`` optionally merges MODEL
    classes into evaluation classes, ``{evaluation class: [model classes]}``: the model's
    probabilities of a group are summed (e.g. ``malignant: [mel, bcc, akiec]``), and the
    evaluation classes are the groups instead of the model's classes.
    """

    classes: dict[str, str | None] | None = None
    model_classes: dict[str, list[str]] | None = None


def _check_model_classes(data: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(data, dict) or not data:
        raise MedsslError(
            f"{where}: model_classes must map an evaluation class to a list of model classes"
        )
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for group, members in data.items():
        members = [members] if isinstance(members, str) else members
        if (
            not isinstance(group, str)
            or not isinstance(members, list)
            or not members
            or not all(isinstance(m, str) for m in members)
        ):
            raise MedsslError(
                f"{where}: model_classes.{group}: expected a list of model class names, "
                f"got {members!r}"
            )
        for m in members:
            if m in seen:
                raise MedsslError(
                    f"{where}: model_classes: model class {m!r} is in both {seen[m]!r} "
                    f"and {group!r}"
                )
            seen[m] = group
        out[group] = list(members)
    return out


def class_map_from_dict(data: Any, where: str = "class mapping") -> ClassMap:
    """A :class:`ClassMap` from ``{dataset class: evaluation class or null}``, which may hold
    the reserved key ``model_classes`` (``{evaluation class: [model classes]}``)."""
    if isinstance(data, dict) and "model_classes" in data:
        rest = {k: v for k, v in data.items() if k != "model_classes"}
        groups = _check_model_classes(data["model_classes"], where)
        return ClassMap(_check_class_entries(rest, where) if rest else None, groups)
    return ClassMap(_check_class_entries(data, where))


def load_class_map(source: str | Path | Mapping[str, Any] | ClassMap) -> ClassMap:
    """A :class:`ClassMap` from a JSON/YAML file path, a dict or a ClassMap."""
    if isinstance(source, ClassMap):
        return source
    if isinstance(source, Mapping):
        return class_map_from_dict(dict(source))
    p = Path(source)
    return class_map_from_dict(_read_class_map_file(p), f"class mapping {p}")


def merge_model_classes(
    probs: np.ndarray, model_names: Sequence[str], groups: Mapping[str, Sequence[str]]
) -> tuple[np.ndarray, list[str]]:
    """Sum ``probs`` (N, C) over the model classes of each group: (N, len(groups)), names.

    Model classes in no group do not count (their probability is dropped, so the rows of
    the result sum to at most 1); an unknown model class is an error naming it.
    """
    names = [str(n) for n in model_names]
    probs = np.asarray(probs)
    merge = np.zeros((len(names), len(groups)), dtype=np.float64)
    for j, (group, members) in enumerate(groups.items()):
        for m in members:
            if m not in names:
                raise MedsslError(
                    f"class mapping: model_classes.{group} names {m!r}, which is not a model "
                    f"class; model classes: {', '.join(names)}"
                )
            merge[names.index(m), j] = 1
    # summed in float64 and clipped: float32 sums of a softmax can pass 1 by a rounding step
    merged = np.clip(probs.astype(np.float64) @ merge, 0.0, 1.0)
    return merged.astype(probs.dtype if probs.dtype.kind == "f" else np.float64), [
        str(g) for g in groups
    ]
