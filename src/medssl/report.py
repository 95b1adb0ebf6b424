"""Reports of a fine-tuning sweep: summary tables, plots and a shareable HTML page.

The input is a sweep's ``results.csv`` with one row per (init, mode, label_fraction, seed,
split) and the columns ``dataset, init, mode, label_fraction, seed, split, n, accuracy,
balanced_accuracy, auc_macro, auc_mean_selected, run``. ``split`` is ``test``
(in-distribution), ``shift`` (a distribution-shifted test set, optional) or
``external:<name>`` (a whole external test set); metric cells may be empty where a metric
does not apply; ``run`` is the fine-tuning run directory, holding
``predictions_<label>.npz`` (``probs``, ``targets``, ``case_ids``, ``class_names``; the label
is the split with ``:`` as ``-``, see :func:`split_file_label`). ``mode`` (optional,
default ``finetune``) is ``finetune`` or ``linear``; linear-probe rows are shown as init
``<init> (linear)``. A sweep's ``paired.csv`` (:mod:`medssl.paired`) adds a table of paired
differences.

Confidence intervals here are over *seeds* (mean ± t·sd/√n): they show how much a result
moves between repeated fine-tuning runs. Where a setting has one seed, its cell shows that
run's case-level bootstrap interval instead (the ``<metric>_ci_low`` / ``<metric>_ci_high``
columns a sweep writes; marked †), which describes the test-set sampling uncertainty of one
run, not run-to-run variation. Calibration (ECE, Brier), operating points and subgroups
get tables of their own; reliability diagrams come from the stored predictions.

Plots are drawn on :class:`matplotlib.figure.Figure` objects directly, never through
``pyplot``: that renders with Agg on a headless machine without touching the global
backend of a notebook or GUI the caller may be using, and leaks no open figures.
"""

from __future__ import annotations

import base64
import contextlib
import html
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd

from medssl.errors import MedsslError

__all__ = [
    "METRICS",
    "RocCurve",
    "html_table",
    "markdown_table",
    "plot_label_efficiency",
    "plot_roc",
    "plot_shift_bars",
    "roc_curve_data",
    "split_file_label",
    "summarize",
    "write_report",
]

#: Metric columns a results table may carry, headline metrics first (this is the order of
#: the table columns and plots).
METRICS: list[str] = ["auc_mean_selected", "auc_macro", "balanced_accuracy", "accuracy"]
#: Calibration (lower is better) and operating-point metrics, in tables of their own.
CALIBRATION_METRICS: list[str] = ["ece", "brier"]
OPERATING_METRICS: list[str] = ["sensitivity", "specificity"]
METRIC_LABELS: dict[str, str] = {
    "auc_mean_selected": "AUC (mean of selected findings)",
    "auc_macro": "AUC (macro)",
    "balanced_accuracy": "Balanced accuracy",
    "accuracy": "Accuracy",
    "ece": "ECE (15 bins)",
    "brier": "Brier score",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
}
#: marks a cell whose interval is one run's case-level bootstrap, not an interval over seeds
CASE_CI_MARK = "†"
SPLIT_LABELS: dict[str, str] = {"test": "In-distribution (test)", "shift": "Distribution shift"}
KEYS: list[str] = ["init", "label_fraction", "split"]
REQUIRED: list[str] = ["init", "label_fraction", "seed", "split"]
#: Known initialisations in the order the paper compares them (baseline first).
INIT_ORDER: list[str] = ["random", "imagenet-supervised", "simclr", "micle"]
INIT_DESCRIPTIONS: dict[str, str] = {
    "random": "trained from scratch (random initialisation)",
    "imagenet-supervised": "supervised ImageNet weights, no medical pretraining",
    "simclr": "SimCLR contrastive pretraining (two augmentations of one image are positives)",
    "micle": "MICLe pretraining (two images of the same patient/case are positives)",
}

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
_SPARE_COLOURS = [_OKABE_ITO[k] for k in ("green", "purple", "blue", "yellow")]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_SPLIT_COLOURS = {"test": _OKABE_ITO["blue"], "shift": _OKABE_ITO["orange"]}
_DPI = 150


# --------------------------------------------------------------------------- helpers


def _pct(fraction: float) -> str:
    """0.1 -> '10%', 0.005 -> '0.5%' (rounded first: 0.3 * 100 is 30.000000000000004)."""
    return f"{round(float(fraction) * 100, 6):g}%"


def _metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def split_file_label(split: str) -> str:
    """The label of a split in file names: ``external:ph2`` -> ``external-ph2``."""
    return split.replace(":", "-")


def _split_label(split: str) -> str:
    if split.startswith("external:"):
        return f"External: {split[len('external:') :]}"
    return SPLIT_LABELS.get(split, split)


def _init_mode(init: str) -> tuple[str, str]:
    """'simclr (linear)' -> ('simclr', 'linear'); 'simclr' -> ('simclr', '')."""
    if init.endswith(")") and " (" in init:
        base, _, mode = init[:-1].rpartition(" (")
        return base, mode
    return init, ""


def _init_sort_key(init: str) -> tuple[str, int, str]:
    base, mode = _init_mode(init)
    rank = INIT_ORDER.index(base) if base in INIT_ORDER else len(INIT_ORDER)
    return (mode, rank, base)


