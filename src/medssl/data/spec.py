"""What a run needs to find its data again: dataset layout, root, options and protocol.

A :class:`DataSpec` is saved in every run's config, so ``finetune`` and ``evaluate``
rebuild the exact manifest and splits a pretraining run used, and a user can point
``evaluate`` at another dataset by giving another spec.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medssl.data.adapters import DATASETS, load_manifest
from medssl.data.adapters.unlabeled import NAME as IMAGES
from medssl.data.files import missing_images_kept
from medssl.data.manifest import Manifest
from medssl.data.splits import SPLIT_SCHEMES, Splits, make_splits
from medssl.errors import MedsslError
from medssl.options import MAX_SEED, Given, option, read, read_yaml_mapping, settings

#: settings left out of a saved spec at their default (runs made before them compare equal)
_UNRECORDED_DEFAULTS = {"split_scheme": "canonical", "unlabeled": False, "exclude": None}


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
    unlabeled: bool = option(
        False, help="pretraining: every image of the dataset without its label, no split "
        "(as --dataset images does for a folder or CSV of images)",
    )  # fmt: skip
    exclude: dict[str, Any] | None = option(
        None, metavar="PATH[:SPLITS[:BY]]",
        help="unlabeled data: leave out the images (and their cases) of a labelled set's "
        "splits. PATH: a run directory or a YAML data spec; SPLITS default val,test,shift; "
        "BY: file (same file or bytes, default) or case (also the same case id)",
    )  # fmt: skip

    def __post_init__(self) -> None:
        # A dataset's canonical protocol may hold out sources (HAM10000: rosendahl; the
        # synthetic data: one site). The spec carries them, rather than the split code
        # special-casing datasets, so they are saved with every run's config like any
        # user-given --shift-source; [] holds out nothing.
        info = DATASETS.get(self.dataset)
        if self.shift_sources is None and info is not None and info.shift_sources:
            self.shift_sources = list(info.shift_sources)

    def load(self, keep_missing: bool = False) -> tuple[Manifest, Splits]:
        """The manifest and its splits; ``keep_missing``: keep listed images that do not
        exist (:func:`~medssl.data.files.missing_images_kept`: ``--skip-unreadable``)."""
        manifest = self.load_manifest(keep_missing)
        return manifest, self.splits(manifest)

    def load_manifest(self, keep_missing: bool = False) -> Manifest:
        """The dataset's manifest, without splitting it: without labels for ``unlabeled``,
        less an exclusion's images for ``exclude``."""
        with missing_images_kept(keep_missing):
            manifest = load_manifest(self.dataset, self.root, **self.options)
        if self.unlabeled:
            manifest = manifest.without_labels()
        if self.exclude:
            from medssl.data.exclusion import exclude_from_pool

            manifest = exclude_from_pool(manifest, self.exclude)
        return manifest

    def splits(self, manifest: Manifest) -> Splits:
        """This spec's splits of ``manifest`` (also of one reduced by unreadable images)."""
        return make_splits(manifest, self.split_scheme, self.split_seed, self.shift_sources)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, default in _UNRECORDED_DEFAULTS.items():
            if out[key] == default:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        """A spec as a run recorded it (lenient: older runs may hold options of other
        datasets); user input goes through :func:`read_spec`."""
        return cls(**data)


def is_pool(spec: dict[str, Any]) -> bool:
    """Whether a saved spec is unlabeled pretraining data (no split, no labels)."""
    return spec.get("dataset") == IMAGES or bool(spec.get("unlabeled"))


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
    if isinstance(given.get("exclude"), str | os.PathLike):  # PATH[:SPLITS[:BY]]
        from medssl.data.exclusion import exclusion_from_text

        text = os.fspath(given.get("exclude"))
        given.set("exclude", exclusion_from_text(text, base or Path.cwd(), given.name("exclude")),
                  given.where_of("exclude"))  # fmt: skip
    elif given.get("exclude") is not None:
        from medssl.data.exclusion import checked_exclusion

        given.set("exclude", checked_exclusion(given.get("exclude"), given.name("exclude")),
                  given.where_of("exclude"))  # fmt: skip
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


def spec_at(path: Path, option: str) -> dict[str, Any]:
    """The saved data spec of a run directory, or the data spec a YAML file holds (its keys,
    or its ``data:`` block as in a sweep protocol; roots relative to the file)."""
    if path.is_dir():
        config = path / "config.yaml"
        if not config.is_file():
            raise MedsslError(f"{option} {path}: neither a medssl run directory nor a YAML file")
        data = read_yaml_mapping(config, f"{option} {config}", "a run's configuration").get("data")
        if not isinstance(data, dict):
            raise MedsslError(f"{option} {path}: the run's config.yaml has no data spec")
        return data
    if not path.is_file():
        raise MedsslError(f"{option} {path}: no such run directory or YAML file")
    where = f"{option} {path}"
    mapping = read_yaml_mapping(path, where, "a data spec (dataset, root, ...)")
    block = mapping.get("data", mapping)
    if not isinstance(block, dict):
        raise MedsslError(f"{where}: data: expected a data spec mapping")
    from medssl.data.adapters import option_names

    flat = {k: v for k, v in block.items() if k in option_names()}  # case_by: parent, ...
    nested = block.get("options") or {}
    if not isinstance(nested, dict):
        raise MedsslError(f"{where}: options: expected a mapping")
    spec = {k: v for k, v in block.items() if k in SPEC_KEYS}
    return read_spec(Given(spec), Given({**nested, **flat}), base=path.parent).to_dict()
