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

The report opens with the headline (:mod:`~medssl.report.headline`, also the demo's terminal
headline): each init at the lowest label fraction and its paired difference to random with
its interval, said in words; a forest plot of ``paired.csv`` follows.

The package: :mod:`~medssl.report.summary` (the results table checked and summarised over
seeds; labels and orders of inits, splits and metrics), :mod:`~medssl.report.tables`
(Markdown and HTML tables), :mod:`~medssl.report.plots` (matplotlib figures),
:mod:`~medssl.report.headline` (the headline) and
:mod:`~medssl.report.page` (:func:`write_report`: the files and pages of a sweep's report).
Everything public is importable from ``medssl.report``.
"""

from __future__ import annotations

from medssl.report.headline import Headline, headline, headline_lines
from medssl.report.page import write_report
from medssl.report.plots import (
    RocCurve,
    plot_forest,
    plot_label_efficiency,
    plot_reliability,
    plot_roc,
    plot_shift_bars,
    reliability_data,
    roc_curve_data,
)
from medssl.report.summary import (
    CALIBRATION_METRICS,
    CASE_CI_MARK,
    INIT_DESCRIPTIONS,
    INIT_ORDER,
    KEYS,
    METRIC_LABELS,
    METRICS,
    OPERATING_METRICS,
    REQUIRED,
    SPLIT_LABELS,
    interval_side,
    paired_estimates,
    split_file_label,
    summarize,
)
from medssl.report.tables import (
    html_table,
    markdown_table,
    paired_html_table,
    paired_markdown_table,
)

__all__ = [
    "CALIBRATION_METRICS", "CASE_CI_MARK", "INIT_DESCRIPTIONS", "INIT_ORDER", "KEYS",
    "METRICS", "METRIC_LABELS", "OPERATING_METRICS", "REQUIRED", "SPLIT_LABELS", "Headline",
    "RocCurve", "headline", "headline_lines", "html_table", "interval_side", "markdown_table",
    "paired_estimates", "paired_html_table", "paired_markdown_table", "plot_forest",
    "plot_label_efficiency", "plot_reliability", "plot_roc", "plot_shift_bars",
    "reliability_data", "roc_curve_data", "split_file_label", "summarize", "write_report",
]  # fmt: skip