def _split_sort_key(split: str) -> tuple[int, str]:
    order = ["test", "shift"]
    return (order.index(split), "") if split in order else (len(order), split)


def _ordered_inits(values: Sequence[str]) -> list[str]:
    return sorted(dict.fromkeys(str(v) for v in values), key=_init_sort_key)


def _ordered_splits(values: Sequence[str]) -> list[str]:
    return sorted(dict.fromkeys(str(v) for v in values), key=_split_sort_key)


def _styles(inits: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per init: fixed for known inits, spare colours for the rest."""
    spare = iter(_SPARE_COLOURS * (1 + len(inits) // len(_SPARE_COLOURS)))
    out = {}
    for i, init in enumerate(inits):
        colour = _FIXED_COLOURS.get(init) or next(spare)
        out[init] = (colour, _MARKERS[i % len(_MARKERS)])
    return out


def _quantile(level: float, dof: int) -> tuple[float, str]:
    """Two-sided quantile for a ``level`` CI with ``dof`` degrees of freedom, and its name.

    Student's t when scipy is importable (it is whenever scikit-learn is), else the normal
    quantile, which is too narrow for few seeds; the method name travels with the summary
    so the report can say which one was used.
    """
    p = 0.5 + level / 2
    try:
        from scipy import stats
    except ImportError:
        return NormalDist().inv_cdf(p), "normal approximation"
    return float(stats.t.ppf(p, dof)), "Student t"


def _mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, str]:
    """(mean, lo, hi, method) over the non-NaN values; lo/hi are NaN below two values."""
    v = values[~np.isnan(values)]
    if v.size == 0:
        return math.nan, math.nan, math.nan, ""
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan, math.nan, ""
    q, method = _quantile(level, v.size - 1)
    half = q * float(v.std(ddof=1)) / math.sqrt(v.size)
    return mean, mean - half, mean + half, method


def _validate(results: pd.DataFrame, source: str) -> pd.DataFrame:
    """A cleaned copy of a results table; every problem is a MedsslError naming ``source``."""
    missing = [c for c in REQUIRED if c not in results.columns]
    if missing:
        raise MedsslError(
            f"{source}: missing column(s) {', '.join(missing)} "
            f"(a results table needs {', '.join(REQUIRED)} and at least one metric)"
        )
    if not any(m in results.columns for m in METRICS):
        raise MedsslError(
            f"{source}: no metric column; expected at least one of {', '.join(METRICS)}"
        )
    if results.empty:
        raise MedsslError(f"{source}: the results table has no rows")
    df = results.copy()
    if "mode" in df.columns:  # linear probes etc. become inits of their own: "simclr (linear)"
        mode = df["mode"].fillna("finetune").astype(str)
        other = mode != "finetune"
        df.loc[other, "init"] = df.loc[other, "init"].astype(str) + " (" + mode[other] + ")"
    for col in REQUIRED:
        if df[col].isna().any():
            row = int(np.flatnonzero(df[col].isna().to_numpy())[0])
            raise MedsslError(f"{source}: column {col} is empty in data row {row + 1}")
    df["init"] = df["init"].astype(str)
    df["split"] = df["split"].astype(str)
    known = [*METRICS, *CALIBRATION_METRICS, *OPERATING_METRICS]
    cis = [f"{m}_ci_{end}" for m in known for end in ("low", "high")]
    for col in ["label_fraction", *[m for m in [*known, *cis] if m in df.columns]]:
        try:
            df[col] = pd.to_numeric(df[col]).astype(float)
        except (ValueError, TypeError) as e:
            raise MedsslError(f"{source}: column {col} is not numeric ({e})") from None
    bad = df[(df["label_fraction"] <= 0) | (df["label_fraction"] > 1)]
    if not bad.empty:
        raise MedsslError(
            f"{source}: label_fraction must be a fraction in (0, 1], found "
            f"{bad['label_fraction'].iloc[0]:g} (write 10% as 0.1)"
        )
    if "dataset" in df.columns:
        datasets = sorted(df["dataset"].dropna().astype(str).unique())
        if len(datasets) > 1:
            raise MedsslError(
                f"{source}: results mix datasets ({', '.join(datasets)}); "
                "summarise one dataset at a time"
            )
    dup = df.duplicated(["init", "label_fraction", "seed", "split"], keep=False)
    if dup.any():
        r = df[dup].iloc[0]
        raise MedsslError(
            f"{source}: more than one row for init={r['init']} "
            f"label_fraction={r['label_fraction']:g} seed={r['seed']} split={r['split']} "
            "(a seed would be counted twice)"
        )
    return df


def _resolve_metrics(df: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        found = [m for m in METRICS if m in df.columns and df[m].notna().any()]
        if not found:
            raise MedsslError(
                f"every metric column is empty; expected values in one of {', '.join(METRICS)}"
            )
        return found
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in df.columns]
    if unknown:
        raise MedsslError(f"metric column(s) not in the results: {', '.join(unknown)}")
    return metrics


def _summary_metrics(summary: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    present = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    if metrics is None:
        return present
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in present]
    if unknown:
        raise MedsslError(
            f"metric(s) {', '.join(unknown)} not in the summary "
            f"(it has {', '.join(present) or 'none'})"
        )
    return list(metrics)


# --------------------------------------------------------------------------- summary


def _case_ci(g: pd.DataFrame, metric: str) -> tuple[float, float]:
    """The case-level bootstrap interval of the one seed with a value (NaN without one)."""
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    rows = g[g[metric].notna()]
    if len(rows) != 1 or low not in g or high not in g:
        return math.nan, math.nan
    return float(rows[low].iloc[0]), float(rows[high].iloc[0])


def _summarize(df: pd.DataFrame, metrics: list[str], level: float) -> pd.DataFrame:
    rows = []
    methods: set[str] = set()
    for (init, fraction, split), g in df.groupby(KEYS, sort=False):
        row: dict[str, object] = {
            "init": init,
            "label_fraction": fraction,
            "split": split,
            "n_seeds": int(g["seed"].nunique()),
        }
        for m in metrics:
            mean, lo, hi, method = _mean_ci(g[m].to_numpy(dtype=float), level)
            kind = "seeds" if method else ""
            if not method and math.isfinite(mean):  # one seed: its case-level interval
                lo, hi = _case_ci(g, m)
                if math.isfinite(lo) and math.isfinite(hi):
                    kind, method = "cases", f"case-level bootstrap of one run ({CASE_CI_MARK})"
            row[f"{m}_mean"], row[f"{m}_lo"], row[f"{m}_hi"] = mean, lo, hi
            row[f"{m}_ci"] = kind
            if method:
                methods.add(method)
        rows.append(row)
    out = pd.DataFrame(rows)
    out = out.sort_values(
        ["init", "label_fraction", "split"],
        key=lambda s: (
            s.map(_init_sort_key)
            if s.name == "init"
            else (s.map(_split_sort_key) if s.name == "split" else s)
        ),
        kind="stable",
    ).reset_index(drop=True)
    out.attrs["ci_level"] = level
    out.attrs["ci_method"] = " / ".join(sorted(methods)) if methods else "none (one seed)"
    return out


def summarize(
    results: pd.DataFrame, metrics: list[str] | None = None, level: float = 0.95
) -> pd.DataFrame:
    """Mean and confidence interval over seeds per (init, label_fraction, split).

    Returns one row per group with ``init, label_fraction, split, n_seeds`` and, for every
    metric, ``<metric>_mean, <metric>_lo, <metric>_hi``. The interval is a Student-t
    interval (normal approximation without scipy) over the seeds' values; with a single
    seed it is that run's case-level bootstrap interval when the results carry
    ``<metric>_ci_low``/``<metric>_ci_high`` (``<metric>_ci`` = ``cases``), else NaN.
    Seeds whose value of a metric is NaN are left out of that metric only, and
    ``n_seeds`` counts all seeds of the group. Default metrics: those of :data:`METRICS`
    with at least one value. ``summary.attrs`` records ``ci_level`` and ``ci_method``.

    Raises MedsslError for missing columns, duplicate (init, label_fraction, seed, split)
    rows, label fractions outside (0, 1] and tables that mix datasets.
    """
    if not 0 < level < 1:
        raise MedsslError(f"CI level must be in (0, 1), got {level}")
    df = _validate(results, "results table")
    return _summarize(df, _resolve_metrics(df, metrics), level)


# --------------------------------------------------------------------------- tables


def _cell(mean: float, lo: float, hi: float, digits: int, ci_digits: int, kind: object = "") -> str:
    if not math.isfinite(mean):
        return "—"
    if math.isfinite(lo) and math.isfinite(hi):
        mark = CASE_CI_MARK if kind == "cases" else ""
        return f"{mean:.{digits}f} [{lo:.{ci_digits}f}, {hi:.{ci_digits}f}]{mark}"
    return f"{mean:.{digits}f}"


@dataclass
class _Table:
    splits: list[str]
    metrics: list[str]
    rows: list[list[str]]  # init, label fraction, one cell per (split, metric), seeds


def _table(
    summary: pd.DataFrame, metrics: Sequence[str] | None, digits: int, ci_digits: int
) -> _Table:
    metrics = _summary_metrics(summary, metrics)
    splits = _ordered_splits(summary["split"])
    index = {
        (str(r.init), float(r.label_fraction), str(r.split)): r
        for r in summary.itertuples(index=False)
    }
    rows = []
    for init in _ordered_inits(summary["init"]):
        fractions = sorted(summary.loc[summary["init"] == init, "label_fraction"].unique())
        for fraction in fractions:
            cells = [init, _pct(fraction)]
            seeds = []
            for split in splits:
                r = index.get((init, float(fraction), split))
                if r is not None:
                    seeds.append(str(r.n_seeds))
                for m in metrics:
                    if r is None:
                        cells.append("—")
                    else:
                        cells.append(
                            _cell(
                                getattr(r, f"{m}_mean"),
                                getattr(r, f"{m}_lo"),
                                getattr(r, f"{m}_hi"),
                                digits,
                                ci_digits,
                                getattr(r, f"{m}_ci", ""),
                            )
                        )
            cells.append("/".join(dict.fromkeys(seeds)))
            rows.append(cells)
    return _Table(splits, metrics, rows)


def markdown_table(
    summary: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    digits: int = 3,
    ci_digits: int = 2,
) -> str:
    """A Markdown table of a :func:`summarize` result.

    One row per init × label fraction (``10%``), one column per split and metric, cells
    ``0.812 [0.80, 0.83]`` (mean [95% CI over seeds]; with one seed that run's case-level
    bootstrap CI, marked †, where the results carry it) or the bare mean when there is no
    interval (one seed), ``—`` for a combination that was not run. The last column is the
    number of seeds (``5/3`` when the splits differ). ``metrics`` defaults to every metric
    in the summary.
    """
    t = _table(summary, metrics, digits, ci_digits)
    header = ["Init", "Labels"]
    header += [f"{_split_label(s)}: {_metric_label(m)}" for s in t.splits for m in t.metrics]
    header.append("Seeds")

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---", "---:"] + ["---:"] * (len(header) - 3) + ["---:"]
    return "\n".join([line(header), "|" + "|".join(align) + "|", *map(line, t.rows)]) + "\n"


def html_table(
    summary: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    digits: int = 3,
    ci_digits: int = 2,
) -> str:
    """The :func:`markdown_table` as an HTML ``<table>``, splits as grouped column headers."""
    t = _table(summary, metrics, digits, ci_digits)
    e = html.escape
    top = ['<th rowspan="2">Init</th>', '<th rowspan="2">Labels</th>']
    top += [f'<th colspan="{len(t.metrics)}">{e(_split_label(s))}</th>' for s in t.splits]
    top.append('<th rowspan="2">Seeds</th>')
    sub = [f"<th>{e(_metric_label(m))}</th>" for _ in t.splits for m in t.metrics]
    body = []
    previous = None
    for cells in t.rows:
        # A rule between inits makes the init blocks easy to scan.
        cls = ' class="group"' if previous is not None and cells[0] != previous else ""
        previous = cells[0]
        tds = [f"<td>{e(cells[0])}</td>"] + [f'<td class="num">{e(c)}</td>' for c in cells[1:]]
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    return (
        '<table class="results">\n<thead>\n'
        f"<tr>{''.join(top)}</tr>\n<tr>{''.join(sub)}</tr>\n</thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>\n"
    )


# --------------------------------------------------------------------------- paired


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def _paired_cell(diff: object, lo: object, hi: object, digits: int = 3) -> str:
    d, low, high = (pd.to_numeric(x, errors="coerce") for x in (diff, lo, hi))
    if not math.isfinite(d):
        return "—"
    cell = _signed(float(d), digits)
    if math.isfinite(low) and math.isfinite(high):
        cell += f" [{_signed(float(low), digits)}, {_signed(float(high), digits)}]"
    return cell


def _paired_rows(paired: pd.DataFrame, metric: str) -> list[list[str]]:
    """Rows (mode, labels, split, a − b, seeds, mean [t-CI], per seed [bootstrap CI])."""
    sub = paired[paired["metric"] == metric].copy()
    sub["seed"] = sub["seed"].astype(str)
    keys = ["mode", "label_fraction", "split", "a", "b"]
    rows = []
    for (mode, fraction, split, a, b), g in sub.groupby(keys, sort=False):
        mean = g[g["seed"] == "mean"]
        seeds = g[g["seed"] != "mean"]
        mean_cell = "—"
        if not mean.empty:
            mean_cell = _paired_cell(*mean.iloc[0][["diff", "ci_low", "ci_high"]])
        per_seed = "; ".join(
            f"s{r.seed}: {_paired_cell(r.diff, r.ci_low, r.ci_high)}" for r in seeds.itertuples()
        )
        rows.append([
            str(mode), _pct(float(fraction)), _split_label(str(split)), f"{a} − {b}",
            str(len(seeds)), mean_cell, per_seed or "—",
        ])  # fmt: skip
    order = {"finetune": 0, "linear": 1}
    rows.sort(key=lambda r: order.get(r[0], 2))  # stable: the file's order within a mode
    return rows


_PAIRED_HEADER = [
    "Mode", "Labels", "Split", "Difference (a − b)", "Seeds",
    "Mean over seeds [95% t-CI over seeds]", "Per seed [95% paired case-bootstrap CI]",
]  # fmt: skip


def _paired_note(metric: str) -> str:
    return (
        f"Paired differences in {_metric_label(metric)} between two initialisations "
        "fine-tuned with the same seed (same labelled subset, head initialisation and data "
        "order). The mean's interval is a Student-t interval over the seeds' differences "
        "(run-to-run variation; none with one seed); each seed's interval resamples test "
        "cases once and scores both models on the same resample (test-set uncertainty). "
        "An interval that excludes 0 is evidence of a real difference. Every metric is in "
        "paired.csv."
    )


def paired_markdown_table(paired: pd.DataFrame, metric: str) -> str:
    """A Markdown table of a ``paired.csv`` (:mod:`medssl.paired`) for one metric."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---", "---:", "---", "---", "---:", "---:", "---"]
    rows = _paired_rows(paired, metric)
    return "\n".join([line(_PAIRED_HEADER), "|" + "|".join(align) + "|", *map(line, rows)]) + "\n"


