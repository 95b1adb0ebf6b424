"""Class probabilities for unlabeled images from a fine-tuned run (``medssl predict``).

The images go through exactly what ``medssl evaluate`` feeds the model
(:mod:`medssl.inference`: the same decoding, resizing and centre crop, ImageNet normalisation
and fp32 forward pass), then softmax (multi-class) or sigmoid (multi-label). With a case
column, each case's prediction is the mean of its images' probabilities. A missing or
undecodable image is a one-line :class:`MedsslError` naming it, unless ``skip_unreadable``:
then it is left out and listed in :attr:`Predictions.skipped`.

The output names the images (and cases) as the user gave them: these are the user's own
files, so nothing is hashed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medssl.errors import MedsslError
from medssl.fileio import atomic_write
from medssl.inference import ImageList, decode_images, list_images, load_finetuned, run_decoder
from medssl.outputs import Named, check_outputs, run_files

PROB_PREFIX = "prob_"


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
    #: the files and image folders that were read, as :func:`medssl.outputs.check_outputs`
    #: takes them: :meth:`write` refuses to write over any of them
    inputs: tuple[list[Named], list[Named]] = field(default_factory=lambda: ([], []), repr=False)

    def write(
        self, out: str | os.PathLike[str], case_out: str | os.PathLike[str] | None = None
    ) -> dict[str, Path]:
        """Write the CSVs atomically; return what was written where.

        ``out`` gets the image rows; the case rows go to ``case_out`` (default
        ``<out stem>.cases.csv``) and the skipped images to ``<out stem>.skipped.csv`` (a stale
        list from an earlier run of the same ``out`` is removed when nothing was skipped).
        Nothing is written when one of these files is an input or another of them
        (:func:`medssl.outputs.check_outputs`).
        """
        files = output_files(out, case_out, cases=self.cases is not None)
        check_outputs(files, *self.inputs)
        out = files[0][1]
        written = {"images": _write_csv(self.images, out)}
        if self.cases is not None:
            written["cases"] = _write_csv(self.cases, files[1][1])
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


def output_files(
    out: str | os.PathLike[str], case_out: str | os.PathLike[str] | None = None, cases: bool = False
) -> list[tuple[str, Path]]:
    """The files :meth:`Predictions.write` writes or removes for ``out``, with the option
    that names them: the image rows, the case rows (with ``cases``), the skipped list."""
    path = Path(out).expanduser()
    files = [("--out", path)]
    if cases:
        files.append(("--case-out", Path(case_out).expanduser()) if case_out
                     else ("--out", sibling(path, "cases")))  # fmt: skip
    return [*files, ("--out", sibling(path, "skipped"))]


def read_files(
    run: str | os.PathLike[str],
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    listed: ImageList,
) -> tuple[list[Named], list[Named]]:
    """(files, image folders) that predicting ``images`` with ``run`` reads, named for
    :func:`medssl.outputs.check_outputs`: the run's files, the CSV or folder, every image."""
    files = run_files(run)
    folders: list[Named] = []
    if isinstance(images, (str, os.PathLike)):
        path = Path(images).expanduser()
        (folders if path.is_dir() else files).append((f"--images {images}", path))
        where = f" in --images {images}"
    else:
        where = " of the images given"
    files += [
        (f"image {name}{where}", p) for name, p in zip(listed.names, listed.paths, strict=True)
    ]
    return files, folders


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.7g"))


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
    out: str | os.PathLike[str] | None = None,
    case_out: str | os.PathLike[str] | None = None,
) -> Predictions:
    """Class probabilities of ``images`` under the fine-tuned classifier of ``run``.

    ``images`` is a folder, a CSV (``image_column`` holds the paths, ``case_column`` the case
    ids) or a list of paths. See the module docstring for the preprocessing and the errors.
    ``out`` and ``case_out``, the files :meth:`Predictions.write` will be given, are checked
    before any work (:func:`medssl.outputs.check_outputs`); nothing is written here.
    """
    import torch

    from medssl.train.finetune import probabilities
    from medssl.train.monitor import model_outputs

    if batch_size < 1:
        raise MedsslError(f"--batch-size must be >= 1, got {batch_size}")
    listed = list_images(images, image_column, case_column, skip_unreadable)
    inputs = read_files(run, images, listed)
    if out is not None:
        check_outputs(output_files(out, case_out, cases=listed.case_ids is not None), *inputs)
    model, cfg = load_finetuned(run, device)
    dev = next(model.parameters()).device
    names, task = list(cfg["class_names"]), str(cfg["task"])
    skipped = list(listed.missing)
    kept: list[int] = []
    outputs: list[torch.Tensor] = []
    for rows, pixels in decode_images(
        listed, run_decoder(cfg), skipped, skip_unreadable=skip_unreadable, progress=progress,
        desc="predicting",
    ):  # fmt: skip
        kept += rows
        every = np.arange(len(pixels))
        outputs.append(model_outputs(model, pixels, every, dev, batch_size=batch_size))
    if not kept:
        raise MedsslError(f"predict: none of the {len(skipped)} image(s) could be read")
    probs = probabilities(task, torch.cat(outputs))
    image_names = [listed.names[i] for i in kept]
    case_ids = [listed.case_ids[i] for i in kept] if listed.case_ids is not None else None
    table = _table({"image": image_names}, case_ids, probs, names, task)
    cases = None
    if case_ids is not None:
        cases = case_table(case_ids, probs, names, task)
    return Predictions(names, task, probs, table, cases, skipped, inputs)


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
