"""The headline of a sweep: what pretraining buys where labels are scarce.

At the sweep's lowest label fraction, per mode (fine-tuned first, then linear probe) and
split (in-distribution test, then distribution shift): each initialisation's headline metric
(mean over seeds with its 95% interval) and its paired difference to ``random`` with the 95%
interval of ``paired.csv``, and in words whether that interval lies above 0, below 0 or
holds it. :func:`headline` computes it once; :func:`headline_lines` is the demo's terminal
headline and :func:`headline_markdown` / :func:`headline_html` open the report, so the
terminal and the report cannot disagree.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.errors import MedsslError
from medssl.report.summary import (
    _init_mode,
    _metric_label,
    _ordered_inits,
    _ordered_splits,
    _pct,
    _primary_metric,
    _resolve_metrics,
    _split_label,
    _summarize,
    _validate,
    paired_estimates,
)
from medssl.report.tables import _cell, _md_row, _paired_cell, md_text

#: the comparison every headline difference is taken against
BASELINE = "random"
#: splits the headline shows, in this order (a sweep with neither shows its first split)
HEADLINE_SPLITS = ["test", "shift"]
MODE_NAMES = {"finetune": "fine-tuned", "linear": "linear probe"}
_SIDE_WORDS = {1: "interval above 0", -1: "interval below 0", 0: "interval includes 0"}


@dataclass(frozen=True)
class HeadlineCell:
    """One initialisation in one (mode, split): its score and its difference to random."""

    init: str
    mean: float
    low: float
    high: float
    ci_kind: str  # "seeds", "cases" (one run's case bootstrap) or ""
    diff: float = math.nan  # NaN for the baseline itself or without paired.csv
    diff_low: float = math.nan
    diff_high: float = math.nan
    side: int = 0  # medssl.report.summary.interval_side of the difference

    @property
    def score_text(self) -> str:
        return _cell(self.mean, self.low, self.high, 3, 2, self.ci_kind)

    @property
    def diff_text(self) -> str:
        if self.init == BASELINE:
            return "baseline"
        return _paired_cell(self.diff, self.diff_low, self.diff_high)

    @property
    def verdict(self) -> str:
        """``interval above 0`` and so on; empty for the baseline and missing differences."""
        if self.init == BASELINE or not math.isfinite(self.diff):
            return ""
        if not (math.isfinite(self.diff_low) and math.isfinite(self.diff_high)):
            return "no interval"
        return _SIDE_WORDS[self.side]


@dataclass
class Headline:
    """:func:`headline`'s result: ``cells[(mode, split)]`` in init order."""

    metric: str
    fraction: float
    modes: list[str]
    splits: list[str]
    cells: dict[tuple[str, str], list[HeadlineCell]]
    n_seeds: list[int]  # the seed counts of the cells (one value when every cell has as many)
    diff_kinds: list[str]  # "seeds" and/or "cases", as paired_estimates names them

    def inits(self, mode: str) -> list[str]:
        return _ordered_inits([c.init for s in self.splits for c in self.cells.get((mode, s), [])])


def _ordered_modes(modes: Sequence[str]) -> list[str]:
    known = [m for m in MODE_NAMES if m in modes]
    return known + sorted(m for m in set(modes) if m not in MODE_NAMES)


def mode_name(mode: str) -> str:
    """``finetune`` -> ``fine-tuned``, ``linear`` -> ``linear probe``."""
    return MODE_NAMES.get(mode, mode)


