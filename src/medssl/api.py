"""The Python API: what the ``medssl`` commands do, as functions with keyword options.

Reached as ``medssl.pretrain``, ``medssl.finetune``, ``medssl.evaluate``,
``medssl.predict``, ``medssl.embed``, ``medssl.nearest``, ``medssl.export``, ``medssl.knn``
and ``medssl.run_sweep`` (see :mod:`medssl`);
``medssl.data.load`` reads a dataset. Options are the command line's, with underscores
(``image_size=32`` for ``--image-size 32``), and the same defaults; a run directory made
here is the same as one made by the command line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medssl.errors import MedsslError

if TYPE_CHECKING:
    import pandas as pd

    from medssl.data import LoadedData
    from medssl.data.spec import DataSpec
    from medssl.embedding import Embeddings
    from medssl.metrics import ClassMap
    from medssl.prediction import Predictions

    DataLike = LoadedData | DataSpec | Mapping[str, Any]

__all__ = [
    "embed", "evaluate", "export", "finetune", "knn", "nearest", "predict", "pretrain",
    "run_sweep",
]  # fmt: skip

Config = TypeVar("Config")


def _spec_dict(data: Any, what: str) -> dict[str, Any]:
    """A run's ``data`` entry from :class:`~medssl.data.LoadedData`, a DataSpec or its dict."""
    from medssl.data import LoadedData
    from medssl.data.spec import DataSpec

    if isinstance(data, LoadedData):
        return data.spec.to_dict()
    if isinstance(data, DataSpec):
        return data.to_dict()
    if isinstance(data, Mapping):
        return DataSpec.from_dict(dict(data)).to_dict()
    raise MedsslError(
        f"{what}: data must come from medssl.data.load (or be a DataSpec), "
        f"got {type(data).__name__}"
    )


def _config(
    config_class: type[Config], what: str, data: Any, out: Any, options: dict[str, Any]
) -> Config:
    """``config_class`` from ``data``/``out``/options, or a given config with options replaced."""
    names = {f.name for f in dataclasses.fields(config_class)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - names)
    if unknown:
        raise MedsslError(
            f"{what}: unknown option(s) {', '.join(unknown)} (valid: {', '.join(sorted(names))})"
        )
    if "init" in options and isinstance(options["init"], os.PathLike):
        options["init"] = str(Path(options["init"]).expanduser().resolve())
    if out is not None:
        out = str(Path(out).expanduser().resolve())
    if isinstance(data, config_class):
        replaced = {**options, "out": out} if out else options
        return dataclasses.replace(data, **replaced)  # type: ignore[type-var]
    if out is None:
        raise MedsslError(f"{what}: give out, the run directory to write")
    return config_class(data=_spec_dict(data, what), out=out, **options)


def pretrain(data: Any, out: str | os.PathLike[str] | None = None, **options: Any) -> dict:
    """SimCLR or MICLe pretraining into the run directory ``out``; returns its metrics.

    ``data`` is what :func:`medssl.data.load` returned (or a :class:`~medssl.PretrainConfig`,
    then ``options`` replace its fields). ``options`` are :class:`~medssl.PretrainConfig`'s
    fields: ``method`` (``micle``/``simclr``), ``backbone``, ``image_size``, ``epochs``,
    ``batch_size``, ``lr``, ``init``, ``resume``, ``progress``, ... An existing finished run
    is refused, an unfinished one continues with ``resume=True``.
    """
    from medssl.train.pretrain import PretrainConfig
    from medssl.train.pretrain import pretrain as run_pretrain

    return run_pretrain(_config(PretrainConfig, "pretrain", data, out, options))


def finetune(data: Any, out: str | os.PathLike[str] | None = None, **options: Any) -> dict:
    """Supervised fine-tuning (or a linear probe) into ``out``; returns its metrics.

    ``data`` as for :func:`pretrain` (or a :class:`~medssl.FinetuneConfig`). ``options`` are
    :class:`~medssl.FinetuneConfig`'s fields: ``init`` (``random``, a pretraining run or a
    checkpoint), ``label_fraction``, ``seed``, ``epochs``, ``linear_probe``, ... Backbone and
    image size default to the ``init`` run's.
    """
    from medssl.train.finetune import FinetuneConfig
    from medssl.train.finetune import finetune as run_finetune

    return run_finetune(_config(FinetuneConfig, "finetune", data, out, options))


def evaluate(
    run: str | os.PathLike[str],
    split: str | None = None,
    data: Any = None,
    *,
    class_map: str | os.PathLike[str] | Mapping[str, Any] | ClassMap | None = None,
    n_boot: int = 1000,
    mean_over: Sequence[str] | None = None,
    device: str = "auto",
    **options: Any,
) -> dict[str, Any]:
    """Score a finished finetune ``run`` (``medssl evaluate``); returns the metrics.

    ``split`` is a split of the run's own data (``test`` by default, ``shift``, ``val``), or
    ``all`` (the default with ``data``, another dataset from :func:`medssl.data.load`, scored
    whole); ``class_map`` maps that dataset's classes to the model's. Metrics carry case-level
    bootstrap CIs (``n_boot`` resamples) and are also written into the run
    (``eval_<split>.json``, ``predictions_<split>.npz``). ``options`` are ``medssl
    evaluate``'s other options as keywords (see :func:`medssl.evaluation.evaluate_run`).
    """
    from medssl.evaluation import evaluate_run

    spec = _spec_dict(data, "evaluate") if data is not None else None
    if split is not None:
        options["split"] = split
    return evaluate_run(
        run, data=spec, class_map=class_map, n_boot=n_boot,
        mean_over=list(mean_over) if mean_over else None, device=device, **options,
    )  # fmt: skip


