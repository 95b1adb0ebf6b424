"""Markdown tables of a sweep's results.csv and paired.csv, as docs/RESULTS.md shows them.

    python bench/evidence_tables.py sweeps/ham32-evidence [--metric auc_macro]
    python bench/evidence_tables.py sweeps/ham32-paper --metric accuracy

Per mode (fine-tuning, linear probe): each init's metric per label fraction and split, mean
over seeds with each seed's value; then every paired difference paired.csv holds (each init
- random, MICLe - SimCLR, a protocol's ``compare`` pairs) as mean over seeds [95% t interval
over seeds] with each seed's difference, bold where the interval excludes 0. Inits come in
the protocol's order (protocol.yaml). With a pretraining.csv: each pretraining run's last
loss, last k-NN macro AUC and skipped steps; with a selection.csv: how often each grid
candidate was chosen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

SPLIT_NAMES = {
    "test": "test", "shift": "rosendahl", "external:ph2": "PH2 (nv/mel)",
    "external:ph2-malignant": "PH2 benign/malignant",
}  # fmt: skip
MODE_NAMES = {"finetune": "Full fine-tuning", "linear": "Linear probe (frozen backbone)"}


def _num(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def score_table(
    r: pd.DataFrame, mode: str, splits: list[str], metric: str, inits: list[str]
) -> list[str]:
    lines = ["| init | labels | " + " | ".join(SPLIT_NAMES.get(s, s) for s in splits) + " |"]
    lines.append("|---|---:|" + "---:|" * len(splits))
    for f in sorted(set(r.label_fraction)):
        for init in inits:
            cells = []
            for s in splits:
                sel = (r["mode"] == mode) & np.isclose(r.label_fraction, f)
                v = r[sel & (r.init == init) & (r.split == s)].sort_values("seed")[metric]
                cells.append(f"{v.mean():.3f} ({', '.join(f'{x:.3f}' for x in v)})"
                             if len(v) else "—")  # fmt: skip
            lines.append(f"| {init} | {f * 100:g}% | " + " | ".join(cells) + " |")
    return lines


def paired_table(p: pd.DataFrame, mode: str, splits: list[str], metric: str) -> list[str]:
    lines = ["| comparison | labels | " + " | ".join(SPLIT_NAMES.get(s, s) for s in splits) + " |"]
    lines.append("|---|---:|" + "---:|" * len(splits))
    for a, b in dict.fromkeys(zip(p.a, p.b, strict=True)):
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
                if pd.isna(m.ci_low):  # one seed so far: no interval over seeds
                    cells.append(f"{_num(m['diff'])} (1 seed)")
                    continue
                bold = "**" if (m.ci_low > 0 or m.ci_high < 0) else ""
                seeds = ", ".join(_num(x) for x in per["diff"])
                cells.append(
                    f"{bold}{_num(m['diff'])} [{_num(m.ci_low)}, {_num(m.ci_high)}]{bold} ({seeds})"
                )
            lines.append(f"| {a} − {b} | {f * 100:g}% | " + " | ".join(cells) + " |")
    return lines


def pretraining_table(curves: pd.DataFrame) -> list[str]:
    lines = ["| run | method | data | epochs | last loss | last k-NN macro AUC | skipped steps |",
             "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for run, rows in curves.groupby("run", sort=False):
        # supervised runs have no k-NN monitor: their validation AUC stands in
        knn = rows.knn_auc_macro.dropna()
        knn = knn if len(knn) else rows.val_auc_macro.dropna()
        last = rows.iloc[-1]
        score = f"{knn.iloc[-1]:.3f}" if len(knn) else "—"
        lines.append(
            f"| {run} | {last.method} | {last.dataset} | {int(last.epoch)} | {last.loss:.3f} "
            f"| {score} | {int(rows.skipped_steps.fillna(0).sum())} |"
        )
    return lines


def selection_table(sel: pd.DataFrame) -> list[str]:
    chosen = sel[sel.selected.astype(str) == "True"]
    counts = chosen.groupby(["mode", "init", "candidate"]).size().unstack(fill_value=0)
    cols = list(counts.columns)
    lines = ["| mode | init | " + " | ".join(map(str, cols)) + " |",
             "|---|---|" + "---:|" * len(cols)]  # fmt: skip
    for (mode, init), row in counts.iterrows():
        lines.append(f"| {mode} | {init} | " + " | ".join(str(row[c]) for c in cols) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a finished sweep folder")
    parser.add_argument("--metric", default="auc_macro")
    args = parser.parse_args()
    r = pd.read_csv(args.sweep / "results.csv")
    p = pd.read_csv(args.sweep / "paired.csv")
    splits = [s for s in SPLIT_NAMES if s in set(r.split)]
    protocol = args.sweep / "protocol.yaml"
    inits = list(dict.fromkeys(r.init))
    if protocol.is_file():
        written = yaml.safe_load(protocol.read_text())["inits"]
        order = [i if isinstance(i, str) else next(iter(i)) for i in written]
        inits = [i for i in order if i in inits]
    if (args.sweep / "pretraining.csv").is_file():
        print("\n### Pretraining runs\n")
        print("\n".join(pretraining_table(pd.read_csv(args.sweep / "pretraining.csv"))))
    if (args.sweep / "selection.csv").is_file():
        print("\n### Learning rate chosen on validation (runs per candidate)\n")
        print("\n".join(selection_table(pd.read_csv(args.sweep / "selection.csv"))))
    for mode in [m for m in MODE_NAMES if m in set(r["mode"])]:
        print(f"\n### {MODE_NAMES[mode]}: {args.metric}\n")
        print("\n".join(score_table(r, mode, splits, args.metric, inits)))
        print(f"\n### {MODE_NAMES[mode]}: paired differences\n")
        print("\n".join(paired_table(p, mode, splits, args.metric)))


if __name__ == "__main__":
    main()
