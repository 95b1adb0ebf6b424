"""Markdown and HTML tables of a report: the summary, paired differences, subgroups.

Cells are ``mean [low, high]`` (``†`` where the interval is one run's case-level bootstrap),
``—`` for a combination that was not run.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medssl.report.summary import (
    CASE_CI_MARK,
    METRICS,
    _metric_label,
    _ordered_inits,
    _ordered_splits,
    _pct,
    _split_label,
    _summary_metrics,
    interval_side,
    split_file_label,
)

#: characters that make inline Markdown (escape, code, emphasis, a table's columns)
_MD_INLINE = re.compile(r"([\\`*_|~])")
#: what starts a block at the beginning of a line: a heading, list, rule or reference
_MD_BLOCK = re.compile(r"^([#+=\-\[])", re.M)
_MD_NUMBERED = re.compile(r"^(\d+)([.)])", re.M)


def md_text(text: object, block: bool = False) -> str:
    """User text (a name, a title, a protocol's notes) as Markdown that shows it as written.

    HTML characters become entities (no tag or autolink survives), Markdown's inline marks
    and ``](`` / ``][`` (links) are backslash-escaped. ``block``: text that starts lines
    (notes), whose lines lose their indentation (a code block) and a leading ``#``, ``-``,
    ``1.`` or ``[`` (a heading, list or link reference); otherwise the text is one line, as
    a heading or a table cell needs. The one escape for all text in report.md and
    results.md that medssl did not write itself.
    """
    out = html.escape(str(text), quote=False)
    out = _MD_INLINE.sub(r"\\\1", out).replace("](", "]\\(").replace("][", "]\\[")
    if not block:
        return " ".join(out.split())
    out = "\n".join(line.strip() for line in out.split("\n"))
    return _MD_NUMBERED.sub(r"\1\\\2", _MD_BLOCK.sub(r"\\\1", out))


def _md_row(cells: Sequence[str]) -> str:
    """One row of a Markdown table, each cell escaped (:func:`md_text`)."""
    return "| " + " | ".join(md_text(c) for c in cells) + " |"


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

    align = ["---", "---:"] + ["---:"] * (len(header) - 3) + ["---:"]
    return "\n".join([_md_row(header), "|" + "|".join(align) + "|", *map(_md_row, t.rows)]) + "\n"


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


# --------------------------------------------------------- paired differences


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


def _paired_rows(paired: pd.DataFrame, metric: str) -> list[tuple[list[str], int]]:
    """Rows (mode, labels, split, a − b, seeds, mean [t-CI], per seed [bootstrap CI]), each
    with :func:`interval_side` of its interval (the mean's; with one seed, that seed's)."""
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
        decisive = seeds if len(seeds) == 1 else mean
        side = 0
        if not decisive.empty:
            low, high = pd.to_numeric(decisive.iloc[0][["ci_low", "ci_high"]], errors="coerce")
            side = interval_side(float(low), float(high))
        rows.append(([
            str(mode), _pct(float(fraction)), _split_label(str(split)), f"{a} − {b}",
            str(len(seeds)), mean_cell, per_seed or "—",
        ], side))  # fmt: skip
    order = {"finetune": 0, "linear": 1}
    rows.sort(key=lambda r: order.get(r[0][0], 2))  # stable: the file's order within a mode
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
        "An interval that excludes 0 is evidence of a real difference: those rows are "
        "highlighted (bold in Markdown; green above 0, red below 0 in HTML), judged on the "
        "mean's interval (with one seed, that seed's). Every metric is in paired.csv."
    )


def paired_markdown_table(paired: pd.DataFrame, metric: str) -> str:
    """A Markdown table of a ``paired.csv`` (:mod:`medssl.paired`) for one metric."""

    align = ["---", "---:", "---", "---", "---:", "---:", "---"]
    lines = [_md_row(_PAIRED_HEADER), "|" + "|".join(align) + "|"]
    for cells, side in _paired_rows(paired, metric):
        line = _md_row(cells)
        if side:  # a decided row: the comparison and its mean in bold
            parts = line.split(" | ")
            for i in (3, 5):
                parts[i] = f"**{parts[i]}**"
            line = " | ".join(parts)
        lines.append(line)
    return "\n".join(lines) + "\n"


def paired_html_table(paired: pd.DataFrame, metric: str) -> str:
    """The :func:`paired_markdown_table` as an HTML ``<table>``."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in _PAIRED_HEADER)
    body = []
    for cells, side in _paired_rows(paired, metric):
        tds = [f"<td>{e(c)}</td>" for c in cells[:4]] + [
            f'<td class="num">{e(c)}</td>' for c in cells[4:]
        ]
        cls = {1: ' class="above"', -1: ' class="below"'}.get(side, "")
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    return (
        f'<table class="results">\n<thead>\n<tr>{head}</tr>\n</thead>\n<tbody>\n'
        + "\n".join(body) + "\n</tbody>\n</table>\n"
    )  # fmt: skip


# ------------------------------------------------------------------ subgroups


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
    align = ["---"] * 2 + ["---:"] * (len(header) - 2)
    return "\n".join([_md_row(header), "|" + "|".join(align) + "|", *map(_md_row, rows)]) + "\n"


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
