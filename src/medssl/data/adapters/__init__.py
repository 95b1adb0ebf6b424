"""Adapters: one per public dataset layout, each returning a :class:`Manifest`.

What medssl knows about a dataset is one :class:`Dataset` record in :data:`DATASETS`: its
loader, its options (a dataclass of :func:`medssl.options.option` fields: type, default,
help), whether it reads a ``root``, its default augmentation preset and the sources held
out as its shift split by default. :mod:`medssl.data.spec`, :mod:`medssl.augment` and the
command line read these records; nothing else lists datasets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from medssl.data.adapters.chexpert import UNCERTAIN_POLICIES, load_chexpert
from medssl.data.adapters.generic import load_csv, load_folder
from medssl.data.adapters.ham10000 import load_ham10000
from medssl.data.adapters.medmnist import load_medmnist
from medssl.data.adapters.nih import load_nih
from medssl.data.adapters.pneumonia import load_pneumonia
from medssl.data.adapters.tinyimagenet import load_tiny_imagenet
from medssl.data.adapters.unlabeled import load_images
from medssl.data.manifest import Manifest
from medssl.data.synthetic import SYNTHETIC_SHIFT_SOURCE, make_synthetic
from medssl.errors import MedsslError
from medssl.options import MAX_SEED, Given, Where, option, read, settings


@dataclass(frozen=True)
class NoOptions:
    """A dataset read from its layout alone."""


@dataclass(frozen=True)
class PneumoniaOptions:
    subtypes: bool = option(False, help="bacteria / virus classes instead of PNEUMONIA")


@dataclass(frozen=True)
class ChexpertOptions:
    findings: list[str] | None = option(
        None, help="comma-separated findings (default: the five competition findings)"
    )
    uncertain: str = option(
        "ignore", choices=tuple(UNCERTAIN_POLICIES),
        help="uncertain labels masked (ignore), as positive or as negative",
    )  # fmt: skip


@dataclass(frozen=True)
class CsvOptions:
    csv_path: str | None = option(None, help="the label file (default: ROOT/labels.csv)")
    csv_image: str = option("image", help="image path column")
    csv_label: str = option("label", help="label column")
    csv_case: str | None = option(None, help="case (patient) column")
    csv_source: str | None = option(None, help="source (site) column")
    csv_view: str | None = option(None, help="view column")
    csv_labels_sep: str | None = option(
        None, help="separator of multi-label values, e.g. '|' (multi-label task)"
    )


@dataclass(frozen=True)
class ImagesOptions:
    case_by: str = option(
        "image", metavar="RULE",
        help="images: which images form one case (MICLe's bags): image, parent (the folder), "
        "regex:PATTERN (one group, searched in the path below --root), column:NAME (a column "
        "of the CSV), dicom:TAG[+TAG] (e.g. dicom:PatientID, dicom:StudyInstanceUID)",
    )  # fmt: skip
    csv_path: str | None = option(None, help="the image list (default: none, scan --root)")
    csv_image: str = option("image", help="image path column")
    csv_source: str | None = option(None, help="source (site) column")
    csv_view: str | None = option(None, help="view column")


@dataclass(frozen=True)
class SyntheticOptions:
    synthetic_cases: int = option(600, minimum=8, help="number of generated cases")
    image_size: int = option(32, minimum=8, flag="", help="render size in pixels")
    synthetic_seed: int = option(
        0, minimum=0, maximum=MAX_SEED, flag="", help="seed of the generator"
    )


@dataclass(frozen=True)
class Dataset:
    """Everything medssl knows about one dataset layout."""

    name: str
    #: ``load(root, **options)`` -> Manifest, with every option of :attr:`options` given
    load: Callable[..., Manifest]
    options: type = NoOptions
    needs_root: bool = True  #: False: it reads nothing from disk (``--root`` not needed)
    preset: str = "derm"  #: default augmentation preset (:data:`medssl.augment.PRESETS`)
    shift_sources: tuple[str, ...] = ()  #: held out as the shift split by default
    about: str = ""


def _synthetic(root: Path, synthetic_cases: int, image_size: int, synthetic_seed: int) -> Manifest:
    """The generated demo dataset: ``root`` is ignored (nothing is read)."""
    return make_synthetic(synthetic_cases, image_size, synthetic_seed)


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("ham10000", load_ham10000, shift_sources=("rosendahl",),
                about="HAM10000 dermatoscopy (metadata CSV + JPEG folders)"),
        Dataset("nih", load_nih, preset="cxr", about="NIH ChestX-ray14 (Data_Entry CSV)"),
        Dataset("pneumonia", load_pneumonia, PneumoniaOptions, preset="cxr",
                about="pediatric pneumonia (chest_xray/{train,val,test}/{NORMAL,PNEUMONIA})"),
        Dataset("chexpert", load_chexpert, ChexpertOptions, preset="cxr",
                about="CheXpert (train.csv, valid.csv)"),
        Dataset("medmnist", load_medmnist, about="a MedMNIST .npz file"),
        Dataset("tiny-imagenet", load_tiny_imagenet,
                about="Tiny ImageNet, natural images (labels.csv + images/{train,val}/<wnid>, or "
                "the publisher's wnids.txt + train/ + val/val_annotations.txt)"),
        Dataset("csv", load_csv, CsvOptions, about="a labels CSV of image paths"),
        Dataset("folder", load_folder, about="class subfolders of images"),
        Dataset("images", load_images, ImagesOptions,
                about="unlabeled images for pretraining: a folder (searched recursively) or a "
                "CSV of paths; cases from --case-by"),
        Dataset("synthetic", _synthetic, SyntheticOptions, needs_root=False,
                shift_sources=(SYNTHETIC_SHIFT_SOURCE,),
                about="generated demo images (not medical data)"),
    )
}  # fmt: skip


def dataset_info(name: str) -> Dataset:
    """The record of dataset ``name``; an unknown name is a one-line error."""
    if name not in DATASETS:
        raise MedsslError(f"dataset {name!r} is not one of {', '.join(DATASETS)}")
    return DATASETS[name]


def option_names() -> dict[str, list[str]]:
    """Every dataset option, with the datasets that read it."""
    out: dict[str, list[str]] = {}
    for d in DATASETS.values():
        for f in fields(d.options):
            out.setdefault(f.name, []).append(d.name)
    return out


def load_manifest(dataset: str, root: str | Path, **options: Any) -> Manifest:
    """Read ``root`` in the layout of ``dataset``.

    ``options`` are checked against the dataset's options (None means unset); options of
    other datasets are ignored, so configs of older runs that recorded them still load.
    """
    info = dataset_info(dataset)
    own = settings(info.options)
    given = {k: v for k, v in options.items() if k in own and v is not None}
    values = read(info.options, Given(given, Where("data option ")))
    full = {name: values.get(name, s.default) for name, s in own.items()}
    return info.load(Path(root).expanduser(), **full)
