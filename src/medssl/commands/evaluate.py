"""``medssl evaluate``: score a fine-tuned run on a split, in-distribution or shifted.

What is scored, measured and stored is described in :mod:`medssl.evaluation`, which does the
work (:func:`~medssl.evaluation.evaluate_run`); this module is the command's entry point and
the text it prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medssl.evaluation import evaluate_run, output_files

__all__ = ["evaluate_run", "format_evaluation"]


def _value(metrics: dict[str, Any], key: str) -> str:
    lo, hi = (metrics.get("ci") or {}).get(key) or [None, None]
    band = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return f"{metrics[key]:.4f}{band}"


_PRINTED = (
    "accuracy", "balanced_accuracy", "auc_macro", "auc_mean_selected", "sensitivity",
    "specificity", "ece", "brier",
)  # fmt: skip


def _per_class(metrics: dict[str, Any]) -> list[str]:
    """The AUC of each class (multiclass) or finding (multilabel), one line each."""
    aucs = metrics.get("auc_per_class") or metrics.get("auc_per_finding") or {}
    title = "per class" if "auc_per_class" in metrics else "per finding"
    lines = [f"    AUC {title}:"] if aucs else []
    for name, value in aucs.items():
        shown = "n/a (one label only)" if value is None else f"{value:.4f}"
        lines.append(f"      {name:<16} {shown}")
    return lines


def format_evaluation(metrics: dict[str, Any], run: str | Path | None = None) -> str:
    """The lines ``medssl evaluate`` prints: what was scored and left out, image-level and
    case-level metrics with their 95% case-bootstrap intervals, the AUC of each class, the
    operating point, the subgroups (small ones marked) and, given the ``run``, the files
    written."""
    scored = metrics.get("scored", {"images": metrics["n"], "cases": metrics["n_cases"]})
    lines = [f"{metrics['split']}: scored {scored['images']} images, {scored['cases']} cases"]
    for item in metrics.get("excluded", []):
        cases = "" if item.get("cases") is None else f", {item['cases']} cases"
        lines.append(f"  excluded: {item['images']} images{cases} ({item['reason']})")
    lines.append("  image level:")
    lines += [f"    {k:<18} {_value(metrics, k)}" for k in _PRINTED if metrics.get(k) is not None]
    lines += _per_class(metrics)
    case = metrics.get("case_level") or {}
    if case.get("note") and not case.get("n"):
        lines.append(f"  case level: {case['note']}")
    elif case:
        lines.append(f"  case level ({case['n_cases']} cases, mean of each case's images):")
        lines += [f"    {k:<18} {_value(case, k)}" for k in _PRINTED if case.get(k) is not None]
    op = metrics.get("operating_point")
    if op:
        if op.get("threshold") is None:
            lines.append(f"  operating point: {op.get('note', 'none')}")
        else:
            lines.append(
                f"  operating point: {op['positive_class']} if p >= {op['threshold']:.4f} "
                f"(sensitivity {op['target_sensitivity']:g} on the {op['threshold_from']})"
            )
    if "temperature" in metrics:
        lines.append(f"  temperature scaling: T = {metrics['temperature']:.3f} (fitted on val)")
    for attribute, groups in (metrics.get("subgroups") or {}).items():
        lines.append(f"  by {attribute}:")
        for value, g in groups.items():
            key = next((k for k in ("auc_mean_selected", "auc_macro", "accuracy")
                        if g.get(k) is not None), None)  # fmt: skip
            score = f"{key} {_value(g, key)}" if key else "no AUC"
            flag = " (small)" if g.get("small") else ""
            lines.append(f"    {value:<16} {g['n']} images, {g['n_cases']} cases: {score}{flag}")
    if run is not None:
        results, predictions = output_files(run, metrics["split"])
        summary = results.parent / "metrics.json"
        lines.append(f"wrote {results}, {predictions} (summary in {summary})")
    return "\n".join(lines)
