"""A trained medssl model on image files: loading it, and the images prepared for it.

:func:`load_classifier` / :func:`load_finetuned` load a finished finetune run's classifier.
:func:`list_images` turns a folder, a CSV or a list of paths into an :class:`ImageList`, and
:func:`decode_images` decodes it a chunk at a time into exactly what ``medssl evaluate`` feeds
the model: decoding by :func:`medssl.data.imageio.read_image` (Pillow or pydicom, grey
repeated to RGB), the shorter side resized to the run's image size and a centre crop
(:func:`~medssl.data.imageio.resize_square`, as the image cache does; a run with
``source_scale`` > 1 first fits each image to its cached source shape,
:func:`~medssl.data.imageio.fit_shape`, as its cache did). The model then applies the ImageNet
normalisation and the fp32 forward pass of :func:`medssl.train.monitor.model_outputs`.
Nothing is cached: images are decoded in threads a chunk at a time, so memory stays bounded
however many there are.

Inputs: a folder (every image file below it, hidden files skipped), a CSV with an image path
column (paths relative to the CSV's folder or absolute) and optionally a case column, or (from
Python) a list of paths. A missing or undecodable image is a one-line :class:`MedsslError`
naming it, unless ``skip_unreadable``: then it is left out and listed.

Used by ``medssl evaluate`` (:mod:`medssl.evaluation`), ``predict`` (:mod:`medssl.prediction`),
``export`` and ``embed`` (:mod:`medssl.embedding`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medssl.data.files import IMAGE_EXTENSIONS, read_csv
from medssl.errors import MedsslError

if TYPE_CHECKING:
    import torch

    from medssl.models.heads import Classifier

#: images decoded and scored per step (bounds the memory: CHUNK x S x S x 3 bytes)
CHUNK = 256


@dataclass
class ImageList:
    """The images to score: ``paths`` to read, ``names`` to write back, optional case ids."""

    paths: list[str]
    names: list[str]
    case_ids: list[str] | None = None
    #: (name, reason) of listed images that do not exist (only with ``skip_unreadable``)
    missing: list[tuple[str, str]] = field(default_factory=list)
    #: further CSV columns asked for (``{"class": [...], "source": [...]}``), one value per image
    labels: dict[str, list[str]] = field(default_factory=dict)


def load_classifier(run: Path, num_classes: int, device: torch.device) -> Classifier:
    """The fine-tuned classifier of ``run`` (its best checkpoint) on ``device``, channels-last."""
    import torch

    from medssl.models.backbones import backbone_from_config
    from medssl.models.checkpoint import read_checkpoint
    from medssl.models.heads import Classifier
    from medssl.train.finetune import BEST
    from medssl.train.run import read_config

    cfg = read_config(run)
    if not (run / BEST).is_file():
        raise MedsslError(f"--model {run} has no {BEST}: is it a finished finetune run?")
    backbone, feat_dim = backbone_from_config(cfg)
    model = Classifier(backbone, feat_dim, num_classes)
    state = read_checkpoint(run / BEST)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise MedsslError(f"{run / BEST} is damaged: it holds no model state")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MedsslError(f"{run / BEST} does not fit the run's model: {first}") from None
    return model.to(device).to(memory_format=torch.channels_last)


def load_finetuned(run: str | os.PathLike[str], device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """The classifier of a finished finetune run (eval mode) and the run's config.

    ``config["class_names"]`` and ``config["task"]`` are always filled (older runs did not
    record them: they are read from the run's data description then).
    """
    import torch

    from medssl.train.common import resolve_device
    from medssl.train.run import is_complete, read_config

    path = Path(run).expanduser()
    if not path.is_dir():
        raise MedsslError(f"--model {run}: no such run directory")
    cfg = read_config(path)
    if "label_fraction" not in cfg:
        raise MedsslError(f"--model {run} is a pretraining run; give a finetune run")
    if not is_complete(path):
        raise MedsslError(f"--model {run} is not a finished medssl finetune run")
    if not cfg.get("class_names") or not cfg.get("task"):
        from medssl.data.spec import DataSpec

        manifest, _ = DataSpec.from_dict(cfg["data"]).load()
        cfg["class_names"], cfg["task"] = list(manifest.class_names), manifest.task
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    model = load_classifier(path, len(cfg["class_names"]), dev).eval()
    return model, cfg


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def list_folder(folder: Path) -> ImageList:
    """Every image file below ``folder`` (sorted, hidden skipped), named relative to it."""
    exts = tuple(e.lower() for e in IMAGE_EXTENSIONS)
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        paths.extend(
            Path(dirpath) / f for f in sorted(filenames)
            if not _hidden(f) and f.lower().endswith(exts)
        )  # fmt: skip
    if not paths:
        raise MedsslError(
            f"--images {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) below it"
        )
    return ImageList([str(p) for p in paths], [p.relative_to(folder).as_posix() for p in paths])


def _column(frame: pd.DataFrame, column: str, option: str, csv_path: Path) -> list[str]:
    if column not in frame.columns:
        raise MedsslError(
            f"--images {csv_path} has no column '{column}' (set {option}; "
            f"columns: {', '.join(map(str, frame.columns[:12]))})"
        )
    cells = [c.strip() for c in frame[column]]
    for row, cell in enumerate(cells):
        if not cell:
            raise MedsslError(f"--images {csv_path} row {row + 2}: empty cell in column '{column}'")
    return cells


def list_csv(
    csv_path: Path,
    image_column: str,
    case_column: str | None,
    skip_unreadable: bool,
    label_columns: Mapping[str, str] | None = None,
) -> ImageList:
    """The images a CSV lists (paths relative to its folder or absolute), with case ids and
    the ``label_columns`` (``{name: CSV column}``, read with option ``--<name>-column``).

    A listed file that does not exist is an error naming its row, or, with
    ``skip_unreadable``, an entry of :attr:`ImageList.missing`.
    """
    frame = read_csv(csv_path, [], "--images")
    names = _column(frame, image_column, "--image-column", csv_path)
    cases = _column(frame, case_column, "--case-column", csv_path) if case_column else None
    labels = {
        name: _column(frame, column, f"--{name}-column", csv_path)
        for name, column in (label_columns or {}).items()
    }
    keep, missing, paths = [], [], []
    for row, name in enumerate(names):
        path = Path(name).expanduser()
        path = path if path.is_absolute() else csv_path.parent / path
        if path.is_file():
            keep.append(row)
            paths.append(str(path))
        elif skip_unreadable:
            missing.append((name, f"not found at {path}"))
        else:
            raise MedsslError(
                f"--images {csv_path} row {row + 2}: image {name} not found at {path} "
                "(--skip-unreadable leaves it out)"
            )
    return ImageList(
        paths, [names[i] for i in keep], [cases[i] for i in keep] if cases else None, missing,
        {name: [values[i] for i in keep] for name, values in labels.items()},
    )  # fmt: skip


def list_images(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    image_column: str = "image",
    case_column: str | None = None,
    skip_unreadable: bool = False,
    command: str = "predict",
    label_columns: Mapping[str, str] | None = None,
) -> ImageList:
    """A folder, a CSV file or a list of image paths -> :class:`ImageList` (``command``
    names the caller in the message for an empty list; ``label_columns`` as for
    :func:`list_csv`)."""
    needs_csv = [f"--{n}-column" for n in label_columns or {}] + (
        ["--case-column"] if case_column else []
    )
    if not isinstance(images, (str, os.PathLike)):
        if needs_csv:
            raise MedsslError(f"{needs_csv[0]} needs --images to be a CSV file")
        paths = [str(Path(p).expanduser()) for p in images]
        if not paths:
            raise MedsslError(f"{command}: the list of images is empty")
        return ImageList(paths, [str(p) for p in images])
    path = Path(images).expanduser()
    if path.is_dir():
        if needs_csv:
            raise MedsslError(f"{needs_csv[0]} needs a CSV file, but --images {path} is a folder")
        return list_folder(path)
    if not path.exists():
        raise MedsslError(f"--images {path}: no such file or folder")
    if path.suffix.lower() != ".csv":
        raise MedsslError(f"--images {path}: expected a folder of images or a .csv file")
    return list_csv(path, image_column, case_column, skip_unreadable, label_columns)


def decoder(size: int, source: Sequence[int] = ()):  # noqa: ANN202 - a closure
    """Decoding as the run's image cache and evaluation do it: reduced-scale JPEG draft,
    shorter side, centre crop; with a ``source`` shape (``source_scale`` > 1) the image is
    first fitted to it, then brought to ``size`` like :func:`medssl.data.cache.eval_images`."""
    from medssl.data.imageio import fit_shape, read_image, resize_square

    def decode(path: str) -> np.ndarray | MedsslError:
        try:
            if source:
                fitted = fit_shape(read_image(path, min_side=max(source)), *source)
                return resize_square(fitted, size)
            return resize_square(read_image(path, min_side=size), size)
        except MedsslError as exc:
            return exc

    return decode


def run_decoder(cfg: dict[str, Any]) -> Callable[[str], np.ndarray | MedsslError]:
    """:func:`decoder` for the images of a run with config ``cfg`` (its image size and,
    with ``source_scale`` > 1, its source shape)."""
    return decoder(int(cfg["image_size"]), [int(n) for n in cfg.get("source_shape") or ()])


def decode_images(
    listed: ImageList,
    decode: Callable[[str], np.ndarray | MedsslError],
    skipped: list[tuple[str, str]],
    *,
    skip_unreadable: bool = False,
    progress: bool = True,
    desc: str = "predicting",
) -> Iterator[tuple[list[int], np.ndarray]]:
    """``(rows of listed, (n, S, S, 3) uint8 pixels)`` a chunk of :data:`CHUNK` at a time.

    An image ``decode`` cannot read is a one-line error, or with ``skip_unreadable`` it is
    appended to ``skipped`` as ``(name, reason)``; a chunk with no readable image is not
    yielded. The progress bar (stderr) counts every listed image.
    """
    from tqdm import tqdm

    bar = tqdm(
        total=len(listed.paths), desc=desc, unit="img", disable=not progress, file=sys.stderr
    )
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, bar:
        for start in range(0, len(listed.paths), CHUNK):
            chunk = listed.paths[start : start + CHUNK]
            rows, arrays = [], []
            for offset, result in enumerate(pool.map(decode, chunk)):
                if isinstance(result, MedsslError):
                    if not skip_unreadable:
                        raise MedsslError(f"{result} (--skip-unreadable leaves it out)")
                    skipped.append((listed.names[start + offset], str(result)))
                    continue
                rows.append(start + offset)
                arrays.append(result)
            if arrays:
                yield rows, np.stack(arrays)
            bar.update(len(chunk))
