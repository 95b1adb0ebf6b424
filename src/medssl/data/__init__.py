"""Datasets: adapters per public layout, the manifest, case-level splits, the image cache.

:func:`load` is the Python entry point (what ``medssl data summary`` and every trainer do
first). This package's own import stays light: every submodule imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medssl.data.manifest import Manifest
    from medssl.data.spec import DataSpec
    from medssl.data.splits import Splits

__all__ = ["LoadedData", "load"]


@dataclass(frozen=True)
class LoadedData:
    """A dataset as medssl sees it: how to find it again, its images, its splits.

    Pass it as ``data`` to :func:`medssl.pretrain`, :func:`medssl.finetune` or
    :func:`medssl.evaluate`; runs record ``spec`` and rebuild the same manifest and splits.
    """

    spec: DataSpec
    manifest: Manifest
    splits: Splits

    def summary(self) -> dict[str, Any]:
        """Images, cases, classes, sources and per-split counts (``medssl data summary``)."""
        codes, _ = self.manifest.case_codes()
        summary = self.manifest.summary()
        summary["splits"] = {
            name: {"images": int(rows.size), "cases": len(set(codes[rows].tolist()))}
            for name, rows in self.splits.indices.items()
        }
        summary["warnings"] = [*self.manifest.warnings, *self.splits.warnings]
        return summary


def load(dataset: str, root: str | os.PathLike[str] | None = None, **options: Any) -> LoadedData:
    """Read ``root`` in the layout of ``dataset`` and split it as the command line would.

    ``options`` are the command line's data options with underscores: the spec's own
    (``shift_sources``, ``split_seed``, ...) and the adapters' (``csv_case``, ``subtypes``,
    ``findings``, ``synthetic_cases``, ...). ``dataset="synthetic"`` needs no ``root``.
    An unknown option is an error naming it.
    """
    from medssl.data.adapters import DATASETS, option_names
    from medssl.data.spec import DataSpec, read_spec
    from medssl.errors import MedsslError
    from medssl.options import Given, Where

    info = DATASETS.get(dataset)
    if not root and (info is None or info.needs_root):
        raise MedsslError(f"medssl.data.load: dataset {dataset!r} needs a root folder")
    spec_fields = {f.name for f in fields(DataSpec)} - {"dataset", "root", "options"}
    adapter_options = set(option_names())
    unknown = sorted(set(options) - spec_fields - adapter_options)
    if unknown:
        valid = ", ".join(sorted(spec_fields | adapter_options))
        raise MedsslError(f"medssl.data.load: unknown option(s) {', '.join(unknown)} ({valid})")
    where = Where("medssl.data.load: ")  # values checked as the command line's data options
    given = {k: v for k, v in options.items() if k in spec_fields and v is not None}
    spec = read_spec(
        Given({"dataset": dataset, "root": str(root or ""), **given}, where),
        Given({k: v for k, v in options.items() if k in adapter_options and v is not None}, where),
    )
    manifest, splits = spec.load()
    return LoadedData(spec, manifest, splits)
