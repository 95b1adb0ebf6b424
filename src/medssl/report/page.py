"""The report of a sweep: summary CSV, Markdown tables, figures, report.md and report.html.

:func:`write_report` assembles the tables (:mod:`medssl.report.tables`) and figures
(:mod:`medssl.report.plots`) of a ``results.csv`` and its ``paired.csv`` into a Markdown page
and a self-contained HTML page (figures embedded), with the text that explains how to read
them. Both pages open with the headline (:mod:`medssl.report.headline`) and the forest plot
of the paired differences; the protocol box, "How to read this" and the tables follow.
"""

from __future__ import annotations

import base64
import html
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.errors import MedsslError
from medssl.report.headline import Headline, headline_from_tables, headline_html, headline_markdown
from medssl.report.plots import (
    plot_forest,
    plot_label_efficiency,
    plot_pretraining_curves,
    plot_reliability,
    plot_roc,
    plot_shift_bars,
    pretraining_has_monitor,
)
from medssl.report.summary import (
    CALIBRATION_METRICS,
    CASE_CI_MARK,
    INIT_DESCRIPTIONS,
    OPERATING_METRICS,
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
    split_file_label,
)
from medssl.report.tables import (
    _paired_note,
    _plain_html_table,
    _plain_table,
    _subgroup_table,
    html_table,
    markdown_table,
    md_text,
    paired_html_table,
    paired_markdown_table,
)


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
    """One run per init for the ROC and reliability figures and the subgroup tables: the
    fine-tuned runs (linear probes only where nothing was fine-tuned) at the lowest label
    fraction, where the inits differ most (at 100% they often tie), lowest seed."""
    sub = df[(df["split"] == split) & df["run"].notna()]
    tuned = sub["init"].map(lambda i: _init_mode(i)[1] in ("", "finetune"))
    sub = sub[tuned] if tuned.any() else sub
    sub = sub[np.isclose(sub["label_fraction"], sub["label_fraction"].min())]
    runs: dict[str, Path] = {}
    picked: list[tuple[str, str, str]] = []
    for init in _ordered_inits(sub["init"]):
        g = sub[sub["init"] == init]
        g = g.sort_values(["label_fraction", "seed"], ascending=[True, True])
        r = g.iloc[0]
        runs[init] = _resolve_run(str(r["run"]), results_csv)
        picked.append((init, _pct(r["label_fraction"]), str(r["seed"])))
    if len({(f, s) for _, f, s in picked}) == 1:
        _, f, s = picked[0]
        how = f"seed {s} at {f} of labels for every initialisation"
    else:
        how = "; ".join(f"{i}: seed {s}, {f} of labels" for i, f, s in picked)
    return runs, how


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


def _lowest(df: pd.DataFrame) -> float:
    return float(df["label_fraction"].min())


def _forest(paired: pd.DataFrame, metric: str, top: Headline, out_dir: Path) -> _Figure | None:
    """The forest plot of paired.csv's differences in the headline's splits (none without)."""
    if not metric:
        return None
    estimates = paired_estimates(paired, metric)
    if not estimates["split"].isin(top.splits).any():
        return None
    name = f"forest_{metric}.png"
    plot_forest(estimates, metric, out_dir / name, top.splits)
    splits = " and ".join(_split_label(s).lower() for s in top.splits)
    return _Figure(name, (
        f"Paired differences in {_metric_label(metric)} (a − b, trained with the same seed), "
        f"{splits}, every comparison of paired.csv: mean over seeds with its 95% t-interval "
        "over seeds (one seed: its paired case-bootstrap interval); vertical line: no "
        "difference; filled marker: the interval excludes 0. Rows: label fraction (lowest "
        "first), then comparison; the numbers are in the paired table below."
    ))  # fmt: skip


def _headline_heading(top: Headline) -> str:
    return f"Headline: {_pct(top.fraction)} of the labels"


def _figure_md(f: _Figure) -> list[str]:
    return [f"![{f.caption}]({f.file})", "", f"*{f.caption}*", ""]