def paired_html_table(paired: pd.DataFrame, metric: str) -> str:
    """The :func:`paired_markdown_table` as an HTML ``<table>``."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in _PAIRED_HEADER)
    body = []
    for cells in _paired_rows(paired, metric):
        tds = [f"<td>{e(c)}</td>" for c in cells[:4]] + [
            f'<td class="num">{e(c)}</td>' for c in cells[4:]
        ]
        body.append(f"<tr>{''.join(tds)}</tr>")
    return (
        f'<table class="results">\n<thead>\n<tr>{head}</tr>\n</thead>\n<tbody>\n'
        + "\n".join(body) + "\n</tbody>\n</table>\n"
    )  # fmt: skip


def _read_paired(paired_csv: Path | None, metrics: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """A paired.csv with rows, and its headline metric; empty when absent or rowless."""
    if paired_csv is None or not Path(paired_csv).is_file():
        return pd.DataFrame(), ""
    try:
        paired = pd.read_csv(paired_csv)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as e:
        raise MedsslError(f"cannot read paired differences {paired_csv}: {e}") from None
    if paired.empty or "metric" not in paired:
        return pd.DataFrame(), ""
    present = [m for m in metrics if m in set(paired["metric"])]
    return (paired, _primary_metric(present)) if present else (pd.DataFrame(), "")


# --------------------------------------------------------------------------- plots


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
    """Metric against label fraction, one line per init, one panel per split.

    The x axis is logarithmic with ticks at the label fractions that were run (as %); the
    band is the CI over seeds (error bars instead when only one fraction was run). Panels
    share the y axis so the drop under distribution shift reads directly.
    """
    _check_summary(summary, metric)
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    splits = _ordered_splits(summary["split"])
    inits = _ordered_inits(summary["init"])
    styles = _styles(inits)
    fractions = sorted(summary["label_fraction"].unique())
    fig = _new_figure(1.0 + 4.6 * len(splits), 4.6)
    axes = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
    for ax, split in zip(axes, splits, strict=True):
        drew = False
        for init in inits:
            sub = summary[(summary["init"] == init) & (summary["split"] == split)]
            sub = sub.sort_values("label_fraction")
            x = sub["label_fraction"].to_numpy(dtype=float)
            y = sub[f"{metric}_mean"].to_numpy(dtype=float)
            if not np.isfinite(y).any():
                continue
            lo = sub[f"{metric}_lo"].to_numpy(dtype=float)
            hi = sub[f"{metric}_hi"].to_numpy(dtype=float)
            colour, marker = styles[init]
            linestyle = "--" if init == "random" else "-"
            ax.plot(x, y, marker=marker, color=colour, ls=linestyle, lw=2, ms=6, label=init)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if len(fractions) > 1:
                ax.fill_between(x, lo, hi, where=ok, color=colour, alpha=0.15, lw=0)
            elif ok.any():
                ax.errorbar(
                    x[ok],
                    y[ok],
                    yerr=[y[ok] - lo[ok], hi[ok] - y[ok]],
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
        ax.set_title(_split_label(split), fontsize=11)
        ax.set_xlabel("Labelled fraction of the training set (log scale)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(_metric_label(metric))
    fig.suptitle(title or f"Label efficiency — {_metric_label(metric)}", fontsize=12)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=min(len(labels), 5),
            title="Initialisation (band: 95% CI over seeds; one seed: case bootstrap)",
            frameon=False,
        )
    return _save(fig, path)


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
                errs[0].append(mean - lo if ci else math.nan)
                errs[1].append(hi - mean if ci else math.nan)
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


# --------------------------------------------------------------------------- ROC


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


# --------------------------------------------------------------------------- reliability


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
    fig = _new_figure(5.6, 5.8)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999999", ls=":", lw=1, label="perfect calibration")
    for init, (rate, conf, counts, ece) in curves.items():
        colour, marker = styles[init]
        sizes = 12 + 200 * counts / counts.max()
        ax.plot(conf, rate, color=colour, lw=1.5, ls="--" if init == "random" else "-",
                label=f"{init} ({'pooled ' if multilabel else ''}ECE {ece:.3f})")  # fmt: skip
        ax.scatter(conf, rate, s=sizes, color=colour, marker=marker, alpha=0.7, lw=0)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    what = "finding probability (all findings pooled)" if multilabel else "top-class confidence"
    ax.set_xlabel(f"Mean {what}, 15 bins")
    ax.set_ylabel("Observed frequency" if multilabel else "Accuracy")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"Reliability — {_split_label(split)}", fontsize=10)
    ax.legend(loc="best", fontsize=9, title="Initialisation", title_fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------- subgroups


def _subgroup_table(runs: Mapping[str, Path], split: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a subgroup table (headline metric [case CI] per init) from the
    runs' ``eval_<split>.json``; no rows when no evaluation has subgroups."""
    import json

    found: dict[str, dict] = {}
    for init, run in runs.items():
        path = Path(run) / f"eval_{split_file_label(split)}.json"
        try:
            groups = json.loads(path.read_text()).get("subgroups") if path.is_file() else None
        except (OSError, ValueError):
            groups = None
        if groups:
            found[init] = groups
    if not found:
        return [], []
    first = next(iter(found.values()))
    values = [g for groups in first.values() for g in groups.values()]
    metric = next((m for m in METRICS if any(g.get(m) is not None for g in values)), "accuracy")
    header = ["Attribute", "Group", "Cases", *(f"{i}: {_metric_label(metric)}" for i in found)]
    rows = []
    for attribute, groups in first.items():
        for value, g in groups.items():
            cases = f"{g['n_cases']}" + (" (small)" if g.get("small") else "")
            cells = [attribute, value, cases]
            for groups_of_init in found.values():
                h = groups_of_init.get(attribute, {}).get(value, {})
                lo, hi = (h.get("ci") or {}).get(metric) or (None, None)
                v = h.get(metric)
                cells.append(
                    "—"
                    if v is None
                    else _cell(
                        v, math.nan if lo is None else lo, math.nan if hi is None else hi, 3, 2
                    )  # fmt: skip
                )
            rows.append(cells)
    return header, rows