def headline_from_tables(
    df: pd.DataFrame, paired: pd.DataFrame | None, metric: str | None = None,
    fraction: float | None = None,
) -> Headline:  # fmt: skip
    """:func:`headline` from a results table already checked by ``_validate`` (modes folded
    into the init names) and a paired.csv as a DataFrame (or None)."""
    metric = metric or _primary_metric(_resolve_metrics(df, None))
    if metric not in df.columns:
        raise MedsslError(f"metric {metric} is not in the results")
    fraction = float(df["label_fraction"].min()) if fraction is None else float(fraction)
    low = df[np.isclose(df["label_fraction"], fraction)]
    if low.empty:
        raise MedsslError(f"no results at label fraction {fraction:g}")
    splits = [s for s in HEADLINE_SPLITS if s in set(low["split"])]
    splits = splits or _ordered_splits(low["split"])[:1]
    summary = _summarize(low[low["split"].isin(splits)], [metric], 0.95)
    estimates = paired_estimates(paired if paired is not None else pd.DataFrame(), metric)
    estimates = estimates[np.isclose(estimates["label_fraction"].astype(float), fraction)
                          & (estimates["b"] == BASELINE)]  # fmt: skip
    diffs = {(r.mode, r.split, r.a): r for r in estimates.itertuples(index=False)}
    cells: dict[tuple[str, str], list[HeadlineCell]] = {}
    for r in summary.itertuples(index=False):
        base, mode = _init_mode(str(r.init))
        mode = mode or "finetune"
        d = diffs.get((mode, str(r.split), base))
        cell = HeadlineCell(
            base, getattr(r, f"{metric}_mean"), getattr(r, f"{metric}_lo"),
            getattr(r, f"{metric}_hi"), str(getattr(r, f"{metric}_ci") or ""),
            *((d.diff, d.low, d.high, d.side) if d is not None else ()),
        )  # fmt: skip
        cells.setdefault((mode, str(r.split)), []).append(cell)
    for key, found in cells.items():
        order = _ordered_inits([c.init for c in found])
        cells[key] = sorted(found, key=lambda c: order.index(c.init))
    return Headline(
        metric, fraction, _ordered_modes([m for m, _ in cells]), splits, cells,
        sorted(summary["n_seeds"].unique().tolist()), sorted(set(estimates["kind"])),
    )  # fmt: skip


def headline(
    results_csv: Path | str, paired_csv: Path | str | None = None, metric: str | None = None,
    fraction: float | None = None,
) -> Headline:  # fmt: skip
    """What pretraining buys at the lowest label fraction, from a sweep's ``results.csv``
    and ``paired.csv`` (optional: without it there are no differences).

    ``metric`` defaults to the headline metric (the first of
    :data:`~medssl.report.summary.METRICS` with values), ``fraction`` to the lowest label
    fraction of the results.
    """
    try:
        raw = pd.read_csv(results_csv)
        paired = (pd.read_csv(paired_csv)
                  if paired_csv is not None and Path(paired_csv).is_file() else None)  # fmt: skip
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as e:
        raise MedsslError(f"cannot read the sweep's tables: {e}") from None
    return headline_from_tables(_validate(raw, f"results file {results_csv}"), paired, metric,
                                fraction)  # fmt: skip


# ------------------------------------------------------------------------------ words


def headline_intro(h: Headline) -> str:
    """What the numbers are: metric, fraction, and which intervals."""
    seeds = "/".join(map(str, h.n_seeds))
    score = (f"mean over {seeds} seeds [95% CI over seeds]" if h.n_seeds != [1]
             else "one run [95% case-level bootstrap CI]")  # fmt: skip
    kinds = {"seeds": "95% t-interval over the seeds' differences",
             "cases": "95% paired case-bootstrap interval of the one seed"}  # fmt: skip
    diff = " / ".join(kinds[k] for k in h.diff_kinds) or "no paired.csv: no differences"
    return (
        f"{_metric_label(h.metric)} with {_pct(h.fraction)} of the labels, the sweep's lowest "
        f"label fraction, where pretraining should matter most (higher is better). Score: "
        f"{score}. Difference: paired difference to {BASELINE} ({diff}); an interval above 0 "
        f"means better than {BASELINE}, one that includes 0 is not decided."
    )


def headline_sentences(h: Headline) -> list[str]:
    """Per (mode, split), in words: which inits' differences lie above 0, below 0, or hold 0."""
    out = []
    for mode in h.modes:
        for split in h.splits:
            found = [c for c in h.cells.get((mode, split), []) if c.verdict]
            if not found:
                continue
            parts = []
            for side, words in [(1, "interval above 0 (better than random)"),
                                (-1, "interval below 0 (worse than random)"),
                                (0, "interval includes 0 (not decided)")]:  # fmt: skip
                inits = [c.init for c in found if c.side == side and c.verdict != "no interval"]
                if inits:
                    parts.append(f"{words} for {', '.join(inits)}")
            bare = [c.init for c in found if c.verdict == "no interval"]
            if bare:
                parts.append(f"no interval for {', '.join(bare)}")
            out.append(f"{mode_name(mode).capitalize()}, {_split_label(split).lower()}: "
                       + "; ".join(parts) + ".")  # fmt: skip
    return out


