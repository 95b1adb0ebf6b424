"""What a run needs to find its data again: dataset layout, root, options and protocol.

A :class:`DataSpec` is saved in every run's config, so ``finetune`` and ``evaluate``
rebuild the exact manifest and splits a pretraining run used, and a user can point
``evaluate`` at another dataset by giving another spec.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medssl.data.adapters import ADAPTERS, NO_ROOT, load_manifest
from medssl.data.manifest import Manifest
from medssl.data.splits import SPLIT_SCHEMES, Splits, make_splits
from medssl.errors import MedsslError

_OPTION_KEYS = (
    "subtypes", "uncertain", "findings", "csv_path", "csv_image", "csv_label", "csv_case",
    "csv_source", "csv_view", "csv_labels_sep", "synthetic_cases",
)  # fmt: skip


@dataclass
class DataSpec:
    dataset: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)
    shift_sources: list[str] | None = None
    split_seed: int = 0
    split_scheme: str = "canonical"  # or "official": the publisher's split (splits.py)

    def __post_init__(self) -> None:
        # The synthetic dataset's canonical protocol holds out one acquisition site. The
        # spec carries it (rather than the split code special-casing the dataset) so it is
        # saved with every run's config like any user-given --shift-source.
        if self.dataset == "synthetic" and self.shift_sources is None:
            from medssl.data.synthetic import SYNTHETIC_SHIFT_SOURCE

            self.shift_sources = [SYNTHETIC_SHIFT_SOURCE]

    def load(self) -> tuple[Manifest, Splits]:
        manifest = load_manifest(self.dataset, self.root, **self.options)
        return manifest, self.splits(manifest)

    def splits(self, manifest: Manifest) -> Splits:
        """This spec's splits of ``manifest`` (also of one reduced by unreadable images)."""
        return make_splits(manifest, self.split_scheme, self.split_seed, self.shift_sources)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["split_scheme"] == "canonical":  # runs made before the option compare equal
            del out["split_scheme"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        return cls(**data)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DataSpec:
        if not args.root and args.dataset not in NO_ROOT:
            raise MedsslError(f"--root is required with --dataset {args.dataset}")
        options = {k: getattr(args, k) for k in _OPTION_KEYS if getattr(args, k, None)}
        if isinstance(options.get("findings"), str):
            options["findings"] = [s.strip() for s in options["findings"].split(",")]
        return cls(
            dataset=args.dataset,
            root=str(Path(args.root).expanduser().resolve()) if args.root else "",
            options=options,
            shift_sources=args.shift_source or None,
            split_seed=args.split_seed,
            split_scheme=getattr(args, "split_scheme", None) or "canonical",
        )


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The dataset options shared by every command that reads data."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=sorted(ADAPTERS), required=required)
    group.add_argument("--root", help="dataset folder in its publisher's layout")
    group.add_argument(
        "--shift-source", action="append", metavar="SOURCE",
        help="hold out this source as the shift split (repeatable; HAM10000: rosendahl)",
    )  # fmt: skip
    group.add_argument("--split-seed", type=int, default=0, help="seed of the case split")
    group.add_argument(
        "--split-scheme", choices=SPLIT_SCHEMES, default="canonical",
        help="canonical: medssl's 70/10/20 re-split by case; official: the publisher's split "
        "(CheXpert, NIH lists, MedMNIST, pneumonia folders; docs/PROTOCOLS.md)",
    )  # fmt: skip
    group.add_argument("--subtypes", action="store_true", help="pneumonia: bacteria/virus")
    group.add_argument(
        "--uncertain", choices=["ignore", "positive", "negative"],
        help="CheXpert uncertain labels: masked (ignore), as positive or as negative",
    )  # fmt: skip
    group.add_argument("--findings", help="comma-separated findings (CheXpert)")
    group.add_argument("--csv-path", help="csv: the label file (default ROOT/labels.csv)")
    group.add_argument("--csv-image", help="csv: image path column (default image)")
    group.add_argument("--csv-label", help="csv: label column (default label)")
    group.add_argument("--csv-case", help="csv: case (patient) column")
    group.add_argument("--csv-source", help="csv: source (site) column")
    group.add_argument("--csv-view", help="csv: view column")
    group.add_argument("--csv-labels-sep", help="csv: separator of multi-label values, e.g. '|'")
    group.add_argument("--synthetic-cases", type=int,
                       help="synthetic: number of generated cases (default 600)")  # fmt: skip
    group.add_argument("--cache-dir", help="decoded-image cache (default ~/.cache/medssl)")
    group.add_argument(
        "--skip-unreadable", action="store_true",
        help="drop images that cannot be decoded (and report how many) instead of stopping",
    )  # fmt: skip
