"""Markdown tables of a sweep's results.csv and paired.csv, as docs/RESULTS.md shows them.

    python bench/evidence_tables.py sweeps/ham32-evidence [--metric auc_macro]

Per mode (fine-tuning, linear probe): each init's metric per label fraction and split, mean
over seeds with each seed's value; then the paired differences (SimCLR - random, MICLe -
random, MICLe - SimCLR) as mean over seeds [95% t interval over seeds] with each seed's
difference, bold where the interval excludes 0; then, per comparison, how many seeds' own
paired case-bootstrap intervals exclude 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

SPLIT_NAMES = {
    "test": "test", "shift": "rosendahl", "external:ph2": "PH2 (nv/mel)",
    "external:ph2-malignant": "PH2 benign/malignant",
}  # fmt: skip
MODE_NAMES = {"finetune": "Full fine-tuning", "linear": "Linear probe (frozen backbone)"}
INITS = ["random", "simclr", "micle"]
COMPARISONS = [("simclr", "random"), ("micle", "random"), ("micle", "simclr")]


def _num(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def score_table(r: pd.DataFrame, mode: str, splits: list[str], metric: str) -> list[str]:
    lines = ["| init | labels | " + " | ".join(SPLIT_NAMES.get(s, s) for s in splits) + " |"]
    lines.append("|---|---:|" + "---:|" * len(splits))
    for f in sorted(set(r.label_fraction)):
        for init in INITS:
            cells = []
            for s in splits:
                sel = (r["mode"] == mode) & np.isclose(r.label_fraction, f)
                v = r[sel & (r.init == init) & (r.split == s)].sort_values("seed")[metric]
                cells.append(f"{v.mean():.3f} ({', '.join(f'{x:.3f}' for x in v)})")
            lines.append(f"| {init} | {f * 100:g}% | " + " | ".join(cells) + " |")
    return lines


def paired_table(p: pd.DataFrame, mode: str, splits: list[str], metric: str) -> list[str]:
    lines = ["| comparison | labels | " + " | ".join(SPLIT_NAMES.get(s, s) for s in splits) + " |"]
    lines.append("|---|---:|" + "---:|" * len(splits))
    for a, b in COMPARISONS:
        for f in sorted(set(p.label_fraction)):
            cells = []
            for s in splits:
                q = p[(p["mode"] == mode) & np.isclose(p.label_fraction, f) & (p.split == s)
                      & (p.metric == metric) & (p.a == a) & (p.b == b)]  # fmt: skip
                mean = q[q.seed.astype(str) == "mean"]
                per = q[q.seed.astype(str) != "mean"].sort_values("seed")
                if mean.empty:
                    cells.append("—")
                    continue
                m = mean.iloc[0]
                bold = "**" if (m.ci_low > 0 or m.ci_high < 0) else ""
                seeds = ", ".join(_num(x) for x in per["diff"])
                cells.append(
                    f"{bold}{_num(m['diff'])} [{_num(m.ci_low)}, {_num(m.ci_high)}]{bold} ({seeds})"
                )
            lines.append(f"| {a} − {b} | {f * 100:g}% | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a finished sweep folder")
    parser.add_argument("--metric", default="auc_macro")
    args = parser.parse_args()
    r = pd.read_csv(args.sweep / "results.csv")
    p = pd.read_csv(args.sweep / "paired.csv")
    splits = [s for s in SPLIT_NAMES if s in set(r.split)]
    for mode in [m for m in MODE_NAMES if m in set(r["mode"])]:
        print(f"\n### {MODE_NAMES[mode]}: {args.metric}\n")
        print("\n".join(score_table(r, mode, splits, args.metric)))
        print(f"\n### {MODE_NAMES[mode]}: paired differences\n")
        print("\n".join(paired_table(p, mode, splits, args.metric)))


if __name__ == "__main__":
    main()
