"""``medssl export``: a fine-tuned classifier, or a pretraining run's backbone, as one
self-contained TorchScript or ONNX file.

The work, and what the files hold and take, is :mod:`medssl.exporting`; this module is the
command's entry point and the text it prints.
"""

from __future__ import annotations

import os
from typing import Any

from medssl.exporting import OPSETS, ExportedClassifier, export_model, read_metadata

__all__ = ["OPSETS", "ExportedClassifier", "export_model", "format_export", "read_metadata"]


def format_export(meta: dict[str, Any], fmt: str, out: str | os.PathLike[str]) -> str:
    """What ``medssl export`` prints: the file written and what its model expects."""
    lines = [f"{fmt} -> {out}"]
    for key in ("input", "preprocessing", "normalisation", "output"):
        lines.append(f"  {key:<14} {meta[key]}")
    if meta["class_names"]:
        lines.append(f"  {'classes':<14} {', '.join(meta['class_names'])}")
    return "\n".join(lines)