def _figure_html(f: _Figure, out_dir: Path) -> str:
    e = html.escape
    data = base64.b64encode((out_dir / f.file).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{e(f.caption)}">'
            f"<figcaption>{e(f.caption)}</figcaption></figure>")  # fmt: skip


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
td.above, tr.above td { background: #e3f2e6; } td.below, tr.below td { background: #fbe4e0; }
table.headline td.above, table.headline td.below { font-weight: bold; }
"""


def _read_curves(pretraining_csv: Path | None) -> pd.DataFrame | None:
    if pretraining_csv is None or not Path(pretraining_csv).is_file():
        return None
    try:
        return pd.read_csv(pretraining_csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise MedsslError(f"cannot read pretraining curves {pretraining_csv}: {e}") from None


def _skipped_steps_notes(results: pd.DataFrame, curves: pd.DataFrame | None) -> list[str]:
    """One line per run whose finite-step guard skipped optimiser steps."""
    notes = []
    if "skipped_steps" in results.columns:
        runs = results.assign(n=pd.to_numeric(results["skipped_steps"], errors="coerce"))
        for run, n in runs[runs["n"] > 0].groupby("run")["n"].first().items():
            notes.append(f"Fine-tune {run} skipped {int(n)} optimiser step(s) (non-finite "
                         "gradients): its training was shorter than configured.")  # fmt: skip
    if curves is not None and "skipped_steps" in curves.columns:
        per_run = pd.to_numeric(curves["skipped_steps"], errors="coerce").groupby(curves["run"])
        for run, n in per_run.sum().items():
            if n > 0:
                notes.append(f"Pretraining run {run} skipped {int(n)} optimiser step(s) "
                             "(non-finite gradients).")  # fmt: skip
    return notes


def write_report(
    results_csv: Path, out_dir: Path, title: str, notes: str = "", paired_csv: Path | None = None,
    pretraining_csv: Path | None = None, extra_figures: Sequence[tuple[str, str]] = (),
) -> Path:  # fmt: skip
    """Write the full report of a sweep into ``out_dir`` and return ``report.html``'s path.

    Files: ``results_summary.csv`` (:func:`summarize`), ``results.md`` (the table),
    ``label_efficiency_<metric>.png`` per metric, ``shift_<metric>.png`` for the headline
    metric when a shift split exists, ``roc_<split>.png`` and ``reliability_<split>.png``
    (one panel per init) per split from one fine-tuned run per init (lowest label fraction,
    lowest seed), ``forest_<metric>.png`` (the paired differences, with ``paired_csv``),
    ``report.md`` (linking the PNGs) and ``report.html`` (self-contained: PNGs embedded as
    base64, so it can be mailed). Both pages open with the headline
    (:mod:`medssl.report.headline`: each init at the lowest label fraction and its paired
    difference to random, in words) and the forest plot.

    A missing results file or column raises MedsslError. Missing or unreadable prediction
    files only skip the ROC plot: the report says so (and a warning is issued), because run
    directories are often not copied along with the results table.

    ``paired_csv`` (a sweep's ``paired.csv``, :mod:`medssl.paired`) adds a table of paired
    differences for the headline metric to ``results.md`` and the reports (rows whose
    interval excludes 0 bold in Markdown, highlighted in HTML), the headline's differences
    and the forest plot.
    ``pretraining_csv`` (a sweep's ``pretraining.csv``) adds ``pretraining_curves.png``, the
    k-NN (only when a run logged one) and loss curves of its pretraining runs;
    ``extra_figures`` are more (file, caption) pairs of PNGs already in ``out_dir`` (a sweep's
    embedding maps). Runs whose finite-step guard skipped
    optimiser steps (results.csv's and pretraining.csv's ``skipped_steps``) are listed, so
    no result silently rests on a shortened training.
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
    sections_md = "".join(
        f"\n## {md_text(x.heading)}\n\n{x.markdown}\n{md_text(x.note)}\n" for x in sections
    )
    (out_dir / "results.md").write_text(
        table_md + "\n" + ci_note + paired_md + sections_md, encoding="utf-8"
    )

    has_shift = "shift" in splits and "test" in splits
    primary = _primary_metric(metrics)
    top = headline_from_tables(df, paired if paired_metric else None, primary)
    forest = _forest(paired, paired_metric, top, out_dir)
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
            at = f"{_split_label(split)}, {_pct(_lowest(df))} of labels"
            try:
                plot_roc(runs, split, out_dir / name, title=f"ROC — {at}")
            except MedsslError as e:
                problems.append(f"ROC curves for the {split} split were skipped: {e}")
                continue
            figures.append(
                _Figure(
                    name,
                    f"ROC curves, {_split_label(split).lower()}, at the lowest label fraction "
                    f"({_pct(_lowest(df))}), where the initialisations differ most: one run per "
                    f"initialisation ({how}). Legend: that run's AUC, not the mean over seeds.",
                )
            )
            name = f"reliability_{split_file_label(split)}.png"
            try:
                plot_reliability(runs, split, out_dir / name, title=f"Reliability — {at}")
            except MedsslError as e:
                problems.append(f"The reliability diagram of the {split} split was skipped: {e}")
                continue
            figures.append(
                _Figure(
                    name,
                    f"Reliability diagrams, {_split_label(split).lower()}, from the same runs "
                    f"({_pct(_lowest(df))} of labels), one panel per initialisation (random "
                    "repeated in grey dashes): observed frequency against mean confidence "
                    "per bin (marker area: images in the bin); on the diagonal a model is "
                    "calibrated. Panel titles: that run's ECE.",
                )
            )
    else:
        problems.append("ROC curves were skipped: the results table has no run column.")
    curves = _read_curves(pretraining_csv)
    if curves is not None and not curves.empty:
        plot_pretraining_curves(curves, out_dir / "pretraining_curves.png")
        monitored = (
            "k-NN macro AUC on each run's validation split (supervised runs: their "
            "validation AUC) and the training loss"
            if pretraining_has_monitor(curves)
            else "the training loss (no run logged a k-NN monitor: knn_every was off)"
        )
        figures.append(_Figure("pretraining_curves.png", f"Pretraining: {monitored} against "
                               "epochs; one line per pretraining seed."))  # fmt: skip
    problems += _skipped_steps_notes(df, curves)
    figures += [_Figure(file, caption) for file, caption in extra_figures]
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

    md = [f"# {md_text(title)}", "", md_text(meta), ""]  # user text is escaped, as in the HTML
    md += [f"## {_headline_heading(top)}", "", headline_markdown(top)]
    if forest is not None:
        md += _figure_md(forest)
    if notes.strip():
        md += ["## Protocol", "", md_text(notes.strip(), block=True), ""]
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
            md += _figure_md(f)
    for p in problems:
        md += [f"> Note: {md_text(p)}", ""]
    (out_dir / "report.md").write_text("\n".join(md), encoding="utf-8")

    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f'<p class="meta">{e(meta)}</p>']
    body += [f"<h2>{e(_headline_heading(top))}</h2>", headline_html(top)]
    if forest is not None:
        body.append(_figure_html(forest, out_dir))
    if notes.strip():
        paras = [p.strip() for p in notes.strip().split("\n\n") if p.strip()]
        body.append(
            '<h2>Protocol</h2><div class="notes">'
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
    body += [_figure_html(f, out_dir) for f in figures]
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
