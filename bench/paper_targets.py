"""Judge issue 17's targets (the paper's comparisons) on a finished sweep of
protocols/ham10000-paper-32px.yaml, from its paired.csv and results.csv.

    python bench/paper_targets.py sweeps/ham32-paper [--fraction 0.1]

A folder without paired.csv or results.csv, a sweep of another protocol or a fraction it
does not hold is one line (exit 2).

Each target is a paired difference of fine-tuned (or linear-probe) macro AUC at one label
fraction, one value per seed (the pretraining seed and the fine-tuning seed go together).
Printed per target and split: the mean over seeds, its 95% t-interval over seeds, the
standard deviation of the per-seed differences, whether the target is met, and its power:

* ``power``: the chance that this many seeds give an interval above 0 if the true
  difference were the measured mean (normal approximation to the t-test:
  Φ(mean / (sd/√n) − t)), so a miss with low power says "undecided at this budget", a
  miss with high power says "not there";
* ``seeds to decide``: the fewest seeds whose t-interval half-width would fall below
  |mean| at this standard deviation (the budget that would settle the sign if the mean
  held), "—" where the interval already excludes 0.

A target of size ("≥ +0.02") is met when the interval is above 0 and the mean reaches the
size; a mean below the size misses it however many seeds run.

The "best SSL init" of the third target is chosen on **validation** (the mean over seeds of
``selected_val`` in results.csv, the score that chose each learning rate), never on test.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from evidence_tables import SPLIT_NAMES, _num
from scipy import stats

from medssl.errors import MedsslError
from medssl.paired import t_interval, t_quantile_975

SSL_INITS = ["natural", "derm", "natderm", "micle", "simclr_cont"]


def per_seed(paired: pd.DataFrame, a: str, b: str, mode: str, fraction: float, split: str,
             metric: str = "auc_macro") -> np.ndarray:  # fmt: skip
    """The per-seed paired differences a − b (NaN-free, in seed order)."""
    q = paired[(paired.a == a) & (paired.b == b) & (paired["mode"] == mode)
               & np.isclose(paired.label_fraction, fraction) & (paired.split == split)
               & (paired.metric == metric) & (paired.seed.astype(str) != "mean")]  # fmt: skip
    return q.sort_values("seed")["diff"].dropna().to_numpy(float)


#: the most seeds :func:`seeds_to_decide` looks at
MAX_SEEDS = 1000


def seeds_to_decide(gap: float, sd: float) -> int | None:
    """Fewest seeds n whose 95% t half-width t(n−1)·sd/√n falls below ``gap`` (> 0); None
    when no number up to :data:`MAX_SEEDS` would (a mean at 0 is never told from 0)."""
    if gap <= 0 or sd == 0:
        return None
    for n in range(2, MAX_SEEDS + 1):
        if t_quantile_975(n - 1) * sd / math.sqrt(n) < gap:
            return n
    return None


def judge(diffs: np.ndarray, bound: float) -> dict[str, object]:
    """Mean, t-interval (paired.csv's own, :func:`medssl.paired.t_interval`), sd, met
    (interval above 0 and mean >= ``bound``), power."""
    n = len(diffs)
    mean, low, high = t_interval(diffs)
    sd = float(diffs.std(ddof=1)) if n > 1 else float("nan")
    t = t_quantile_975(n - 1) if n > 1 else float("nan")
    # the target is "difference >= bound, interval above 0" (bound 0: "> 0, interval above 0")
    met = bool(n > 1 and low > 0 and mean >= bound)
    power = (
        float(stats.norm.cdf(mean / (sd / math.sqrt(n)) - t)) if n > 1 and sd > 0
        else float("nan")
    )  # fmt: skip
    decided = n > 1 and (low > 0 or high < 0)
    need = "—" if decided else seeds_to_decide(abs(mean), sd) or f"> {MAX_SEEDS}"
    return {"n": n, "mean": mean, "low": low, "high": high, "sd": sd, "met": met,
            "power": power, "need": need}  # fmt: skip


def row(label: str, split: str, bound: float, verdict: dict[str, object]) -> str:
    v = verdict
    interval = f"{_num(v['mean'])} [{_num(v['low'])}, {_num(v['high'])}]"
    need = str(v["need"])
    return (
        f"| {label} | {SPLIT_NAMES.get(split, split)} | ≥ {_num(bound)} | {interval} | "
        f"{v['sd']:.3f} | {v['n']} | {'**met**' if v['met'] else 'missed'} | "
        f"{v['power']:.2f} | {need} |"
    )


def best_ssl_on_validation(results: pd.DataFrame, fraction: float) -> tuple[str, pd.Series]:
    """The SSL init with the highest mean validation score (fine-tuned, at ``fraction``)."""
    r = results[(results["mode"] == "finetune") & np.isclose(results.label_fraction, fraction)
                & (results.split == "test") & results.init.isin(SSL_INITS)]  # fmt: skip
    val = r.groupby("init")["selected_val"].mean().sort_values(ascending=False)
    if val.empty:
        fractions = ", ".join(f"{x:g}" for x in sorted(set(results.label_fraction)))
        raise MedsslError(
            f"results.csv has no fine-tuned test rows of {', '.join(SSL_INITS)} at fraction "
            f"{fraction:g} (its fractions: {fractions or 'none'}): is it a sweep of "
            "protocols/ham10000-paper-32px.yaml?"
        )
    return str(val.index[0]), val


def read_table(sweep: Path, name: str) -> pd.DataFrame:
    """``sweep/name`` (a CSV the sweep writes); one line when it is missing."""
    if not sweep.is_dir():
        raise MedsslError(f"{sweep}: no such folder")
    path = sweep / name
    if not path.is_file():
        raise MedsslError(f"{path} not found: {sweep} is not a finished sweep")
    return pd.read_csv(path)


def main() -> int:
    """Print the table; a missing file or row is one line (exit 2), as medssl's CLI does."""
    try:
        report(parse_args())
    except MedsslError as exc:
        print(f"paper_targets: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head and the like
        return 0
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a sweep folder of the paper protocol")
    parser.add_argument("--fraction", type=float, default=0.1, help="label fraction")
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        raise MedsslError(f"--fraction: must be in (0, 1], got {args.fraction:g}")
    return args


def report(args: argparse.Namespace) -> None:
    paired = read_table(args.sweep, "paired.csv")
    results = read_table(args.sweep, "results.csv")
    f = args.fraction
    best, val = best_ssl_on_validation(results, f)
    print(f"best SSL init on validation at {f:g} labels (mean val macro AUC over seeds): "
          + ", ".join(f"{i} {s:.4f}" for i, s in val.items()))  # fmt: skip
    targets = [
        ("natderm − supervised", "natderm", "supervised", "finetune", 0.02, ["test", "shift"]),
        ("natderm − natural", "natderm", "natural", "finetune", 0.0, ["test", "shift"]),
        (f"{best} (best SSL on val) − random", best, "random", "finetune", 0.03,
         ["test", "shift", "external:ph2", "external:ph2-malignant"]),
        ("micle − simclr_cont", "micle", "simclr_cont", "finetune", 0.0, ["test", "shift"]),
        ("micle − simclr_cont, linear probe", "micle", "simclr_cont", "linear", 0.0,
         ["test", "shift"]),
    ]  # fmt: skip
    print(f"\n| target ({f * 100:g}% labels) | split | bound | mean [95% t-interval over "
          "seeds] | sd | seeds | verdict | power | seeds to decide |")
    print("|---|---|---:|---|---:|---:|---|---:|---:|")
    for label, a, b, mode, bound, splits in targets:
        for split in splits:
            diffs = per_seed(paired, a, b, mode, f, split)
            if len(diffs) == 0:
                print(f"| {label} | {SPLIT_NAMES.get(split, split)} | — | no rows | | | | | |")
                continue
            print(row(label, split, bound, judge(diffs, bound)))


if __name__ == "__main__":
    sys.exit(main())