def _plain_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] * 2 + ["---:"] * (len(header) - 2)
    return "\n".join([line(header), "|" + "|".join(align) + "|", *map(line, rows)]) + "\n"


def _plain_html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r[:2])
        + "".join(f'<td class="num">{e(c)}</td>' for c in r[2:]) + "</tr>"
        for r in rows
    )  # fmt: skip
    return (
        f'<table class="results">\n<thead>\n<tr>{head}</tr>\n</thead>\n<tbody>\n{body}'
        "\n</tbody>\n</table>\n"
    )


# --------------------------------------------------------------------------- report


@dataclass
class _Figure:
    file: str
    caption: str


@dataclass
class _Section:
    """A table of its own in the report: heading, Markdown and HTML, and what it means."""

    heading: str
    markdown: str
    html: str
    note: str


def _metric_sections(df: pd.DataFrame) -> list[_Section]:
    """Calibration (ECE, Brier) and operating point (sensitivity, specificity) tables, for
    the metrics and splits that have values, summarised like the main table."""
    out = []
    specs = [
        ("Calibration", CALIBRATION_METRICS,
         "Expected calibration error (15 equal-width confidence bins; top-class confidence "
         "for multiclass, each finding's probability for multilabel, averaged over findings) "
         "and Brier score (multiclass: summed over classes, 0-2; binary: 0-1). Lower is "
         "better for both."),
        ("Operating point", OPERATING_METRICS,
         "Sensitivity and specificity of binary evaluations (two classes, e.g. merged benign "
         "/ malignant) at the threshold that reaches the target sensitivity (default 0.95) "
         "on the validation split of the model's own data; eval_*.json records threshold "
         "and target."),
    ]  # fmt: skip
    for heading, metrics, note in specs:
        present = [m for m in metrics if m in df.columns and df[m].notna().any()]
        if not present:
            continue
        sub = df[df[present].notna().any(axis=1)]
        summary = _summarize(sub, present, 0.95)
        out.append(_Section(heading, markdown_table(summary, present),
                            html_table(summary, present), note))  # fmt: skip
    return out


