"""Figures of a report: label efficiency, in-distribution vs shift, ROC, reliability, and
maps of embeddings (t-SNE, coloured by class and source: ``medssl embed --map``).

Plots are drawn on :class:`matplotlib.figure.Figure` objects directly, never through
``pyplot``: that renders with Agg on a headless machine without touching the global
backend of a notebook or GUI the caller may be using, and leaks no open figures.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from medssl.errors import MedsslError
from medssl.report.summary import (
    METRIC_RANGES,
    _init_mode,
    _metric_label,
    _ordered_inits,
    _ordered_splits,
    _pct,
    _split_label,
    split_file_label,
)

# Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies. Yellow
# is last because it is faint on white. Known inits get fixed colours so that every report
# draws e.g. MICLe in the same colour.
_OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "yellow": "#F0E442",
}
_FIXED_COLOURS = {
    "random": _OKABE_ITO["black"],
    "imagenet-supervised": _OKABE_ITO["orange"],
    "simclr": _OKABE_ITO["sky"],
    "micle": _OKABE_ITO["vermillion"],
}
#: colours for inits without a fixed one: first those no fixed init uses, then the rest
_SPARE_COLOURS = [_OKABE_ITO[k] for k in ("green", "purple", "blue", "yellow", "sky", "orange")]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_SPLIT_COLOURS = {"test": _OKABE_ITO["blue"], "shift": _OKABE_ITO["orange"]}
_DPI = 150


def _styles(inits: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per init: fixed for known inits, spare colours for the rest (a colour
    no other init of the figure has, while the eight colours last)."""
    taken = {_FIXED_COLOURS[i] for i in inits if i in _FIXED_COLOURS}
    free = [c for c in _SPARE_COLOURS if c not in taken] + [
        c for c in _SPARE_COLOURS if c in taken
    ]  # fmt: skip
    spare = iter(free * (1 + len(inits) // len(free)))
    out = {}
    for i, init in enumerate(inits):
        colour = _FIXED_COLOURS.get(init) or next(spare)
        out[init] = (colour, _MARKERS[i % len(_MARKERS)])
    return out


def _within(metric: str, values: np.ndarray) -> np.ndarray:
    """``values`` clipped to the metric's range (an interval over two seeds can reach past
    an AUC of 1; the figure shows what the metric can be)."""
    low, high = METRIC_RANGES.get(metric, (-np.inf, np.inf))
    return np.clip(values, low, high)


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    return fig


def _save(fig, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI, facecolor="white")
    return path


def _check_summary(summary: pd.DataFrame, metric: str) -> None:
    missing = [c for c in ["init", "label_fraction", "split", f"{metric}_mean"] if c not in summary]
    if missing:
        raise MedsslError(
            f"summary lacks column(s) {', '.join(missing)}: pass the output of summarize() "
            f"computed with metric {metric}"
        )
    if summary.empty:
        raise MedsslError("the summary has no rows")


def plot_label_efficiency(
    summary: pd.DataFrame, metric: str, path: Path | str, title: str | None = None
) -> Path:
    """Metric against label fraction, one line per init, one panel per split, one row of
    panels per mode (fine-tuning, then ``<init> (linear)`` and other modes), each init in
    the same colour and marker in every row.

    The x axis is logarithmic with ticks at the label fractions that were run (as %); the
    band is the CI over seeds, clipped to the metric's range (error bars instead when only
    one fraction was run). Panels share the y axis so the drop under distribution shift,
    and from fine-tuning to a frozen backbone, reads directly.
    """
    _check_summary(summary, metric)
    splits = _ordered_splits(summary["split"])
    inits = _ordered_inits(summary["init"])
    modes = list(dict.fromkeys(_init_mode(i)[1] for i in inits))
    styles = _styles(list(dict.fromkeys(_init_mode(i)[0] for i in inits)))
    fig = _new_figure(1.0 + 4.6 * len(splits), 0.8 + 3.8 * len(modes))
    axes = fig.subplots(len(modes), len(splits), sharey=True, squeeze=False)
    for row, mode in zip(axes, modes, strict=True):
        in_mode = [i for i in inits if _init_mode(i)[1] == mode]
        for ax, split in zip(row, splits, strict=True):
            _draw_efficiency_panel(ax, summary, metric, split, in_mode, styles)
            heading = _split_label(split)
            if len(modes) > 1:
                heading += f" — {mode or 'fine-tuned'}"
            ax.set_title(heading, fontsize=11)
    for ax in axes[:, 0]:
        ax.set_ylabel(_metric_label(metric))
    fig.suptitle(title or f"Label efficiency — {_metric_label(metric)}", fontsize=12)
    handles, labels = [], []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=min(len(labels), 8),
            title="Initialisation (band: 95% CI over seeds; one seed: case bootstrap)",
            frameon=False,
        )
    return _save(fig, path)


def _draw_efficiency_panel(
    ax, summary: pd.DataFrame, metric: str, split: str, inits: list[str],
    styles: dict[str, tuple[str, str]],
) -> None:  # fmt: skip
    """One panel of :func:`plot_label_efficiency`: ``inits`` (of one mode) on ``split``."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    fractions = sorted(summary["label_fraction"].unique())
    drew = False
    for init in inits:
        base = _init_mode(init)[0]
        sub = summary[(summary["init"] == init) & (summary["split"] == split)]
        sub = sub.sort_values("label_fraction")
        x = sub["label_fraction"].to_numpy(dtype=float)
        y = sub[f"{metric}_mean"].to_numpy(dtype=float)
        if not np.isfinite(y).any():
            continue
        lo = _within(metric, sub[f"{metric}_lo"].to_numpy(dtype=float))
        hi = _within(metric, sub[f"{metric}_hi"].to_numpy(dtype=float))
        colour, marker = styles[base]
        linestyle = "--" if base == "random" else "-"
        ax.plot(x, y, marker=marker, color=colour, ls=linestyle, lw=2, ms=6, label=base)
        ok = np.isfinite(lo) & np.isfinite(hi)
        if len(fractions) > 1:
            ax.fill_between(x, lo, hi, where=ok, color=colour, alpha=0.15, lw=0)
        elif ok.any():
            ax.errorbar(
                x[ok],
                y[ok],
                # a bootstrap interval may lie beside its point (ECE is biased upward on
                # resamples): the bar then ends at the point, it never goes negative
                yerr=[np.clip(y[ok] - lo[ok], 0, None), np.clip(hi[ok] - y[ok], 0, None)],
                fmt="none",
                ecolor=colour,
                capsize=4,
                lw=1.5,
            )
        drew = True
    if not drew:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(fractions))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _pct(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(fractions[0] / 1.4, fractions[-1] * 1.4)
    ax.set_xlabel("Labelled fraction of the training set (log scale)")
    ax.grid(True, alpha=0.3)


def plot_shift_bars(
    summary: pd.DataFrame,
    metric: str,
    path: Path | str,
    label_fraction: float | Literal["all", "largest"] = "all",
    title: str | None = None,
) -> Path:
    """Grouped bars, in-distribution vs shift, per init; one panel per label fraction.

    ``label_fraction`` picks the panels: ``"all"`` (default), ``"largest"`` or one
    fraction. Error bars are the CI over seeds (none with one seed). Each bar is labelled
    with its mean, since bars starting at 0 make differences of a few points hard to see.
    """
    _check_summary(summary, metric)
    splits = _ordered_splits(summary["split"])
    if "shift" not in splits or "test" not in splits:
        raise MedsslError(
            f"plot_shift_bars needs both a test and a shift split; the summary has "
            f"{', '.join(splits)}"
        )
    fractions = sorted(summary["label_fraction"].unique())
    if label_fraction == "all":
        chosen = fractions
    elif label_fraction == "largest":
        chosen = fractions[-1:]
    else:
        matches = [f for f in fractions if math.isclose(f, float(label_fraction))]
        if not matches:
            raise MedsslError(
                f"label fraction {label_fraction} is not in the summary "
                f"({', '.join(_pct(f) for f in fractions)})"
            )
        chosen = matches
    inits = _ordered_inits(summary["init"])
    # at most 3 per row, balanced: 4 panels as 2 x 2 rather than 3 + 1
    ncols = math.ceil(len(chosen) / math.ceil(len(chosen) / 3))
    nrows = math.ceil(len(chosen) / ncols)
    width = max(4.0, 0.9 * len(inits) + 1.5)
    fig = _new_figure(0.6 + width * ncols, 0.6 + 4.0 * nrows)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    x = np.arange(len(inits), dtype=float)
    bar_w = 0.38
    for ax, fraction in zip(axes, chosen, strict=False):
        for k, split in enumerate(["test", "shift"]):
            means, errs = [], [[], []]
            for init in inits:
                r = summary[
                    (summary["init"] == init)
                    & (summary["split"] == split)
                    & np.isclose(summary["label_fraction"], fraction)
                ]
                mean = float(r[f"{metric}_mean"].iloc[0]) if len(r) else math.nan
                lo = float(r[f"{metric}_lo"].iloc[0]) if len(r) else math.nan
                hi = float(r[f"{metric}_hi"].iloc[0]) if len(r) else math.nan
                means.append(mean)
                ci = math.isfinite(lo) and math.isfinite(hi)
                # NaN: no error bar at all (a zero-length one still draws its caps)
                errs[0].append(max(mean - lo, 0.0) if ci else math.nan)  # see above
                errs[1].append(max(hi - mean, 0.0) if ci else math.nan)
            bars = ax.bar(
                x + (k - 0.5) * bar_w,
                np.nan_to_num(means, nan=0.0),
                bar_w,
                yerr=errs,
                capsize=3,
                color=_SPLIT_COLOURS[split],
                error_kw={"lw": 1.2, "ecolor": "#333333"},
                label=_split_label(split),
            )
            labels = [f"{m:.3f}" if math.isfinite(m) else "" for m in means]
            for xi, m in zip(x + (k - 0.5) * bar_w, means, strict=True):
                if not math.isfinite(m):  # a zero-height bar would read as a score of 0
                    ax.text(
                        xi,
                        0.02,
                        "not run",
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=8,
                        color="#555555",
                    )
            ax.bar_label(
                bars,
                labels=labels,
                label_type="center",
                rotation=90,
                fontsize=8,
                color="white" if split == "test" else "black",
            )
        ax.set_xticks(x, inits, rotation=20, ha="right")
        ax.set_title(f"{_pct(fraction)} of labels", fontsize=11)
        ax.set_ylim(0, 1.02)
        ax.grid(True, axis="y", alpha=0.3)
        if metric.startswith("auc"):
            ax.axhline(0.5, color="#777777", ls=":", lw=1)
    for ax in axes[len(chosen) :]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel(_metric_label(metric))
    fig.suptitle(
        title or f"In-distribution vs distribution shift — {_metric_label(metric)}", fontsize=12
    )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=2,
        title="error bars: 95% CI over seeds (one seed: case bootstrap)"
        + ("; dotted line: chance" if metric.startswith("auc") else ""),
        frameon=False,
    )
    return _save(fig, path)


# ------------------------------------------------------------------------ ROC


@dataclass
class RocCurve:
    """One ROC curve to draw: false/true positive rates, its AUC and what it averages."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    description: str


def _binary_roc(y: np.ndarray, score: np.ndarray):
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr, float(roc_auc_score(y, score))


def roc_curve_data(
    probs: np.ndarray,
    targets: np.ndarray,
    which: int | str = "macro",
    class_names: Sequence[str] | None = None,
) -> RocCurve:
    """The ROC curve of one class or an average, for multiclass or multilabel predictions.

    ``targets`` of shape (N,) are multiclass labels, (N, K) multilabel 0/1/NaN targets
    (NaN rows are masked per finding). ``which`` is a class index, a class name,
    ``"macro"`` or ``"micro"``:

    * ``"macro"``: one-vs-rest curve per class (finding), TPRs averaged vertically on the
      union of their FPRs; the AUC shown is the mean of the per-class AUCs, i.e. the
      ``auc_macro`` of the results table (the area under the averaged curve is close but
      not identical). Classes without both positives and negatives are skipped, as there.
    * ``"micro"``: every (row, class) decision pooled into one binary problem; dominated by
      frequent classes, so it is not the number in the results table.
    """
    probs = np.asarray(probs, dtype=float)
    targets = np.asarray(targets)
    if probs.ndim != 2:
        raise MedsslError(f"probs must be 2-D (rows, classes), got shape {probs.shape}")
    n, c = probs.shape
    if targets.ndim == 1:
        if targets.shape[0] != n:
            raise MedsslError(f"targets have {targets.shape[0]} rows, probs {n}")
        labels = targets.astype(int)
        onehot = np.zeros((n, c))
        onehot[np.arange(n), labels] = 1.0
        truth, kind, unit = onehot, "multiclass", "class"
    elif targets.ndim == 2:
        if targets.shape != probs.shape:
            raise MedsslError(f"targets shape {targets.shape} does not match probs {probs.shape}")
        truth, kind, unit = targets.astype(float), "multilabel", "finding"
    else:
        raise MedsslError(f"targets must be 1-D or 2-D, got shape {targets.shape}")
    names = [str(s) for s in class_names] if class_names is not None else None

    def column(j: int) -> tuple[np.ndarray, np.ndarray] | None:
        known = ~np.isnan(truth[:, j])
        y = truth[known, j] == 1.0
        if y.all() or not y.any():
            return None
        return y, probs[known, j]

    if isinstance(which, str) and which in ("macro", "micro"):
        if which == "micro":
            known = ~np.isnan(truth)
            y = truth[known] == 1.0
            if y.all() or not y.any():
                raise MedsslError("micro-average ROC needs both positives and negatives")
            fpr, tpr, _ = _binary_roc(y, probs[known])
            from sklearn.metrics import auc

            return RocCurve(fpr, tpr, float(auc(fpr, tpr)), f"micro average ({kind})")
        curves = [cur for j in range(c) if (cur := column(j)) is not None]
        if not curves:
            raise MedsslError(f"no {unit} has both positives and negatives: no ROC curve")
        per = [_binary_roc(y, s) for y, s in curves]
        grid = np.unique(np.concatenate([f for f, _, _ in per]))
        mean_tpr = np.mean([np.interp(grid, f, t) for f, t, _ in per], axis=0)
        fpr = np.concatenate([[0.0], grid])
        tpr = np.concatenate([[0.0], mean_tpr])
        plural = "classes" if unit == "class" else "findings"
        desc = f"macro average over {len(per)} {plural}"
        if kind == "multiclass":
            desc += " (one-vs-rest)"
        if len(per) < c:
            desc += f", {c - len(per)} skipped"
        return RocCurve(fpr, tpr, float(np.mean([a for _, _, a in per])), desc)

    if isinstance(which, str):
        if names is None or which not in names:
            raise MedsslError(
                f"unknown {unit} {which!r}; use an index, 'macro', 'micro' or one of "
                f"{', '.join(names or [])}"
            )
        j = names.index(which)
    else:
        j = int(which)
        if not 0 <= j < c:
            raise MedsslError(f"{unit} index {j} out of range 0..{c - 1}")
    cur = column(j)
    label = names[j] if names else f"{unit} {j}"
    if cur is None:
        raise MedsslError(f"{unit} {label} lacks positives or negatives: no ROC curve")
    fpr, tpr, a = _binary_roc(*cur)
    return RocCurve(fpr, tpr, a, f"{label} vs rest" if kind == "multiclass" else label)


def _load_predictions(run_dir: Path, split: str) -> dict[str, np.ndarray]:
    path = Path(run_dir) / f"predictions_{split_file_label(split)}.npz"
    if not path.is_file():
        raise MedsslError(f"predictions file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in ("probs", "targets") if k in z.files}
            if "class_names" in z.files:
                # An object array cannot be loaded without pickle; names are optional here.
                with contextlib.suppress(ValueError):
                    out["class_names"] = z["class_names"]
    except (OSError, ValueError) as e:
        raise MedsslError(f"cannot read predictions file {path}: {e}") from None
    missing = [k for k in ("probs", "targets") if k not in out]
    if missing:
        raise MedsslError(f"predictions file {path} lacks array(s) {', '.join(missing)}")
    return out


def plot_roc(
    run_dirs: Mapping[str, Path | str],
    split: str,
    path: Path | str,
    class_index_or_macro: int | str = "macro",
    title: str | None = None,
) -> Path:
    """ROC curves of one run per init from its ``predictions_<split>.npz``.

    ``run_dirs`` maps an init label to its run directory. See :func:`roc_curve_data` for
    ``class_index_or_macro`` (default: macro average, whose legend AUC is the results
    table's ``auc_macro``). Missing or unreadable predictions raise MedsslError.
    """
    if not run_dirs:
        raise MedsslError("no run directories given for the ROC plot")
    curves: dict[str, RocCurve] = {}
    for init, run in run_dirs.items():
        pred = _load_predictions(Path(run), split)
        try:
            curves[init] = roc_curve_data(
                pred["probs"], pred["targets"], class_index_or_macro, pred.get("class_names")
            )
        except MedsslError as e:
            label = split_file_label(split)
            raise MedsslError(f"{Path(run) / f'predictions_{label}.npz'}: {e}") from None
    styles = _styles(list(curves))
    fig = _new_figure(5.6, 5.8)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999999", ls=":", lw=1, label="chance (AUC 0.500)")
    for init, cur in curves.items():
        colour, _ = styles[init]
        ax.plot(
            cur.fpr,
            cur.tpr,
            color=colour,
            lw=2,
            ls="--" if init == "random" else "-",
            label=f"{init} (AUC {cur.auc:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 − specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.grid(True, alpha=0.3)
    descriptions = sorted({c.description for c in curves.values()})
    ax.set_title(
        (title or f"ROC — {_split_label(split)}") + "\n" + "; ".join(descriptions),
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=9, title="Initialisation", title_fontsize=9)
    return _save(fig, path)


# ---------------------------------------------------------------- reliability


def _confidence_outcome(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and correctness (multiclass), or every known (row, finding)
    probability and its target (multilabel, pooled)."""
    probs = np.asarray(probs, dtype=float)
    targets = np.asarray(targets)
    if targets.ndim == 1:
        return probs.max(axis=1), (probs.argmax(axis=1) == targets.astype(int)).astype(int)
    known = ~np.isnan(targets.astype(float))
    return probs[known], targets[known].astype(int)


def reliability_data(
    probs: np.ndarray, targets: np.ndarray, n_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(observed rate, mean confidence, images) per non-empty bin, and the ECE of those bins.

    The rates come from scikit-learn's ``calibration_curve`` (equal-width bins); with 15 bins
    and multiclass predictions the ECE is the ``ece`` of :mod:`medssl.metrics`. Multilabel
    predictions are pooled over findings (the evaluation's ``ece`` averages findings).
    """
    from sklearn.calibration import calibration_curve

    conf, outcome = _confidence_outcome(probs, targets)
    if conf.size == 0:
        raise MedsslError("no known targets: no reliability diagram")
    conf = np.clip(conf, 0.0, 1.0)
    rate, mean_conf = calibration_curve(outcome, conf, n_bins=n_bins, pos_label=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=n_bins)
    counts = counts[counts > 0]
    ece = float(np.sum(counts / conf.size * np.abs(rate - mean_conf)))
    return rate, mean_conf, counts, ece


def plot_reliability(
    run_dirs: Mapping[str, Path | str], split: str, path: Path | str, title: str | None = None
) -> Path:
    """Reliability diagram of one run per init from its ``predictions_<split>.npz``: observed
    rate against mean confidence per bin (marker area: images in the bin), the diagonal
    being perfect calibration. Missing or unreadable predictions raise MedsslError."""
    if not run_dirs:
        raise MedsslError("no run directories given for the reliability diagram")
    curves = {}
    for init, run in run_dirs.items():
        pred = _load_predictions(Path(run), split)
        try:
            curves[init] = reliability_data(pred["probs"], pred["targets"])
        except MedsslError as e:
            label = split_file_label(split)
            raise MedsslError(f"{Path(run) / f'predictions_{label}.npz'}: {e}") from None
    multilabel = np.asarray(pred["targets"]).ndim == 2
    styles = _styles(list(curves))
    ncols = min(4, len(curves))
    nrows = math.ceil(len(curves) / ncols)
    fig = _new_figure(2.6 * ncols + 0.4, 2.7 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    reference = curves.get("random")
    for ax, (init, (rate, conf, counts, ece)) in zip(axes, curves.items(), strict=False):
        ax.plot([0, 1], [0, 1], color="#999999", ls=":", lw=1)
        if reference is not None and init != "random":  # the baseline, faint, in every panel
            ax.plot(reference[1], reference[0], color="#aaaaaa", ls="--", lw=1)
        colour, marker = styles[init]
        ax.plot(conf, rate, color=colour, lw=1.5, ls="--" if init == "random" else "-")
        ax.scatter(conf, rate, s=8 + 120 * counts / counts.max(), color=colour, marker=marker,
                   alpha=0.7, lw=0)  # fmt: skip
        ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{init} ({'pooled ' if multilabel else ''}ECE {ece:.3f})", fontsize=9)
    for ax in axes[len(curves) :]:
        ax.set_visible(False)  # no empty panel
    what = "finding probability (all findings pooled)" if multilabel else "top-class confidence"
    fig.supxlabel(f"Mean {what}, 15 bins", fontsize=9)
    fig.supylabel("Observed frequency" if multilabel else "Accuracy", fontsize=9)
    baseline = "; grey dashed: random" if reference is not None and len(curves) > 1 else ""
    fig.suptitle((title or f"Reliability — {_split_label(split)}")
                 + f"\n(dotted: perfect calibration{baseline}; marker area: images in the bin)",
                 fontsize=10)  # fmt: skip
    return _save(fig, path)


# --------------------------------------------------------------------------- forest plot


def plot_forest(
    estimates: pd.DataFrame, metric: str, path: Path | str, splits: Sequence[str] | None = None
) -> Path:
    """Forest plot of a sweep's paired differences in ``metric``.

    ``estimates`` is :func:`~medssl.report.summary.paired_estimates` of a ``paired.csv``.
    One panel per mode (fine-tuned first) and split (``splits``, default all), one row per
    label fraction (lowest on top) and comparison ``a − b``: the mean difference with its
    95% interval and a vertical line at 0; the marker is filled where the interval excludes
    0 (a decided difference), hollow where it holds 0.
    """
    from matplotlib.ticker import MaxNLocator

    from medssl.report.headline import _ordered_modes, mode_name

    est = estimates if splits is None else estimates[estimates["split"].isin(list(splits))]
    if est.empty:
        raise MedsslError("no paired differences to plot")
    present = set(zip(est["mode"], est["split"], strict=True))
    modes, splits = _ordered_modes(list(est["mode"])), _ordered_splits(est["split"])
    panels = [(m, s) for m in modes for s in splits if (m, s) in present]
    fractions = sorted(est["label_fraction"].unique())
    pairs = list(dict.fromkeys(zip(est["a"], est["b"], strict=True)))
    compared = set(zip(est["label_fraction"], est["a"], est["b"], strict=True))
    rows = [(f, a, b) for f in fractions for a, b in pairs if (f, a, b) in compared]
    y_of = {r: i for i, r in enumerate(rows)}
    colours = [_OKABE_ITO[k] for k in ("blue", "vermillion", "green", "purple", "orange", "sky")]
    colour_of = {f: colours[i % len(colours)] for i, f in enumerate(fractions)}
    fig = _new_figure(2.2 + 2.5 * len(panels), 1.4 + 0.24 * len(rows))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (mode, split) in zip(axes, panels, strict=True):
        sub = est[(est["mode"] == mode) & (est["split"] == split)]
        for r in sub.itertuples(index=False):
            y = y_of[(r.label_fraction, r.a, r.b)]
            colour = colour_of[r.label_fraction]
            if math.isfinite(r.low) and math.isfinite(r.high):
                ax.plot([r.low, r.high], [y, y], color=colour, lw=1.6)
            ax.plot([r.diff], [y], marker="o", ms=5, color=colour,
                    markerfacecolor=colour if r.side else "white")  # fmt: skip
        ax.axvline(0, color="#555555", lw=1)
        ax.grid(True, axis="x", alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(f"{mode_name(mode)}\n{_split_label(split)}", fontsize=9)
        ax.set_xlabel(f"difference in {_metric_label(metric)}", fontsize=8)
    for i in range(1, len(rows)):
        if rows[i][0] != rows[i - 1][0]:  # a rule between label fractions
            for ax in axes:
                ax.axhline(i - 0.5, color="#cccccc", lw=0.8)
    axes[0].set_yticks(range(len(rows)))
    axes[0].set_yticklabels([f"{_pct(f)} · {a} − {b}" for f, a, b in rows], fontsize=8)
    axes[0].set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    return _save(fig, path)


# --------------------------------------------------------------------------- embedding maps


def embedding_map_coordinates(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates ``(N, 2)`` of feature rows (scikit-learn's, PCA start), on the
    L2-normalised features: the geometry of ``medssl embed``'s cosine retrieval. umap-learn
    is not a dependency; t-SNE keeps local neighbourhoods, not global distances."""
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 4:
        raise MedsslError(f"an embedding map needs at least 4 images, got {len(x)}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1)
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(x)


def plot_embedding_map(
    features: np.ndarray,
    path: Path | str,
    colour_by: Mapping[str, Sequence[str]] | None = None,
    *,
    title: str | None = None,
    seed: int = 0,
    coordinates: np.ndarray | None = None,
) -> Path:
    """A 2-D map of embeddings, one panel per entry of ``colour_by`` (``{"class": [...],
    "source": [...]}``, one value per row; none: one panel, one colour), points coloured by
    value (Okabe-Ito colours; past eight values a colour map). ``coordinates`` (``(N, 2)``)
    skip the t-SNE of :func:`embedding_map_coordinates`. Returns ``path`` (PNG)."""
    n = len(features)
    panels = dict(colour_by or {})
    for name, values in panels.items():
        if len(values) != n:
            raise MedsslError(f"embedding map: {len(values)} {name} values for {n} images")
    xy = embedding_map_coordinates(features, seed) if coordinates is None else coordinates
    xy = np.asarray(xy, dtype=np.float64)
    if xy.shape != (n, 2):
        raise MedsslError(f"embedding map: coordinates of shape {xy.shape}, expected ({n}, 2)")
    if not panels:
        panels = {"": ["all images"] * n}
    fig = _new_figure(4.8 * len(panels), 4.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    palette = list(_OKABE_ITO.values())
    for ax, (name, values) in zip(axes, panels.items(), strict=True):
        values = np.asarray([str(v) for v in values])
        levels = sorted(set(values.tolist()))
        if len(levels) > len(palette):
            from matplotlib import colormaps

            cmap = colormaps["tab20"].resampled(len(levels))
            colours = [cmap(i) for i in range(len(levels))]
        else:
            colours = palette[: len(levels)]
        for level, colour in zip(levels, colours, strict=True):
            rows = values == level
            ax.scatter(xy[rows, 0], xy[rows, 1], s=10, color=colour, alpha=0.75, lw=0,
                       label=f"{level} ({int(rows.sum())})")  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"by {name}" if name else "embeddings", fontsize=10)
        if len(levels) <= 20:
            ax.legend(loc="best", fontsize=7, markerscale=1.5, title=name or None,
                      title_fontsize=8)  # fmt: skip
    fig.suptitle(title or f"t-SNE of {n} embeddings", fontsize=11)
    return _save(fig, path)


def _monitor_score(rows: pd.DataFrame) -> pd.Series:
    """A run's k-NN macro AUC per epoch, or (supervised runs) its validation AUC."""
    score = pd.to_numeric(rows.get("knn_auc_macro", pd.Series(index=rows.index)), errors="coerce")
    if score.isna().all() and "val_auc_macro" in rows:
        score = pd.to_numeric(rows["val_auc_macro"], errors="coerce")
    return score


def pretraining_has_monitor(curves: pd.DataFrame) -> bool:
    """Whether any run of a ``pretraining.csv`` logged a k-NN (or validation) AUC: without
    one (``knn_every`` off) the curves figure has no k-NN panel."""
    return any(_monitor_score(rows).notna().any() for _, rows in curves.groupby("run"))


def plot_pretraining_curves(curves: pd.DataFrame, path: Path | str) -> Path:
    """The convergence curves of a sweep's pretraining runs (its ``pretraining.csv``): the
    k-NN validation macro AUC (left; each run's own validation split) and the training loss
    (right) against epochs, one colour per entry, one line per seed. A supervised entry has
    no k-NN monitor: its validation AUC stands in on the left, its cross-entropy on the right.
    When no run logged either (``knn_every`` off), the figure is the loss panel alone.
    """
    if curves.empty:
        raise MedsslError("no pretraining runs have a log yet")
    entries = list(dict.fromkeys(curves["entry"].astype(str)))
    styles = _styles(entries)
    monitored = pretraining_has_monitor(curves)
    fig = _new_figure(10.0 if monitored else 5.4, 3.8)
    left, right = fig.subplots(1, 2) if monitored else (None, fig.subplots())
    labelled: set[str] = set()
    for (entry, _run), rows in curves.groupby(["entry", "run"], sort=False):
        entry = str(entry)
        colour, marker = styles[entry]
        label = None if entry in labelled else entry  # one legend entry per entry, not per seed
        labelled.add(entry)
        score = _monitor_score(rows)
        epochs = pd.to_numeric(rows["epoch"], errors="coerce")
        keep = score.notna()
        if left is not None and keep.any():
            left.plot(epochs[keep], score[keep], color=colour, marker=marker, markersize=3,
                      linewidth=1, label=label)  # fmt: skip
        loss = pd.to_numeric(rows["loss"], errors="coerce")
        right.plot(epochs[loss.notna()], loss[loss.notna()], color=colour, marker=marker,
                   markersize=2, linewidth=1, label=label)  # fmt: skip
    right.set(xlabel="epoch", ylabel="training loss")
    right.grid(alpha=0.3)
    if left is not None:
        left.set(xlabel="epoch", ylabel="k-NN macro AUC (validation)")
        left.grid(alpha=0.3)
    right.legend(fontsize=7, loc="upper right")  # every run has a loss, not every a k-NN
    return _save(fig, path)
