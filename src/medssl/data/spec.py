"""What a run needs to find its data again: dataset layout, root, options and protocol.

A :class:`DataSpec` is saved in every run's config, so ``finetune`` and ``evaluate``
rebuild the exact manifest and splits a pretraining run used, and a user can point
``evaluate`` at another dataset by giving another spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medssl.data.adapters import DATASETS, load_manifest
from medssl.data.manifest import Manifest
from medssl.data.splits import SPLIT_SCHEMES, Splits, make_splits
from medssl.errors import MedsslError
from medssl.options import MAX_SEED, Given, option, read, settings


@dataclass
class DataSpec:
    dataset: str = option(choices=tuple(DATASETS), help="dataset layout")
    root: str = option("", help="dataset folder in its publisher's layout")
    options: dict[str, Any] = option(
        factory=dict, flag="", help="the dataset's own options (medssl.data.adapters)"
    )
    shift_sources: list[str] | None = option(
        None, flag="--shift-source", metavar="SOURCE",
        help="hold out this source as the shift split (repeatable; default: the dataset's, "
        "HAM10000: rosendahl, synthetic: site-B)",
    )  # fmt: skip
    split_seed: int = option(0, minimum=0, maximum=MAX_SEED, help="seed of the case split")
    split_scheme: str = option(
        "canonical", choices=SPLIT_SCHEMES,
        help="canonical: medssl's 70/10/20 re-split by case; official: the publisher's split "
        "(CheXpert, NIH lists, MedMNIST, pneumonia folders; docs/PROTOCOLS.md)",
    )  # fmt: skip

    def __post_init__(self) -> None:
        # A dataset's canonical protocol may hold out sources (HAM10000: rosendahl; the
        # synthetic data: one site). The spec carries them, rather than the split code
        # special-casing datasets, so they are saved with every run's config like any
        # user-given --shift-source; [] holds out nothing.
        info = DATASETS.get(self.dataset)
        if self.shift_sources is None and info is not None and info.shift_sources:
            self.shift_sources = list(info.shift_sources)

    def load(self) -> tuple[Manifest, Splits]:
        manifest = self.load_manifest()
        return manifest, self.splits(manifest)

    def load_manifest(self) -> Manifest:
        """The dataset's manifest, without splitting it."""
        return load_manifest(self.dataset, self.root, **self.options)

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
        """A spec as a run recorded it (lenient: older runs may hold options of other
        datasets); user input goes through :func:`read_spec`."""
        return cls(**data)


#: the spec's own settings (besides the dataset's options)
SPEC_KEYS = tuple(k for k in settings(DataSpec) if k != "options")


def read_spec(given: Given, options: Given | None = None, base: Path | None = None) -> DataSpec:
    """A :class:`DataSpec` from what a user wrote: flags, a config file's keys, a protocol's
    ``data`` block or the Python API. Every value is checked (its type and range, whether
    the dataset needs ``root``, whether an option is the dataset's own) with one-line errors
    naming the option as written. ``options``: the dataset's options, when they are not an
    ``options`` mapping in ``given``. A relative ``root`` is taken relative to ``base``
    (default: the working directory).
    """
    given = given.only([*SPEC_KEYS, "options"]) if options is not None else given
    if "options" in given:
        where = given.where_of("options")
        nested = read(DataSpec, given.only(["options"]))["options"]
        options = Given(nested, where.inside("options") if where is not None else None)
        given = given.only(SPEC_KEYS)
    values = read(DataSpec, given)
    if "dataset" not in values:
        raise MedsslError(f"{given.name('dataset')} is required")
    name = values["dataset"]
    info = DATASETS[name]
    root = values.get("root", "")
    if not root and info.needs_root:
        raise MedsslError(f"{given.name('root')}: required with dataset {name}")
    if root:
        values["root"] = str(((base or Path.cwd()) / Path(root).expanduser()).resolve())
    options = options or Given()
    own = settings(info.options)
    for key in options:
        if key not in own:
            theirs = f"its options: {', '.join(own)}" if own else "it has no options"
            raise MedsslError(f"{options.name(key)}: not an option of dataset {name} ({theirs})")
    return DataSpec(**values, options=read(info.options, options))


def checked_data(data: dict[str, Any]) -> dict[str, Any]:
    """A config's ``data`` dict, checked like user input (the Python API builds configs
    directly), in its saved form. Options are named with :func:`medssl.options.spelled`."""
    if not isinstance(data, dict):
        raise MedsslError(f"data: expected a data spec mapping, got {data!r}")
    spec = {k: v for k, v in data.items() if k != "options"}
    return read_spec(Given(spec), Given(data.get("options") or {})).to_dict()
