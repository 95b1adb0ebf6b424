"""A sweep's results table, checked and summarised over seeds; the naming shared by the report.

:func:`summarize` gives the mean and confidence interval per (init, label fraction, split):
a Student-t interval over seeds, or one seed's case-level bootstrap interval (marked
:data:`CASE_CI_MARK`). The labels and orders of inits, splits and metrics here are the ones
every table, plot and page of :mod:`medssl.report` uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd

from medssl.errors import MedsslError

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
#: the values a metric can take (an interval over few seeds can reach past them; figures clip)
METRIC_RANGES: dict[str, tuple[float, float]] = {
    m: (0.0, 1.0) for m in [*METRICS, "ece", *OPERATING_METRICS]
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


def _primary_metric(metrics: Sequence[str]) -> str:
    """The headline metric: the first of :data:`METRICS` present (else the first given)."""
    return next((m for m in METRICS if m in metrics), metrics[0])


def interval_side(low: float, high: float) -> int:
    """+1 when an interval lies above 0, -1 when below, 0 when it holds 0 or is missing:
    whether a difference is decided. The one rule behind the headline's words, the paired
    table's highlights and the forest plot's filled markers."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0
    return 1 if low > 0 else (-1 if high < 0 else 0)


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


def paired_estimates(paired: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per comparison of ``metric`` in a ``paired.csv`` (:mod:`medssl.paired`).

    Columns ``mode, label_fraction, split, a, b`` and ``diff, low, high``: the mean
    difference over seeds with its Student-t interval over seeds (``kind`` ``seeds``), or,
    where a comparison has one seed, that seed's paired case-bootstrap interval (``kind``
    ``cases``); ``n_seeds``; ``side`` (:func:`interval_side`). Empty without rows.
    """
    columns = ["mode", "label_fraction", "split", "a", "b", "diff", "low", "high", "kind",
               "n_seeds", "side"]  # fmt: skip
    if paired.empty or "metric" not in paired:
        return pd.DataFrame(columns=columns)
    sub = paired[paired["metric"] == metric].copy()
    sub["mode"] = sub["mode"].fillna("finetune").astype(str) if "mode" in sub else "finetune"
    sub["seed"] = sub["seed"].astype(str)
    rows = []
    for (mode, fraction, split, a, b), g in sub.groupby(
        ["mode", "label_fraction", "split", "a", "b"], sort=False
    ):
        mean, seeds = g[g["seed"] == "mean"], g[g["seed"] != "mean"]
        if len(seeds) == 1:
            r, kind = seeds.iloc[0], "cases"
        elif not mean.empty:
            r, kind = mean.iloc[0], "seeds"
        else:
            continue
        diff, low, high = (float(pd.to_numeric(r[c], errors="coerce"))
                           for c in ("diff", "ci_low", "ci_high"))  # fmt: skip
        rows.append([str(mode), float(fraction), str(split), str(a), str(b), diff, low, high,
                     kind, len(seeds), interval_side(low, high)])  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