def _subgroup_sections(df: pd.DataFrame, splits: list[str], results_csv: Path) -> list[_Section]:
    """A subgroup table per split, from one run per init (as the ROC curves)."""
    out = []
    if "run" not in df.columns:
        return out
    for split in splits:
        runs, how = _roc_runs(df, split, results_csv)
        header, rows = _subgroup_table(runs, split) if runs else ([], [])
        if rows:
            out.append(_Section(
                f"Subgroups — {_split_label(split)}", _plain_table(header, rows),
                _plain_html_table(header, rows),
                f"Per subgroup of the manifest's metadata, from one run per initialisation "
                f"({how}); brackets: 95% case-level bootstrap CI within the group. Groups "
                f"with fewer than 30 cases are marked (small): read them with care.",
            ))  # fmt: skip
    return out


def _read_results(results_csv: Path) -> pd.DataFrame:
    if not results_csv.is_file():
        raise MedsslError(f"results file {results_csv} does not exist")
    try:
        raw = pd.read_csv(results_csv)
    except pd.errors.EmptyDataError:
        raise MedsslError(f"results file {results_csv} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise MedsslError(f"cannot read results file {results_csv}: {e}") from None
    return _validate(raw, f"results file {results_csv}")


def _resolve_run(run: str, results_csv: Path) -> Path:
    """A run path as written in results.csv: absolute, or relative to the file or the cwd."""
    p = Path(run)
    if p.is_absolute():
        return p
    beside = results_csv.parent / p
    return beside if beside.exists() or not p.exists() else p


def _roc_runs(df: pd.DataFrame, split: str, results_csv: Path) -> tuple[dict[str, Path], str]:
    """One run per init for the ROC plot: its largest label fraction, lowest seed."""
    sub = df[(df["split"] == split) & df["run"].notna()]
    runs: dict[str, Path] = {}
    picked: list[tuple[str, str, str]] = []
    for init in _ordered_inits(sub["init"]):
        g = sub[sub["init"] == init]
        g = g.sort_values(["label_fraction", "seed"], ascending=[False, True])
        r = g.iloc[0]
        runs[init] = _resolve_run(str(r["run"]), results_csv)
        picked.append((init, _pct(r["label_fraction"]), str(r["seed"])))
    if len({(f, s) for _, f, s in picked}) == 1:
        _, f, s = picked[0]
        how = f"seed {s} at {f} of labels for every initialisation"
    else:
        how = "; ".join(f"{i}: seed {s}, {f} of labels" for i, f, s in picked)
    return runs, how


def _primary_metric(metrics: Sequence[str]) -> str:
    """The headline metric: the first of :data:`METRICS` present."""
    return next((m for m in METRICS if m in metrics), metrics[0])


def _how_to_read(summary: pd.DataFrame, inits: Sequence[str], has_shift: bool) -> list[str]:
    method = summary.attrs.get("ci_method", "Student t")
    seeds = sorted(summary["n_seeds"].unique())
    seeds_txt = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    paras = [
        "**In-distribution (test)** is held-out data from the same source as the fine-tuning "
        "data."
        + (
            " **Distribution shift** is a test set from a different source than the "
            "fine-tuning data (another hospital, device or population); the gap between the "
            "two shows how well each initialisation holds up beyond the distribution it was "
            "fine-tuned on."
            if has_shift
            else " This sweep has no distribution-shifted test set."
        ),
        "**Label fraction** is the share of the labelled training set used for fine-tuning; "
        "the pretraining data does not change with it. An initialisation whose curve stays "
        "high at small fractions needs fewer labels for the same accuracy (label "
        "efficiency).",
        f"Each cell is the **mean over fine-tuning seeds** ({seeds_txt} per setting) with a "
        f"**95% confidence interval over seeds** in brackets ({method} interval, "
        "mean ± t·sd/√n). It measures run-to-run variation (training randomness and, where the "
        "sweep draws a new labelled subset per seed, the subset), not the sampling "
        "uncertainty of the test set. With few seeds the intervals are wide. A cell with one "
        f"seed shows that run's **case-level bootstrap interval** instead, marked {CASE_CI_MARK}: "
        "the test-set sampling uncertainty of that one run (test cases resampled with all "
        "their images), which says nothing about run-to-run variation. Clearly separated "
        "intervals are good evidence of a real difference; overlapping ones do not prove two "
        "initialisations equal; the paired differences below are the sharper comparison.",
    ]
    known = [i for i in inits if i in INIT_DESCRIPTIONS]
    if known:
        paras.append(
            "Initialisations: " + "; ".join(f"**{i}**: {INIT_DESCRIPTIONS[i]}" for i in known) + "."
        )
    return paras


def _md_to_html_inline(text: str) -> str:
    """Escape, then turn the ``**bold**`` used in the fixed paragraphs into <strong>."""
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; font-size: 0.9em; }
.notes { background: #f6f6f6; border-left: 4px solid #0072B2; padding: 0.5em 1em; }
.howto { background: #fbfaf3; border: 1px solid #e6e1c5; padding: 0.3em 1em; }
table.results { border-collapse: collapse; font-size: 0.88em; margin: 1em 0; }
table.results th, table.results td { border: 1px solid #ccc; padding: 4px 8px; }
table.results th { background: #f0f0f0; } td.num { text-align: right; white-space: nowrap; }
table.results tr.group td { border-top: 2px solid #777; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #444; font-size: 0.9em; }
.warn { color: #a0522d; }
"""


def write_report(
    results_csv: Path, out_dir: Path, title: str, notes: str = "", paired_csv: Path | None = None
) -> Path:
    """Write the full report of a sweep into ``out_dir`` and return ``report.html``'s path.

    Files: ``results_summary.csv`` (:func:`summarize`), ``results.md`` (the table),
    ``label_efficiency_<metric>.png`` per metric, ``shift_<metric>.png`` for the headline
    metric when a shift split exists, ``roc_<split>.png`` per split from one run per init
    (largest label fraction, lowest seed), ``report.md`` (linking the PNGs) and
    ``report.html`` (self-contained: PNGs embedded as base64, so it can be mailed).

    A missing results file or column raises MedsslError. Missing or unreadable prediction
    files only skip the ROC plot: the report says so (and a warning is issued), because run
    directories are often not copied along with the results table.

    ``paired_csv`` (a sweep's ``paired.csv``, :mod:`medssl.paired`) adds a table of paired
    differences for the headline metric to ``results.md`` and the reports.
    """
    results_csv = Path(results_csv)
    out_dir = Path(out_dir)
    df = _read_results(results_csv)
    metrics = _resolve_metrics(df, None)
    summary = _summarize(df, metrics, 0.95)
    out_dir.mkdir(parents=True, exist_ok=True)

    summary.to_csv(out_dir / "results_summary.csv", index=False)
    table_md = markdown_table(summary, metrics)
    ci_note = (
        "Cells: mean over seeds [95% CI over seeds]; with one seed, that run's value [95% "
        f"case-level bootstrap CI]{CASE_CI_MARK}; — means not run. "
        "Labels: fraction of the labelled training set used for fine-tuning.\n"
    )
    paired, paired_metric = _read_paired(paired_csv, metrics)
    paired_md = ""
    if paired_metric:
        paired_md = (
            "\n## Paired differences\n\n" + paired_markdown_table(paired, paired_metric)
            + "\n" + _paired_note(paired_metric) + "\n"
        )  # fmt: skip
    inits = _ordered_inits(df["init"])
    splits = _ordered_splits(df["split"])
    sections = _metric_sections(df) + _subgroup_sections(df, splits, results_csv)
    sections_md = "".join(f"\n## {x.heading}\n\n{x.markdown}\n{x.note}\n" for x in sections)
    (out_dir / "results.md").write_text(
        table_md + "\n" + ci_note + paired_md + sections_md, encoding="utf-8"
    )

    has_shift = "shift" in splits and "test" in splits
    primary = _primary_metric(metrics)
    figures: list[_Figure] = []
    problems: list[str] = []
    for m in metrics:
        name = f"label_efficiency_{m}.png"
        plot_label_efficiency(summary, m, out_dir / name)
        figures.append(
            _Figure(
                name,
                f"{_metric_label(m)} against the fraction of labels used for fine-tuning, "
                "per initialisation (line: mean over seeds; band: 95% CI over seeds, or the "
                "run's case-level bootstrap CI where there is one seed).",
            )
        )
    if has_shift:
        name = f"shift_{primary}.png"
        plot_shift_bars(summary, primary, out_dir / name)
        figures.append(
            _Figure(
                name,
                f"{_metric_label(primary)} in-distribution vs under distribution shift, per "
                "initialisation and label fraction (error bars: 95% CI over seeds, or the "
                "run's case-level bootstrap CI where there is one seed).",
            )
        )
    if "run" in df.columns:
        for split in splits:
            runs, how = _roc_runs(df, split, results_csv)
            if not runs:
                continue
            name = f"roc_{split_file_label(split)}.png"
            try:
                plot_roc(runs, split, out_dir / name)
            except MedsslError as e:
                problems.append(f"ROC curves for the {split} split were skipped: {e}")
                continue
            figures.append(
                _Figure(
                    name,
                    f"ROC curves, {_split_label(split).lower()}, from one fine-tuning run per "
                    f"initialisation ({how}). Legend: that run's AUC, not the mean over seeds.",
                )
            )
            name = f"reliability_{split_file_label(split)}.png"
            try:
                plot_reliability(runs, split, out_dir / name)
            except MedsslError as e:
                problems.append(f"The reliability diagram of the {split} split was skipped: {e}")
                continue
            figures.append(
                _Figure(
                    name,
                    f"Reliability diagram, {_split_label(split).lower()}, from the same runs: "
                    "observed frequency against mean confidence per bin (marker area: images "
                    "in the bin); on the diagonal a model is calibrated. Legend: that run's ECE.",
                )
            )
    else:
        problems.append("ROC curves were skipped: the results table has no run column.")
    for p in problems:
        warnings.warn(p, stacklevel=2)

    dataset = ""
    if "dataset" in df.columns and df["dataset"].notna().any():
        dataset = str(df["dataset"].dropna().iloc[0])
    generated = datetime.now().strftime("%Y-%m-%d %H:%M")
    meta = (
        (f"Dataset: {dataset} · " if dataset else "")
        + f"{len(inits)} initialisations · label fractions "
        + ", ".join(_pct(f) for f in sorted(df["label_fraction"].unique()))
        + f" · source: {results_csv.name} · generated {generated}"
    )
    howto = _how_to_read(summary, inits, has_shift)

    md = [f"# {title}", "", meta, ""]
    if notes.strip():
        md += [notes.strip(), ""]
    md += ["## How to read this", ""]
    for p in howto:
        md += [p, ""]
    md += ["## Results", "", table_md, ci_note]
    if paired_metric:
        md += [paired_md.lstrip("\n")]
    if sections_md:
        md += [sections_md.lstrip("\n")]
    if figures:
        md += ["## Figures", ""]
        for f in figures:
            md += [f"![{f.caption}]({f.file})", "", f"*{f.caption}*", ""]
    for p in problems:
        md += [f"> Note: {p}", ""]
    (out_dir / "report.md").write_text("\n".join(md), encoding="utf-8")

    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f'<p class="meta">{e(meta)}</p>']
    if notes.strip():
        paras = [p.strip() for p in notes.strip().split("\n\n") if p.strip()]
        body.append(
            '<div class="notes">'
            + "".join(f"<p>{e(p)}</p>".replace("\n", "<br>") for p in paras)
            + "</div>"
        )
    body.append('<h2>How to read this</h2><div class="howto">')
    body += [f"<p>{_md_to_html_inline(p)}</p>" for p in howto]
    body.append("</div>")
    body += ["<h2>Results</h2>", html_table(summary, metrics), f"<p>{e(ci_note)}</p>"]
    if paired_metric:
        body += [
            "<h2>Paired differences</h2>", paired_html_table(paired, paired_metric),
            f"<p>{e(_paired_note(paired_metric))}</p>",
        ]  # fmt: skip
    for x in sections:
        body += [f"<h2>{e(x.heading)}</h2>", x.html, f"<p>{e(x.note)}</p>"]
    if figures:
        body.append("<h2>Figures</h2>")
    for f in figures:
        data = base64.b64encode((out_dir / f.file).read_bytes()).decode("ascii")
        body.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{e(f.caption)}">'
            f"<figcaption>{e(f.caption)}</figcaption></figure>"
        )
    body += [f'<p class="warn">Note: {e(p)}</p>' for p in problems]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return html_path
