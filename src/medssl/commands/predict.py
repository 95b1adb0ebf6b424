"""``medssl predict``: class probabilities for unlabeled images from a fine-tuned run.

The images go through exactly what ``medssl evaluate`` feeds the model: decoding by
:func:`medssl.data.imageio.read_image` (Pillow or pydicom, grey repeated to RGB), the shorter
side resized to the run's image size and a centre crop (:func:`~medssl.data.imageio.resize_square`,
as the image cache does; a run with ``source_scale`` > 1 first fits each image to its cached
source shape, :func:`~medssl.data.imageio.fit_shape`, as its cache did), ImageNet
normalisation and the fp32 forward pass of :func:`medssl.train.monitor.model_outputs`, then
softmax (multi-class) or sigmoid (multi-label).
Nothing is cached: images are decoded in threads a chunk at a time, so memory stays bounded
however many there are.

Inputs: a folder (every image file below it, hidden files skipped), a CSV with an image path
column (paths relative to the CSV's folder or absolute) and optionally a case column, or (from
Python) a list of paths. With a case column, each case's prediction is the mean of its images'
probabilities. A missing or undecodable image is a one-line :class:`MedsslError` naming it,
unless ``skip_unreadable``: then it is left out and listed in :attr:`Predictions.skipped`.

The output names the images (and cases) as the user gave them: these are the user's own
files, so nothing is hashed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medssl.data.files import IMAGE_EXTENSIONS, read_csv
from medssl.errors import MedsslError
from medssl.fileio import atomic_write

#: images decoded and scored per step (bounds the memory: CHUNK x S x S x 3 bytes)
CHUNK = 256
PROB_PREFIX = "prob_"


@dataclass
class ImageList:
    """The images to score: ``paths`` to read, ``names`` to write back, optional case ids."""

    paths: list[str]
    names: list[str]
    case_ids: list[str] | None = None
    #: (name, reason) of listed images that do not exist (only with ``skip_unreadable``)
    missing: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Predictions:
    """What :func:`predict_images` returns.

    ``images`` has one row per scored image: ``image`` (as given), ``case_id`` (with a case
    column), ``prob_<class>`` per class or finding, and ``prediction`` (the most probable
    class; multi-class only). ``cases`` (with a case column) has one row per case: ``case_id``,
    ``n_images``, the mean probabilities and ``prediction``. ``probs`` is the ``(N, K)``
    array behind ``images``; ``skipped`` lists ``(image, reason)`` of images left out.
    """

    class_names: list[str]
    task: str
    probs: np.ndarray
    images: pd.DataFrame
    cases: pd.DataFrame | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def write(
        self, out: str | os.PathLike[str], case_out: str | os.PathLike[str] | None = None
    ) -> dict[str, Path]:
        """Write the CSVs atomically; return what was written where.

        ``out`` gets the image rows; the case rows go to ``case_out`` (default
        ``<out stem>.cases.csv``) and the skipped images to ``<out stem>.skipped.csv`` (a stale
        list from an earlier run of the same ``out`` is removed when nothing was skipped).
        """
        out = Path(out).expanduser()
        for path in (out, case_out):
            if path is not None and Path(path).expanduser().is_dir():
                raise MedsslError(f"--out {path} is a folder; give a file name")
        written = {"images": _write_csv(self.images, out)}
        if self.cases is not None:
            target = Path(case_out).expanduser() if case_out else sibling(out, "cases")
            written["cases"] = _write_csv(self.cases, target)
        skipped_path = sibling(out, "skipped")
        if self.skipped:
            frame = pd.DataFrame(self.skipped, columns=["image", "reason"])
            written["skipped"] = _write_csv(frame, skipped_path)
        else:
            skipped_path.unlink(missing_ok=True)
        return written


def sibling(out: Path, kind: str) -> Path:
    """``predictions.csv`` -> ``predictions.<kind>.csv`` beside it."""
    return out.with_name(f"{out.stem}.{kind}.csv")


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.7g"))


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
    csv_path: Path, image_column: str, case_column: str | None, skip_unreadable: bool
) -> ImageList:
    """The images a CSV lists (paths relative to its folder or absolute), with case ids.

    A listed file that does not exist is an error naming its row, or, with
    ``skip_unreadable``, an entry of :attr:`ImageList.missing`.
    """
    frame = read_csv(csv_path, [], "--images")
    names = _column(frame, image_column, "--image-column", csv_path)
    cases = _column(frame, case_column, "--case-column", csv_path) if case_column else None
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
        paths, [names[i] for i in keep], [cases[i] for i in keep] if cases else None, missing
    )


def list_images(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    image_column: str = "image",
    case_column: str | None = None,
    skip_unreadable: bool = False,
) -> ImageList:
    """A folder, a CSV file or a list of image paths -> :class:`ImageList`."""
    if not isinstance(images, (str, os.PathLike)):
        if case_column:
            raise MedsslError("--case-column needs --images to be a CSV file")
        paths = [str(Path(p).expanduser()) for p in images]
        if not paths:
            raise MedsslError("predict: the list of images is empty")
        return ImageList(paths, [str(p) for p in images])
    path = Path(images).expanduser()
    if path.is_dir():
        if case_column:
            raise MedsslError(f"--case-column needs a CSV file, but --images {path} is a folder")
        return list_folder(path)
    if not path.exists():
        raise MedsslError(f"--images {path}: no such file or folder")
    if path.suffix.lower() != ".csv":
        raise MedsslError(f"--images {path}: expected a folder of images or a .csv file")
    return list_csv(path, image_column, case_column, skip_unreadable)


def _decoder(size: int, source: Sequence[int] = ()):  # noqa: ANN202 - a closure
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


def load_finetuned(run: str | os.PathLike[str], device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """The classifier of a finished finetune run (eval mode) and the run's config.

    ``config["class_names"]`` and ``config["task"]`` are always filled (older runs did not
    record them: they are read from the run's data description then).
    """
    import torch

    from medssl.commands.evaluate import load_classifier
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


def predict_images(
    run: str | os.PathLike[str],
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    image_column: str = "image",
    case_column: str | None = None,
    skip_unreadable: bool = False,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
) -> Predictions:
    """Class probabilities of ``images`` under the fine-tuned classifier of ``run``.

    ``images`` is a folder, a CSV (``image_column`` holds the paths, ``case_column`` the case
    ids) or a list of paths. See the module docstring for the preprocessing and the errors.
    """
    import torch
    from tqdm import tqdm

    from medssl.train.finetune import probabilities
    from medssl.train.monitor import model_outputs

    if batch_size < 1:
        raise MedsslError(f"--batch-size must be >= 1, got {batch_size}")
    listed = list_images(images, image_column, case_column, skip_unreadable)
    model, cfg = load_finetuned(run, device)
    dev = next(model.parameters()).device
    size, names, task = int(cfg["image_size"]), list(cfg["class_names"]), str(cfg["task"])
    decode = _decoder(size, [int(n) for n in cfg.get("source_shape") or ()])
    skipped = list(listed.missing)
    kept: list[int] = []
    outputs: list[torch.Tensor] = []
    bar = tqdm(
        total=len(listed.paths), desc="predicting", unit="img", disable=not progress,
        file=sys.stderr,
    )  # fmt: skip
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool, bar:
        for start in range(0, len(listed.paths), CHUNK):
            chunk = listed.paths[start : start + CHUNK]
            arrays = []
            for offset, result in enumerate(pool.map(decode, chunk)):
                if isinstance(result, MedsslError):
                    if not skip_unreadable:
                        raise MedsslError(f"{result} (--skip-unreadable leaves it out)")
                    skipped.append((listed.names[start + offset], str(result)))
                    continue
                kept.append(start + offset)
                arrays.append(result)
            if arrays:
                pixels = np.stack(arrays)
                rows = np.arange(len(pixels))
                outputs.append(model_outputs(model, pixels, rows, dev, batch_size=batch_size))
            bar.update(len(chunk))
    if not kept:
        raise MedsslError(f"predict: none of the {len(skipped)} image(s) could be read")
    probs = probabilities(task, torch.cat(outputs))
    image_names = [listed.names[i] for i in kept]
    case_ids = [listed.case_ids[i] for i in kept] if listed.case_ids is not None else None
    table = _table({"image": image_names}, case_ids, probs, names, task)
    cases = None
    if case_ids is not None:
        cases = case_table(case_ids, probs, names, task)
    return Predictions(names, task, probs, table, cases, skipped)


def _table(
    first: dict[str, list[Any]],
    case_ids: list[str] | None,
    probs: np.ndarray,
    names: list[str],
    task: str,
) -> pd.DataFrame:
    columns: dict[str, Any] = dict(first)
    if case_ids is not None:
        columns["case_id"] = case_ids
    for k, name in enumerate(names):
        columns[f"{PROB_PREFIX}{name}"] = probs[:, k]
    if task == "multiclass":
        columns["prediction"] = [names[k] for k in probs.argmax(1)]
    return pd.DataFrame(columns)


def case_table(case_ids: list[str], probs: np.ndarray, names: list[str], task: str) -> pd.DataFrame:
    """One row per case (in order of first appearance): its images' mean probabilities."""
    codes, uniques = pd.factorize(pd.Series(case_ids), sort=False)
    counts = np.bincount(codes, minlength=len(uniques))
    sums = np.zeros((len(uniques), probs.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, probs.astype(np.float64))
    means = (sums / counts[:, None]).astype(np.float32)
    table = _table({"case_id": list(uniques)}, None, means, names, task)
    table.insert(1, "n_images", counts)
    return table


def written_summary(result: Predictions, written: dict[str, Path]) -> dict[str, Any]:
    """What ``medssl predict --json`` prints: counts and the files :meth:`~Predictions.write`
    wrote."""
    return {
        "images": len(result.images),
        "cases": None if result.cases is None else len(result.cases),
        "skipped": len(result.skipped),
        "files": {k: str(v) for k, v in written.items()},
    }


def format_written(result: Predictions, written: dict[str, Path]) -> str:
    """What ``medssl predict`` prints: how many predictions went to which file."""
    lines = [f"{len(result.images)} image predictions -> {written['images']}"]
    if result.cases is not None:
        lines.append(f"{len(result.cases)} case predictions -> {written['cases']}")
    return "\n".join(lines)


def format_skipped(result: Predictions, written: dict[str, Path], shown: int = 20) -> str:
    """The images left out as unreadable (the first ``shown``), for stderr; "" when none."""
    if not result.skipped:
        return ""
    lines = [f"skipped {len(result.skipped)} unreadable image(s), listed in {written['skipped']}:"]
    lines += [f"  {image}: {reason}" for image, reason in result.skipped[:shown]]
    if len(result.skipped) > shown:
        lines.append(f"  ... and {len(result.skipped) - shown} more")
    return "\n".join(lines)
