"""Datasets: adapters per public layout, the manifest, case-level splits, the image cache.

:func:`load` is the Python entry point (what ``medssl data summary`` and every trainer do
first). This package's own import stays light: every submodule imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medssl.data.manifest import Manifest
    from medssl.data.spec import DataSpec
    from medssl.data.splits import Splits

__all__ = ["LoadedData", "load"]

#: adapter options that the command line does not offer
_EXTRA_OPTIONS = ("synthetic_seed",)


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
    from medssl.data.adapters import NO_ROOT
    from medssl.data.spec import _OPTION_KEYS, DataSpec
    from medssl.errors import MedsslError

    if not root and dataset not in NO_ROOT:
        raise MedsslError(f"medssl.data.load: dataset {dataset!r} needs a root folder")
    spec_fields = {f.name for f in fields(DataSpec)} - {"dataset", "root", "options"}
    adapter_options = set(_OPTION_KEYS) | set(_EXTRA_OPTIONS)
    unknown = sorted(set(options) - spec_fields - adapter_options)
    if unknown:
        valid = ", ".join(sorted(spec_fields | adapter_options))
        raise MedsslError(f"medssl.data.load: unknown option(s) {', '.join(unknown)} ({valid})")
    if isinstance(options.get("shift_sources"), str):
        options["shift_sources"] = [options["shift_sources"]]
    if isinstance(options.get("findings"), str):
        options["findings"] = [s.strip() for s in options["findings"].split(",")]
    spec = DataSpec(
        dataset=dataset,
        root=str(Path(root).expanduser().resolve()) if root else "",
        options={k: v for k, v in options.items() if k in adapter_options and v is not None},
        **{k: v for k, v in options.items() if k in spec_fields},
    )
    manifest, splits = spec.load()
    return LoadedData(spec, manifest, splits)