def predict(
    run: str | os.PathLike[str],
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    image_column: str = "image",
    case_column: str | None = None,
    case_out: str | os.PathLike[str] | None = None,
    skip_unreadable: bool = False,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
) -> Predictions:
    """Class probabilities for unlabeled ``images`` from a finished finetune ``run``.

    ``images`` is a folder, a CSV (paths in ``image_column``; ``case_column`` adds per-case
    means) or a list of paths. Returns :class:`~medssl.prediction.Predictions` (``.images``
    and ``.cases`` are DataFrames); with ``out`` the CSVs are written as by ``medssl predict``.
    """
    from medssl.prediction import predict_images

    result = predict_images(
        run, images, image_column=image_column, case_column=case_column,
        skip_unreadable=skip_unreadable, batch_size=batch_size, device=device,
        progress=progress, out=out, case_out=case_out,
    )  # fmt: skip
    if out is not None:
        result.write(out, case_out)
    return result


def embed(
    model: str | os.PathLike[str],
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    image_column: str = "image",
    case_column: str | None = None,
    keep_case_ids: bool = False,
    skip_unreadable: bool = False,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    backbone: str | None = None,
    image_size: int | None = None,
    small_stem: bool | None = None,
    patch_size: int | None = None,
    class_column: str | None = None,
    source_column: str | None = None,
) -> Embeddings:
    """The backbone features of ``images`` (``medssl embed``): ``model`` is a finetune run,
    a pretraining run or a backbone weights file (``backbone``, ``image_size``,
    ``small_stem``, ``patch_size`` describe a file; ``timm:<name>`` files in timm's layout).
    ``images`` as for :func:`predict`. Returns :class:`~medssl.embedding.Embeddings`
    (``.features`` ``(N, D)`` float32, ``.images``, ``.case_ids`` hashed unless
    ``keep_case_ids``, ``.table()``, ``.nearest()``, ``.plot_map(png)``: a t-SNE map coloured
    by the CSV's ``class_column`` and ``source_column``); with ``out`` (``.parquet`` or
    ``.npy``) the files are written as by ``medssl embed``.
    """
    from medssl.embedding import check_files, check_format, embed_images

    if out is not None:
        check_format(out)
        check_files(model, images, out, hashed_ids=bool(case_column) and not keep_case_ids)
    result = embed_images(
        model, images, out=out, image_column=image_column, case_column=case_column,
        keep_case_ids=keep_case_ids, skip_unreadable=skip_unreadable, batch_size=batch_size,
        device=device, progress=progress, backbone=backbone, image_size=image_size,
        small_stem=small_stem, patch_size=patch_size, class_column=class_column,
        source_column=source_column,
    )  # fmt: skip
    if out is not None:
        result.write(out)
    return result


def nearest(
    query: str | os.PathLike[str],
    embeddings: Embeddings | str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    *,
    top_k: int = 10,
    device: str = "auto",
) -> pd.DataFrame:
    """The ``top_k`` images of ``embeddings`` (:func:`embed`'s result or a saved file) most
    similar (cosine) to the image file ``query``, embedded by the model the embeddings were
    made with (``model`` must be that one): ``rank``, ``image``, ``case_id``, ``similarity``,
    ``distance`` (``medssl embed --query``)."""
    from medssl.embedding import nearest_cases

    return nearest_cases(query, embeddings, model, top_k, device)


def export(
    run: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str], **options: Any
) -> dict[str, Any]:
    """``run`` as one TorchScript (``fmt="torchscript"``) or ONNX (``"onnx"``) file ``out``
    (``medssl export``): a finetune run's classifier (probabilities out) or a pretraining
    run's backbone (features out). ``options``: ``opset`` (ONNX). Returns the metadata stored
    in the file (:func:`medssl.exporting.read_metadata` reads it back)."""
    from medssl.exporting import export_model

    return export_model(run, fmt, out, **options)


def knn(
    data: Any, inits: Sequence[str | os.PathLike[str]] = (), **options: Any
) -> dict[str, Any]:
    """k-NN scores of a random backbone and of each of ``inits`` (pretraining runs or
    checkpoint files) on a split of ``data``, with paired case-level bootstrap intervals of
    the differences (``medssl knn``). ``options`` are the command's: ``split``, ``k``,
    ``backbone``, ``image_size``, ``n_boot``, ``seed``, ``device``, ``progress``, ...
    (:func:`medssl.backbone_knn.compare_backbones`)."""
    from medssl.backbone_knn import compare_backbones

    resolved = [str(Path(i).expanduser().resolve()) for i in inits]
    return compare_backbones(_spec_dict(data, "knn"), resolved, **options)


def run_sweep(
    protocol: str | os.PathLike[str] | Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    progress: bool = True,
    record: str | os.PathLike[str] | None = None,
) -> Path:
    """Run (or resume) the sweep of ``protocol`` (a YAML file, or its contents as a mapping)
    into the folder ``out`` (``medssl sweep``); returns its ``results.csv``. ``record``: a
    folder that keeps the sweep's record, so it resumes on a machine without ``out``."""
    from medssl.sweep import run_sweep as sweep

    source = dict(protocol) if isinstance(protocol, Mapping) else protocol
    return sweep(source, out, progress=progress, record=record)
