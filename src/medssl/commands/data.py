"""``medssl data summary``: images, cases, classes, sources and splits of a dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medssl.data.manifest import Manifest
    from medssl.data.spec import DataSpec


def summarize(spec: DataSpec) -> tuple[Manifest, dict[str, Any]]:
    """The manifest of ``spec`` and its summary (what ``--json`` prints).

    The summary holds the manifest's counts, images and cases per split, the cases shared
    between splits, the split scheme and the data layer's warnings.
    """
    from medssl.data.splits import cases_shared_between_splits

    manifest, splits = spec.load()
    codes, _ = manifest.case_codes()
    summary = manifest.summary()
    summary["splits"] = {
        name: {"images": int(rows.size), "cases": int(len(set(codes[rows].tolist())))}
        for name, rows in splits.indices.items()
    }
    summary["cases_shared_between_splits"] = cases_shared_between_splits(manifest, splits)
    summary["split_scheme"] = splits.scheme
    summary["warnings"] = [*manifest.warnings, *splits.warnings]
    return manifest, summary


def format_summary(manifest: Manifest, summary: dict[str, Any]) -> str:
    """The summary as text, one line per item."""
    lines = [
        f"dataset      {manifest.name} ({manifest.task}, {manifest.num_classes} classes)",
        f"images       {summary['images']}",
        f"cases        {summary['cases']} ({summary['multi_image_cases']} with 2+ images)",
        "classes      " + ", ".join(f"{k} {v}" for k, v in summary["classes"].items()),
        "sources      " + ", ".join(f"{k} {v}" for k, v in summary["sources"].items()),
    ]
    for name, counts in summary["splits"].items():
        lines.append(f"split {name:<6} {counts['images']} images, {counts['cases']} cases")
    lines.append(f"cases shared between splits: {summary['cases_shared_between_splits']}")
    return "\n".join(lines)
