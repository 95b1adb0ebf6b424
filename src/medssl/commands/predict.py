"""``medssl predict``: class probabilities for unlabeled images from a fine-tuned run.

The work is :func:`medssl.prediction.predict_images` (preprocessing, inputs and errors are
described there and in :mod:`medssl.inference`); this module is the command's entry point and
the text it prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medssl.prediction import Predictions, predict_images

__all__ = ["Predictions", "format_skipped", "format_written", "predict_images", "written_summary"]


def written_summary(result: Predictions, written: dict[str, Path]) -> dict[str, Any]:
    """What ``medssl predict --json`` prints: counts and the files :meth:`~Predictions.write`
    wrote."""
    return {
        "images": len(result.images),
        "cases": None if result.cases is None else len(result.cases),
        "skipped": len(result.skipped),
        "files": {k: str(v) for k, v in written.items()},
    }


def format_written(result: Predictions, written: dict[str, Path]) -> str:
    """What ``medssl predict`` prints: how many predictions went to which file."""
    lines = [f"{len(result.images)} image predictions -> {written['images']}"]
    if result.cases is not None:
        lines.append(f"{len(result.cases)} case predictions -> {written['cases']}")
    return "\n".join(lines)


def format_skipped(result: Predictions, written: dict[str, Path], shown: int = 20) -> str:
    """The images left out as unreadable (the first ``shown``), for stderr; "" when none."""
    if not result.skipped:
        return ""
    lines = [f"skipped {len(result.skipped)} unreadable image(s), listed in {written['skipped']}:"]
    lines += [f"  {image}: {reason}" for image, reason in result.skipped[:shown]]
    if len(result.skipped) > shown:
        lines.append(f"  ... and {len(result.skipped) - shown} more")
    return "\n".join(lines)