# --------------------------------------------------------------------------- renderers


def headline_lines(h: Headline) -> list[str]:
    """The headline as terminal lines (the demo prints them first)."""
    lines = [
        f"With {_pct(h.fraction)} of the labels, {_metric_label(h.metric)}, higher is better: "
        f"mean [95% CI] per initialisation, and its paired difference to {BASELINE} [95% CI]:"
    ]
    width = max(len(c.init) for cells in h.cells.values() for c in cells) + 2
    for mode in h.modes:
        for split in h.splits:
            cells = h.cells.get((mode, split), [])
            if not cells:
                continue
            lines.append(f"  {mode_name(mode)}, {_split_label(split).lower()}")
            for c in cells:
                lines.append(f"    {c.init:<{width}s}{c.score_text:<24s}{c.diff_text:<26s}"
                             f"{c.verdict}".rstrip())  # fmt: skip
    return lines


def _table_rows(h: Headline, mode: str) -> tuple[list[str], list[list[HeadlineCell | None]]]:
    header = ["Init"]
    for split in h.splits:
        header += [f"{_split_label(split)}: {_metric_label(h.metric)}", f"− {BASELINE} [95% CI]"]
    rows = []
    for init in h.inits(mode):
        row: list[HeadlineCell | None] = []
        for split in h.splits:
            row.append(next((c for c in h.cells.get((mode, split), []) if c.init == init), None))
        rows.append(row)
    return header, rows


def headline_markdown(h: Headline) -> str:
    """The headline section of report.md (without its heading): intro, a table per mode
    (decided differences in bold), the verdicts in words."""
    out = [md_text(headline_intro(h)), ""]
    for mode in h.modes:
        header, rows = _table_rows(h, mode)
        out += [f"**{md_text(mode_name(mode).capitalize())}**", "", _md_row(header),
                "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]  # fmt: skip
        for row in rows:
            init = next(c.init for c in row if c is not None)
            cells = [md_text(init)]
            for c in row:
                if c is None:
                    cells += ["—", "—"]
                    continue
                diff = md_text(c.diff_text)
                cells += [md_text(c.score_text), f"**{diff}**" if c.side else diff]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += [f"- {md_text(s)}" for s in headline_sentences(h)]
    return "\n".join(out) + "\n"


def headline_html(h: Headline) -> str:
    """The headline section of report.html (without its heading); decided differences get
    the class ``above`` or ``below``."""
    e = html.escape
    out = [f"<p>{e(headline_intro(h))}</p>"]
    for mode in h.modes:
        header, rows = _table_rows(h, mode)
        out.append(f"<h3>{e(mode_name(mode).capitalize())}</h3>")
        head = "".join(f"<th>{e(x)}</th>" for x in header)
        out.append(f'<table class="results headline">\n<thead><tr>{head}</tr></thead>\n<tbody>')
        for row in rows:
            init = next(c.init for c in row if c is not None)
            tds = [f"<td>{e(init)}</td>"]
            for c in row:
                if c is None:
                    tds += ['<td class="num">—</td>'] * 2
                    continue
                side = {1: " above", -1: " below"}.get(c.side, "")  # fmt: skip
                tip = f' title="{e(c.verdict)}"' if c.verdict else ""
                tds += [f'<td class="num">{e(c.score_text)}</td>',
                        f'<td class="num{side}"{tip}>{e(c.diff_text)}</td>']
            out.append(f"<tr>{''.join(tds)}</tr>")
        out.append("</tbody>\n</table>")
    sentences = headline_sentences(h)
    if sentences:
        out.append("<ul>" + "".join(f"<li>{e(s)}</li>" for s in sentences) + "</ul>")
    return "\n".join(out) + "\n"
