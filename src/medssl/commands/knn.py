"""``medssl knn``: does a pretrained backbone beat a random one on this data, with no training?

The comparison is :mod:`medssl.backbone_knn` (:func:`compare_backbones`); this module is the
command's entry point and the text it prints.
"""

from __future__ import annotations

from typing import Any

from medssl.backbone_knn import compare_backbones

__all__ = ["compare_backbones", "format_comparison"]


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as text: one row per backbone, then its differences to random."""
    keys = list(next(iter(result["scores"].values())))
    lines = [
        f"k-NN (k={result['k']}) on {result['dataset']} {result['split']}: {result['n']} images, "
        f"{result['n_cases']} cases; {result['backbone']} at {result['image_size']} px",
        f"{'backbone':<24}" + "".join(f"{k:>19}" for k in keys),
    ]
    for label, scores in result["scores"].items():
        lines.append(f"{label:<24}" + "".join(f"{_number(scores[k]):>19}" for k in keys))
        for key, diff in result["vs_random"].get(label, {}).items():
            lo, hi = diff["ci"]
            lines.append(
                f"  {key} - random: {_number(diff['difference'], '+.4f')} "
                f"(95% CI by case {_number(lo, '+.4f')} to {_number(hi, '+.4f')})"
            )
    return "\n".join(lines)


def _number(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)
