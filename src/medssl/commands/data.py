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
        name: {
            "images": int(rows.size), "cases": int(len(set(codes[rows].tolist()))),
            "classes": manifest.class_counts(rows),
        }
        for name, rows in splits.indices.items()
    }  # fmt: skip
    summary["cases_shared_between_splits"] = cases_shared_between_splits(manifest, splits)
    summary["split_scheme"] = splits.scheme
    summary["warnings"] = [*manifest.warnings, *splits.warnings]
    return manifest, summary


#: the most classes whose mix each split line lists (more: the range of counts)
MIX_CLASSES = 20
_INDENT = " " * 13


def _wrapped(head: str, items: list[str], indent: str = _INDENT) -> list[str]:
    """``head`` then ``items``, comma-separated, wrapped at 100 columns under ``indent``."""
    import textwrap

    text = ", ".join(items)
    return textwrap.wrap(text, 100, initial_indent=head, subsequent_indent=indent) or [head]


def _mix(counts: dict[str, int], total: int) -> str:
    """A split's class mix: each class's images and share, or (many classes) their range."""
    if len(counts) > MIX_CLASSES:
        present = [v for v in counts.values() if v]
        low, high = (min(present), max(present)) if present else (0, 0)
        return f"{len(present)} of {len(counts)} classes present, {low}-{high} images each"
    return ", ".join(f"{k} {v} ({v / max(total, 1):.0%})" for k, v in counts.items())


def format_summary(manifest: Manifest, summary: dict[str, Any]) -> str:
    """The summary as text: one item per line, long lists wrapped; each split with its
    class mix."""
    kind = (f"{manifest.task}, {manifest.num_classes} classes" if manifest.labelled
            else "unlabeled: a pretraining pool")  # fmt: skip
    per_case = (f"; images per case median {summary['images_per_case_median']:g}, "
                f"max {summary['images_per_case_max']}")  # fmt: skip
    lines = [
        f"dataset      {manifest.name} ({kind})",
        f"images       {summary['images']}",
        f"cases        {summary['cases']} ({summary['multi_image_cases']} with 2+ images"
        f"{per_case})",
        *(_wrapped("classes      ", [f"{k} {v}" for k, v in summary["classes"].items()])
          if manifest.labelled else []),
        *_wrapped("sources      ", [f"{k or '(none)'} {v}" for k, v in summary["sources"].items()]),
    ]
    if summary.get("excluded"):
        e = summary["excluded"]
        lines.append(f"excluded     {e['images']} images of {e['cases']} cases ({e['dataset']} "
                     f"{'/'.join(e['splits'])}, by {e['by']})")  # fmt: skip
    for name, counts in summary["splits"].items():
        lines.append(f"split {name:<6} {counts['images']} images, {counts['cases']} cases")
        if manifest.labelled:
            mix = _mix(counts["classes"], counts["images"])
            lines += _wrapped(f"{_INDENT}class mix: ", mix.split(", "), _INDENT + "  ")
    lines.append(f"cases shared between splits: {summary['cases_shared_between_splits']}")
    return "\n".join(lines)
