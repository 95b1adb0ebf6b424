"""Paired differences between the initialisations of a sweep, with intervals (``paired.csv``).

Two fine-tunes with the same seed share the labelled subset, the head initialisation and
the data order (and, with ``pretrain_seeds``, the pretraining seed), so their difference
per seed is much less noisy than the difference of two means. For every (mode, label
fraction, split) and metric this module compares each init with ``random`` (and ``micle``
with ``simclr`` when both exist):

* per seed: ``diff`` = a - b, with a **paired case-level bootstrap** interval: cases are
  resampled once per draw and both models' stored predictions (``predictions_<split>.npz``)
  are scored on the same resample, so the interval describes the test-set sampling
  uncertainty of that seed's difference (``ci_kind = paired-case-bootstrap``);
* ``seed = mean``: the mean difference over seeds with a 95% Student-t interval over the
  seeds' differences (``ci_kind = t-over-seeds``): the run-to-run variation, pretraining
  included when the protocol has ``pretrain_seeds``. With one seed it has no interval.

The t quantiles come from a table (scipy is not a dependency of medssl).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from medssl.errors import MedsslError
from medssl.metrics import (
    _CaseLayout,
    _FastMulticlass,
    _FastMultilabel,
    _interval,
    _resolve_mean_over,
)

PAIRED_COLUMNS = [
    "mode", "label_fraction", "split", "metric", "a", "b", "seed", "diff", "ci_low", "ci_high",
    "ci_kind",
]  # fmt: skip
PAIRED_METRICS = [
    "auc_mean_selected", "auc_macro", "balanced_accuracy", "accuracy", "ece", "brier",
]  # fmt: skip
T_OVER_SEEDS = "t-over-seeds"
PAIRED_BOOTSTRAP = "paired-case-bootstrap"

#: two-sided 95% Student-t quantiles (the 0.975 quantile) by degrees of freedom
_T975 = {
    1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 6: 2.446912,
    7: 2.364624, 8: 2.306004, 9: 2.262157, 10: 2.228139, 11: 2.200985, 12: 2.178813,
    13: 2.160369, 14: 2.144787, 15: 2.131450, 16: 2.119905, 17: 2.109816, 18: 2.100922,
    19: 2.093024, 20: 2.085963, 21: 2.079614, 22: 2.073873, 23: 2.068658, 24: 2.063899,
    25: 2.059539, 26: 2.055529, 27: 2.051831, 28: 2.048407, 29: 2.045230, 30: 2.042272,
}  # fmt: skip


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom.

    A table up to 30; beyond, the Cornish-Fisher expansion around the normal quantile
    (within 2e-6 of the exact value from 30 degrees of freedom on).
    """
    if dof < 1:
        raise MedsslError(f"a t interval needs at least 1 degree of freedom, got {dof}")
    if dof in _T975:
        return _T975[dof]
    z, v = NormalDist().inv_cdf(0.975), float(dof)
    return (
        z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )  # fmt: skip


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): mean ± t·sd/√n over the non-NaN values; low/high NaN below two."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan, math.nan
    half = t_quantile_975(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return mean, mean - half, mean + half


# --------------------------------------------------------------------------- bootstrap


def load_predictions(path: Path) -> dict[str, Any]:
    """``probs``, ``targets`` and ``case_ids`` of a ``predictions_<split>.npz`` file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in ("probs", "targets", "case_ids") if k in z.files}
            out["class_names"] = [str(c) for c in z["class_names"]] if "class_names" in z else []
    except (OSError, ValueError) as exc:
        raise MedsslError(f"cannot read predictions file {path}: {exc}") from None
    missing = [k for k in ("probs", "targets", "case_ids") if k not in out]
    if missing:
        raise MedsslError(f"predictions file {path} lacks array(s) {', '.join(missing)}")
    return out


def _fast_metrics(
    pred: Mapping[str, Any], mean_over: list[str] | None
) -> Callable[[np.ndarray], Mapping[str, float | None]]:
    """The metrics of :mod:`medssl.metrics` under row weights (the bootstrap's fast path)."""
    probs = np.asarray(pred["probs"], dtype=np.float64)
    targets = np.asarray(pred["targets"])
    if targets.ndim == 1:
        return _FastMulticlass(probs, targets.astype(np.int64))
    names = list(pred.get("class_names") or [str(i) for i in range(probs.shape[1])])
    selected = _resolve_mean_over(mean_over, names)
    index = None if selected is None else [names.index(s) for s in selected]
    return _FastMultilabel(probs, targets.astype(np.float64), index)


def paired_bootstrap(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    metrics: list[str],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    mean_over: list[str] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile interval of metric(a) - metric(b) over shared case-level resamples.

    ``a`` and ``b`` are predictions (``probs``, ``targets``, ``case_ids``) of two models on
    the same images in the same order; each draw resamples cases once and scores both on
    it. Draws where a metric is undefined are dropped (past half: NaN), as in
    :func:`medssl.metrics.bootstrap_ci`.

    Stored case ids are salted hashes with a salt per run (:mod:`medssl.case_ids`), so the
    two files are matched by their targets and their grouping of rows into cases (rows
    i and j share a case in ``a`` exactly when they do in ``b``), not by the ids.
    """
    same = (
        same_case_grouping(np.asarray(a["case_ids"]), np.asarray(b["case_ids"]))
        and np.array_equal(np.asarray(a["targets"]), np.asarray(b["targets"]), equal_nan=True)
    )  # fmt: skip
    if not same:
        raise MedsslError("paired bootstrap: the two prediction files hold different images")
    # cases numbered by first appearance, not by id: the ids are salted per run, and sorted
    # hashes would put the cases in another order (so other draws) for every pair of runs
    codes, _ = pd.factorize(np.asarray(a["case_ids"]).astype(str))
    layout = _CaseLayout(codes)
    fa, fb = _fast_metrics(a, mean_over), _fast_metrics(b, mean_over)
    rng = np.random.default_rng(seed)
    diffs = np.full((len(metrics), int(n_boot)), np.nan)
    for k in range(int(n_boot)):
        w = layout.row_weights(layout.draw(rng))
        ma, mb = fa(w), fb(w)
        for i, m in enumerate(metrics):
            va, vb = ma.get(m), mb.get(m)
            if va is not None and vb is not None:
                diffs[i, k] = float(va) - float(vb)
    return {m: _interval(diffs[i], alpha) for i, m in enumerate(metrics)}


def same_case_grouping(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two id arrays group the same rows into cases (whatever the ids are)."""
    if a.shape != b.shape:
        return False
    codes_a, _ = pd.factorize(a.astype(str))
    codes_b, _ = pd.factorize(b.astype(str))
    return bool(np.array_equal(codes_a, codes_b))


# --------------------------------------------------------------------------- the table


def comparisons(
    inits: list[str], extra: list[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """(a, b) pairs: every init against ``random``, ``micle`` against ``simclr``, then the
    ``extra`` pairs (a protocol's ``compare``) whose inits are both present."""
    pairs = [(i, "random") for i in inits if i != "random" and "random" in inits]
    if "micle" in inits and "simclr" in inits:
        pairs.append(("micle", "simclr"))
    for a, b in extra or []:
        if a in inits and b in inits and (a, b) not in pairs:
            pairs.append((a, b))
    return pairs


class _Predictions:
    """Prediction files (and the mean_over of their evaluation) read once each."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.cache: dict[tuple[str, str], tuple[dict[str, Any], list[str] | None]] = {}

    def get(self, run: str, split: str) -> tuple[dict[str, Any], list[str] | None] | None:
        from medssl.report import split_file_label

        key = (run, split)
        if key not in self.cache:
            folder = Path(run) if Path(run).is_absolute() else self.base / run
            label = split_file_label(split)
            path = folder / f"predictions_{label}.npz"
            if not path.is_file():
                return None
            evaluation = folder / f"eval_{label}.json"
            mean_over = None
            if evaluation.is_file():
                mean_over = json.loads(evaluation.read_text()).get("mean_over")
            self.cache[key] = (load_predictions(path), mean_over)
        return self.cache[key]


def _row(key: tuple, metric: str, a: str, b: str, seed: Any, diff: float, ci: tuple,
         kind: str) -> dict[str, Any]:  # fmt: skip
    mode, fraction, split = key
    ok = all(math.isfinite(x) for x in ci)
    return {
        "mode": mode, "label_fraction": fraction, "split": split, "metric": metric, "a": a,
        "b": b, "seed": seed, "diff": diff, "ci_low": ci[0] if ok else "",
        "ci_high": ci[1] if ok else "", "ci_kind": kind,
    }  # fmt: skip


def paired_differences(
    results: pd.DataFrame, base: Path, n_boot: int = 1000,
    extra: list[tuple[str, str]] | None = None,
) -> pd.DataFrame:  # fmt: skip
    """The rows of ``paired.csv`` for a results table whose ``run`` paths are under ``base``
    (``extra``: more (a, b) comparisons, see :func:`comparisons`).

    ``n_boot = 0`` leaves the per-seed bootstrap intervals out (empty cells); a seed whose
    prediction files are missing gets its difference without an interval.
    """
    df = results.copy()
    df["mode"] = df["mode"].fillna("finetune").astype(str) if "mode" in df else "finetune"
    df["init"] = df["init"].astype(str)
    metrics = [m for m in PAIRED_METRICS if m in df and pd.to_numeric(df[m]).notna().any()]
    predictions = _Predictions(base)
    rows: list[dict[str, Any]] = []
    for key, group in df.groupby(["mode", "label_fraction", "split"], sort=False):
        by_init = {i: g.set_index("seed") for i, g in group.groupby("init", sort=False)}
        for a, b in comparisons(list(by_init), extra):
            seeds = sorted(set(by_init[a].index) & set(by_init[b].index))
            per_seed = {m: [] for m in metrics}
            for seed in seeds:
                ra, rb = by_init[a].loc[seed], by_init[b].loc[seed]
                cis = _seed_cis(predictions, ra, rb, key[2], metrics, n_boot)
                for m in metrics:
                    diff = float(pd.to_numeric(ra[m])) - float(pd.to_numeric(rb[m]))
                    if math.isnan(diff):
                        continue
                    per_seed[m].append(diff)
                    ci = cis.get(m, (math.nan, math.nan))
                    rows.append(_row(key, m, a, b, int(seed), diff, ci, PAIRED_BOOTSTRAP))
            for m in metrics:
                if per_seed[m]:
                    mean, lo, hi = t_interval(np.asarray(per_seed[m]))
                    rows.append(_row(key, m, a, b, "mean", mean, (lo, hi), T_OVER_SEEDS))
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _seed_cis(
    predictions: _Predictions, ra: pd.Series, rb: pd.Series, split: str, metrics: list[str],
    n_boot: int,
) -> dict[str, tuple[float, float]]:  # fmt: skip
    """The paired bootstrap intervals of one seed ({} when predictions are missing)."""
    if n_boot < 1 or "run" not in ra or pd.isna(ra["run"]) or pd.isna(rb["run"]):
        return {}
    pa, pb = predictions.get(str(ra["run"]), split), predictions.get(str(rb["run"]), split)
    if pa is None or pb is None:
        return {}
    try:
        return paired_bootstrap(pa[0], pb[0], metrics, n_boot=n_boot, mean_over=pa[1])
    except MedsslError:
        return {}


def write_paired(
    results_csv: Path, out_dir: Path, n_boot: int = 1000,
    comparisons: list[tuple[str, str]] | None = None,
) -> Path:  # fmt: skip
    """Write ``paired.csv`` into ``out_dir`` from a sweep's ``results.csv``; return its path.
    ``comparisons``: (a, b) pairs beyond the default ones (a protocol's ``compare``)."""
    results = pd.read_csv(results_csv)
    table = paired_differences(results, Path(results_csv).parent, n_boot, comparisons)
    path = Path(out_dir) / "paired.csv"
    tmp = path.with_suffix(".csv.tmp")
    table.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL)
    tmp.replace(path)
    return path
