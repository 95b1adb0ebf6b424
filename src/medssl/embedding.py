"""A backbone's pooled features for images (``medssl embed``), and nearest-case retrieval.

**Model.** ``model`` is a finished finetune run (its fine-tuned backbone: the features the
classifier reads), a finished pretraining run (its ``backbone.safetensors``) or a backbone
weights file, with ``backbone``, ``image_size``, ``small_stem`` and ``patch_size`` saying
what it is (default: a pretraining run's ``backbone`` and ``image_size``; for a torchvision
ResNet the stem follows the file's ``conv1``; a ``timm:<name>`` file is in timm's own key
layout, its classifier dropped). The weights load strictly: a file of another architecture
is one line naming the keys that do not fit. Features are the backbone's output, ``(N, D)``
float32, computed in eval mode in fp32 (:func:`medssl.train.monitor.model_outputs`).

**Images** are listed and decoded as ``medssl predict`` does it (:mod:`medssl.inference`): a
folder, a CSV (``image_column``, ``case_column``) or a list of paths; the run's image size
(and, for a finetune run with ``source_scale`` > 1, its source shape), ImageNet
normalisation. A pretraining run records no source shape, so its images are brought to its
size directly. Unreadable images are an error naming them, or with ``skip_unreadable`` left
out and listed.

**Case ids** (from ``case_column``) are stored as HMAC-SHA256 hashes
(:mod:`medssl.case_ids`): under the run's ``case_id_salt`` for a run -- the ids then match
``medssl evaluate``'s predictions of the same run -- and for a weights file under
``<out stem>.case_id_salt`` beside the output (owner-only). ``keep_case_ids`` stores them in
clear. Image paths are written as given (the user's own files).

**Files.** ``.parquet``: one row per image, ``image``, ``case_id`` (with a case column) and
``embedding`` (a fixed-size list of D float32); the schema's metadata ``medssl`` holds
:attr:`Embeddings.meta` as JSON. ``.npy``: the ``(N, D)`` float32 matrix, beside it
``<stem>.images.csv`` (the rows' ``image`` and ``case_id``, in the matrix's order) and
``<stem>.meta.json``. Skipped images go to ``<stem>.skipped.csv`` (as ``medssl predict``).

**Retrieval** (:meth:`Embeddings.nearest`): cosine similarity of the L2-normalised features,
``distance = 1 - similarity``, most similar first (ties in row order).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medssl.errors import MedsslError
from medssl.fileio import atomic_write

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the file types ``medssl embed --out`` writes (and ``--embeddings`` reads)
FORMATS = (".parquet", ".npy")
#: the feature column of a .parquet file
FEATURES = "embedding"
METADATA_KEY = b"medssl"
#: columns of a file that are not labels
_KNOWN = ("image", "case_id", FEATURES)
SALT_SUFFIX = ".case_id_salt"


def check_format(path: str | os.PathLike[str], option: str = "--out") -> str:
    """The extension of an embedding file (``.parquet`` or ``.npy``); anything else is an
    error naming ``option``."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise MedsslError(
            f"{option} {path}: unknown extension {suffix or '(none)'!r}; use {' or '.join(FORMATS)}"
        )
    return suffix


def sidecar(path: str | os.PathLike[str], kind: str, suffix: str = ".csv") -> Path:
    """``emb.npy`` -> ``emb.<kind>.csv`` beside it."""
    path = Path(path).expanduser()
    return path.with_name(f"{path.stem}.{kind}{suffix}")


def salt_path(out: str | os.PathLike[str]) -> Path:
    """Where the case-id salt of an embedding of a weights file lives: beside ``out``."""
    path = Path(out).expanduser()
    return path.with_name(path.stem + SALT_SUFFIX)


def output_files(out: str | os.PathLike[str]) -> list[Path]:
    """Every file :meth:`Embeddings.write` writes (or removes) for ``out``."""
    out = Path(out).expanduser()
    extra = [sidecar(out, "images"), sidecar(out, "meta", ".json")]
    return [out, *(extra if check_format(out) == ".npy" else []), sidecar(out, "skipped")]


def check_files(
    model: str | os.PathLike[str] | None,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    out: str | os.PathLike[str] | None,
    *,
    embeddings: str | os.PathLike[str] | None = None,
    query: str | os.PathLike[str] | None = None,
    neighbours_out: str | os.PathLike[str] | None = None,
    hashed_ids: bool = False,
    map_out: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse, before any work, outputs that would destroy an input or another output
    (:func:`medssl.outputs.check_outputs`): ``out`` and its sidecars, the salt beside it
    (``hashed_ids`` of a weights file), ``neighbours_out`` and ``map_out``."""
    from medssl.outputs import check_outputs

    outputs: list[tuple[str, Any]] = []
    if out:
        outputs += [("--out", p) for p in output_files(out)]
        if hashed_ids and model and not Path(model).expanduser().is_dir():
            outputs.append(("--out", salt_path(out)))
    if neighbours_out:
        outputs.append(("--neighbours-out", neighbours_out))
    if map_out:
        outputs.append(("--map", map_out))
    files, folders = _inputs(model, images, embeddings, query)
    check_outputs(outputs, files, folders)


def _inputs(
    model: Any, images: Any, embeddings: Any, query: Any
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """(files read, image folders read), named as :func:`medssl.outputs.check_outputs` wants."""
    from medssl.outputs import run_files

    files: list[tuple[str, Any]] = []
    folders: list[tuple[str, Any]] = []
    if model:
        path = Path(model).expanduser()
        files += run_files(path) if path.is_dir() else [(f"--model {model}", path)]
    if isinstance(images, (str, os.PathLike)):
        path = Path(images).expanduser()
        (folders if path.is_dir() else files).append((f"--images {images}", path))
    elif images:
        files += [(f"--images {image}", Path(image).expanduser()) for image in images]
    if embeddings:
        files += [(f"--embeddings {embeddings}", Path(embeddings).expanduser())]
        beside = (sidecar(embeddings, "images"), sidecar(embeddings, "meta", ".json"))
        files += [(f"--embeddings {embeddings} (its {p.name})", p) for p in beside]
    if query:
        files.append((f"--query {query}", Path(query).expanduser()))
    return files, folders


# --------------------------------------------------------------------------- the model


@dataclass
class EmbeddingModel:
    """A backbone ready to embed (eval mode, on its device) and what it is."""

    backbone: nn.Module
    #: ``backbone``, ``image_size``, ``small_stem`` (and a finetune run's ``source_shape``)
    config: dict[str, Any]
    kind: str  #: ``finetune``, ``pretrain`` or ``file``
    path: Path  #: the run directory or weights file, resolved
    feature_dim: int

    @property
    def is_run(self) -> bool:
        return self.kind != "file"

    def describe(self) -> dict[str, Any]:
        """What an embedding file records about the model that made it."""
        return {
            "model": str(self.path), "kind": self.kind,
            "backbone": self.config["backbone"], "image_size": int(self.config["image_size"]),
            "small_stem": bool(self.config.get("small_stem")),
            "patch_size": int(self.config.get("patch_size") or 0),
            "source_shape": [int(n) for n in self.config.get("source_shape") or ()],
            "feature_dim": self.feature_dim,
        }  # fmt: skip


def _build(config: dict[str, Any]) -> tuple[nn.Module, int]:
    from medssl.models.backbones import backbone_from_config

    return backbone_from_config(config)


def _load_weights(net: nn.Module, path: Path) -> None:
    """Load a checkpoint file or pretraining run into ``net`` strictly: unlike ``--init``,
    an ImageNet-stem ``conv1`` is not dropped for a small stem (the features would come out
    of a random first layer)."""
    from medssl.models.checkpoint import (
        architecture_question,
        load_backbone_state,
        load_backbone_weights,
        load_into_backbone,
    )
    from medssl.models.timm_backbones import is_timm_model

    if is_timm_model(net):  # timm's own key layout, classifier dropped, ViT grids resampled
        load_backbone_weights(net, path)
        return
    state = load_backbone_state(path)
    load_into_backbone(net, state, str(path), question=architecture_question(state, net))


def _check_given(config: dict[str, Any], given: dict[str, Any], path: Path) -> None:
    for key, value in given.items():
        if value is not None and value != config.get(key):
            flag = "--" + key.replace("_", "-")
            raise MedsslError(
                f"{flag} {value} differs from the --model run's {config.get(key)} ({path}); "
                f"leave {flag} out for a run"
            )


def load_embedding_model(
    model: str | os.PathLike[str],
    *,
    backbone: str | None = None,
    image_size: int | None = None,
    small_stem: bool | None = None,
    patch_size: int | None = None,
    device: str | torch.device = "auto",
) -> EmbeddingModel:
    """The backbone of ``model`` (a finetune run, a pretraining run or a weights file).

    ``backbone``, ``image_size``, ``small_stem`` and ``patch_size`` (a timm transformer's;
    default its own) describe a weights file; for a run they may be left out (given, they
    must agree with the run's).
    """
    import torch

    from medssl.train.common import resolve_device
    from medssl.train.run import CONFIG, is_complete, read_config

    path = Path(model).expanduser()
    if not path.exists():
        raise MedsslError(f"--model {model}: no such run directory or weights file")
    path = path.resolve()
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    given = {"backbone": backbone, "image_size": image_size, "small_stem": small_stem,
             "patch_size": patch_size}  # fmt: skip
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise MedsslError(f"--model {path} is a folder but not a medssl run (no {CONFIG})")
        config = read_config(path)
        _check_given(config, given, path)
        if "label_fraction" in config:
            from medssl.inference import load_finetuned

            classifier, config = load_finetuned(path, dev)
            net, kind = classifier.backbone, "finetune"
        else:
            if not is_complete(path):
                raise MedsslError(f"--model {path} is not a finished medssl pretraining run")
            net, _ = _build(config)
            _load_weights(net, path)
            kind = "pretrain"
    else:
        from medssl.options import default_of
        from medssl.train.common import checkpoint_resnet
        from medssl.train.pretrain import PretrainConfig

        found = None if backbone else checkpoint_resnet(str(path))  # the file's shapes
        config = {
            "backbone": backbone or (found[0] if found else default_of(PretrainConfig, "backbone")),
            "image_size": image_size or default_of(PretrainConfig, "image_size"),
            "small_stem": small_stem,
            "patch_size": patch_size or 0,
        }
        if small_stem is None:
            config["small_stem"] = _small_stem_of(path, str(config["backbone"]))
        net, _ = _build(config)
        _load_weights(net, path)
        kind = "file"
    net = net.to(dev).eval()
    with torch.no_grad():
        size = int(config["image_size"])
        probe = torch.zeros(1, 3, size, size, device=dev)
        feature_dim = int(net(probe).shape[1])
    return EmbeddingModel(net, dict(config), kind, path, feature_dim)


def _small_stem_of(path: Path, backbone: str) -> bool:
    """Whether a torchvision ResNet checkpoint has medssl's small-image stem (a 3x3
    ``conv1``); False for anything else."""
    from medssl.models.checkpoint import load_backbone_state
    from medssl.models.timm_backbones import is_timm_name

    if is_timm_name(backbone):
        return False

    conv1 = load_backbone_state(path).get("conv1.weight")
    return conv1 is not None and conv1.dim() == 4 and tuple(conv1.shape[2:]) == (3, 3)


# --------------------------------------------------------------------------- embeddings


@dataclass
class Embeddings:
    """What :func:`embed_images` returns and :func:`read_embeddings` reads back.

    ``features`` is ``(N, D)`` float32, one row per embedded image; ``images`` names them as
    given; ``case_ids`` (with a case column) are hashed unless ``meta["case_ids"]`` says
    ``clear``; ``skipped`` lists ``(image, reason)`` of images left out; ``labels`` holds
    the CSV columns asked for (``class``, ``source``: what :meth:`plot_map` colours by).
    """

    features: np.ndarray
    images: list[str]
    case_ids: list[str] | None
    meta: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    labels: dict[str, list[str]] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """``image``, ``case_id`` (with case ids) and the ``labels`` per row, in the order of
        ``features``."""
        columns: dict[str, Any] = {"image": self.images}
        if self.case_ids is not None:
            columns["case_id"] = self.case_ids
        columns.update(self.labels)
        return pd.DataFrame(columns)

    def plot_map(self, path: str | os.PathLike[str], seed: int = 0) -> Path:
        """A 2-D t-SNE map of the features, one panel per label (class, source), written to
        ``path`` (PNG) by :func:`medssl.report.plots.plot_embedding_map`."""
        from medssl.report.plots import plot_embedding_map

        return plot_embedding_map(self.features, path, self.labels, seed=seed)

    def write(self, out: str | os.PathLike[str]) -> dict[str, Path]:
        """Write the file(s) for ``out`` atomically (module docstring); return them by kind."""
        out = Path(out).expanduser()
        fmt = check_format(out)
        if out.is_dir():
            raise MedsslError(f"--out {out} is a folder; give a file name")
        features = np.ascontiguousarray(self.features, dtype=np.float32)
        written: dict[str, Path] = {}
        if fmt == ".parquet":
            written["embeddings"] = atomic_write(out, lambda tmp: self._write_parquet(tmp))
        else:

            def save(tmp: str) -> None:
                with open(tmp, "wb") as fh:  # a file object: np.save would append .npy
                    np.save(fh, features)

            written["embeddings"] = atomic_write(out, save)
            rows = sidecar(out, "images")
            written["images"] = atomic_write(
                rows, lambda tmp: self.table().to_csv(tmp, index=False)
            )
            meta = sidecar(out, "meta", ".json")
            text = json.dumps(self.meta, indent=2) + "\n"
            written["meta"] = atomic_write(meta, lambda tmp: Path(tmp).write_text(text))
        skipped = sidecar(out, "skipped")
        if self.skipped:
            frame = pd.DataFrame(self.skipped, columns=["image", "reason"])
            written["skipped"] = atomic_write(skipped, lambda tmp: frame.to_csv(tmp, index=False))
        else:
            skipped.unlink(missing_ok=True)
        return written

    def _write_parquet(self, tmp: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        features = np.ascontiguousarray(self.features, dtype=np.float32)
        n, dim = features.shape
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), dim)
        columns: dict[str, Any] = {"image": pa.array(self.images, pa.string())}
        if self.case_ids is not None:
            columns["case_id"] = pa.array(self.case_ids, pa.string())
        for name, values in self.labels.items():
            columns[name] = pa.array(values, pa.string())
        columns[FEATURES] = vectors
        table = pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(self.meta)})
        pq.write_table(table, tmp)

    def nearest(
        self, query: np.ndarray, top_k: int = 10, query_image: str | os.PathLike[str] | None = None
    ) -> pd.DataFrame:
        """The ``top_k`` rows most similar to the feature vector ``query`` (cosine): ``rank``,
        ``image``, ``case_id`` (with case ids), ``similarity``, ``distance``.

        Given the ``query_image`` file, rows that are that image itself (same file name,
        features identical) are left out, and named in the table's ``attrs["left_out"]``:
        the query is not its own neighbour."""
        if top_k < 1:
            raise MedsslError(f"--top-k must be >= 1, got {top_k}")
        query = np.asarray(query, dtype=np.float64).reshape(-1)
        if query.size != self.features.shape[1]:
            raise MedsslError(
                f"the query has {query.size} features, the embeddings {self.features.shape[1]}"
            )
        similarity = _unit(self.features) @ _unit(query[None])[0]
        order = np.argsort(-similarity, kind="stable")
        itself = [] if query_image is None else [
            i for i in order[: top_k + 1]
            if similarity[i] >= 1 - 1e-5 and Path(self.images[i]).name == Path(query_image).name
        ]  # fmt: skip
        order = np.array([i for i in order if i not in itself], dtype=np.int64)[:top_k]
        rows: dict[str, Any] = {
            "rank": np.arange(1, len(order) + 1),
            "image": [self.images[i] for i in order],
        }
        if self.case_ids is not None:
            rows["case_id"] = [self.case_ids[i] for i in order]
        rows["similarity"] = similarity[order]
        rows["distance"] = 1 - similarity[order]
        table = pd.DataFrame(rows)
        table.attrs["left_out"] = [self.images[i] for i in itself]
        return table


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); an all-zero row stays zero."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def _salt_file(embedder: EmbeddingModel, out: Path | None) -> Path:
    """The salt that hashes the case ids: the run's own, or beside ``out`` for a weights
    file (checked before any image is embedded)."""
    from medssl.case_ids import SALT_FILE

    if embedder.is_run:
        return embedder.path / SALT_FILE
    if out is not None:
        return salt_path(out)
    raise MedsslError(
        "--case-column with a weights file as --model hashes the case ids under a salt "
        "kept beside --out: give --out, or --keep-case-ids to keep them in clear"
    )


def _hashed(
    case_ids: list[str] | None, salt: Path | None
) -> tuple[list[str] | None, dict[str, Any]]:
    """The case ids as stored (hashed under ``salt``; None: in clear), and what the
    metadata says about them."""
    if case_ids is None:
        return None, {"case_ids": None}
    if salt is None:
        return list(case_ids), {"case_ids": "clear"}
    from medssl.case_ids import hash_case_ids, read_salt

    hashed = hash_case_ids(np.asarray(case_ids), read_salt(salt)).tolist()
    return hashed, {"case_ids": "hmac-sha256", "case_id_salt": str(salt)}


def embed_images(
    model: str | os.PathLike[str] | EmbeddingModel,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] | None = None,
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
    """The backbone features of ``images`` under ``model`` (module docstring).

    ``out`` is only where a weights file's case-id salt is kept (beside it); writing is
    :meth:`Embeddings.write`. ``class_column`` and ``source_column`` name CSV columns kept
    as the labels ``class`` and ``source`` (stored in the file, coloured by the map).
    """
    from medssl import __version__
    from medssl.inference import decode_images, list_images, run_decoder
    from medssl.train.monitor import model_outputs

    if batch_size < 1:
        raise MedsslError(f"--batch-size must be >= 1, got {batch_size}")
    from medssl.inference import ImageList

    wanted = {"class": class_column, "source": source_column}
    listed = images if isinstance(images, ImageList) else list_images(
        images, image_column, case_column, skip_unreadable, command="embed",
        label_columns={name: column for name, column in wanted.items() if column},
    )  # fmt: skip
    embedder = model if isinstance(model, EmbeddingModel) else load_embedding_model(
        model, backbone=backbone, image_size=image_size, small_stem=small_stem,
        patch_size=patch_size, device=device,
    )  # fmt: skip
    hashed = listed.case_ids is not None and not keep_case_ids
    salt = _salt_file(embedder, Path(out).expanduser() if out else None) if hashed else None
    net = embedder.backbone
    dev = next(net.parameters()).device
    skipped = list(listed.missing)
    kept: list[int] = []
    chunks: list[np.ndarray] = []
    for rows, pixels in decode_images(
        listed, run_decoder(embedder.config), skipped, skip_unreadable=skip_unreadable,
        progress=progress, desc="embedding",
    ):  # fmt: skip
        kept += rows
        every = np.arange(len(pixels))
        chunks.append(model_outputs(net, pixels, every, dev, batch_size=batch_size).numpy())
    if not kept:
        raise MedsslError(f"embed: none of the {len(skipped)} image(s) could be read")
    case_ids = [listed.case_ids[i] for i in kept] if listed.case_ids is not None else None
    stored, id_meta = _hashed(case_ids, salt)
    meta = {
        "made_by": f"medssl {__version__}", **embedder.describe(), "images": len(kept),
        **id_meta,
    }  # fmt: skip
    features = np.concatenate(chunks).astype(np.float32, copy=False)
    labels = {name: [values[i] for i in kept] for name, values in listed.labels.items()}
    return Embeddings(features, [listed.names[i] for i in kept], stored, meta, skipped, labels)


def dataset_images(data: dict[str, Any]) -> Any:
    """The images of a dataset (a checked data spec dict) as an
    :class:`~medssl.inference.ImageList` for :func:`embed_images`: named relative to its
    root, with their case ids and the labels ``class`` (multi-label: the positive findings,
    ``+``-joined, or ``none``) and ``source``, which :meth:`Embeddings.plot_map` colours by."""
    from medssl.data.spec import DataSpec
    from medssl.inference import ImageList

    manifest = DataSpec.from_dict(data).load_manifest()
    table = manifest.table
    paths = [str(p) for p in table["image"]]
    if any(p.startswith("array:") for p in paths):
        raise MedsslError(
            f"--dataset {manifest.name} holds its images in memory, not in files; embed reads "
            "image files (--images)"
        )
    root = Path(data.get("root") or "")
    names = [os.path.relpath(p, root) if data.get("root") else p for p in paths]
    if manifest.task == "multiclass":
        classes = [manifest.class_names[int(t)] for t in manifest.targets]
    else:
        classes = [
            "+".join(n for n, v in zip(manifest.class_names, row, strict=True) if v == 1) or "none"
            for row in manifest.targets
        ]
    labels = {"class": classes, "source": [str(s) for s in table["source"]]}
    return ImageList(paths, names, [str(c) for c in table["case_id"]], labels=labels)


def embed_query(embedder: EmbeddingModel, image: str | os.PathLike[str]) -> np.ndarray:
    """The feature vector of one image file, decoded as :func:`embed_images` decodes."""
    from medssl.inference import run_decoder
    from medssl.train.monitor import model_outputs

    path = Path(image).expanduser()
    if not path.is_file():
        raise MedsslError(f"--query {image}: no such image file")
    pixels = run_decoder(embedder.config)(str(path))
    if isinstance(pixels, MedsslError):
        raise MedsslError(f"--query {image}: {pixels}")
    dev = next(embedder.backbone.parameters()).device
    return model_outputs(embedder.backbone, pixels[None], np.arange(1), dev).numpy()[0]


def read_embeddings(path: str | os.PathLike[str], option: str = "--embeddings") -> Embeddings:
    """An embedding file written by :meth:`Embeddings.write` (``.parquet`` or ``.npy`` with
    its ``.images.csv`` and ``.meta.json``)."""
    path = Path(path).expanduser()
    fmt = check_format(path, option)
    if not path.is_file():
        raise MedsslError(f"{option} {path}: no such file")
    if fmt == ".parquet":
        return _read_parquet(path, option)
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MedsslError(f"{option} {path}: not a .npy matrix ({exc})") from None
    rows, meta_file = sidecar(path, "images"), sidecar(path, "meta", ".json")
    for needed in (rows, meta_file):
        if not needed.is_file():
            raise MedsslError(f"{option} {path}: {needed.name} is missing beside it")
    from medssl.data.files import read_csv

    table = read_csv(rows, ["image"], option)
    meta = _json(meta_file.read_text(), f"{option} {meta_file}")
    case_ids = table["case_id"].astype(str).tolist() if "case_id" in table.columns else None
    labels = {c: table[c].astype(str).tolist() for c in table.columns if c not in _KNOWN}
    images = table["image"].astype(str).tolist()
    return _checked(features, images, case_ids, meta, path, option, labels)


def _read_parquet(path: Path, option: str) -> Embeddings:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise MedsslError(f"{option} {path}: not a readable parquet file ({exc})") from None
    missing = [c for c in ("image", FEATURES) if c not in table.column_names]
    if missing:
        raise MedsslError(f"{option} {path} has no column {', '.join(missing)}")
    column = table.column(FEATURES).combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        features = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
    else:
        features = np.array(column.to_pylist(), dtype=np.float32)
    raw = (table.schema.metadata or {}).get(METADATA_KEY, b"{}")
    meta = _json(raw.decode(), f"{option} {path} (its metadata)")
    case_ids = table.column("case_id").to_pylist() if "case_id" in table.column_names else None
    images = table.column("image").to_pylist()
    labels = {c: [str(v) for v in table.column(c).to_pylist()] for c in table.column_names
              if c not in _KNOWN}  # fmt: skip
    return _checked(features, images, case_ids, meta, path, option, labels)


def _json(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise MedsslError(f"{what} is not a JSON object")
    return value


def _checked(
    features: np.ndarray, images: list[str], case_ids: list[str] | None,
    meta: dict[str, Any], path: Path, option: str, labels: dict[str, list[str]],
) -> Embeddings:  # fmt: skip
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(images) or not len(images):
        raise MedsslError(
            f"{option} {path}: {features.shape} features for {len(images)} images (expected "
            "one row of features per image)"
        )
    return Embeddings(features, [str(i) for i in images], case_ids, meta, labels=labels)


def nearest_cases(
    query: str | os.PathLike[str],
    embeddings: Embeddings | str | os.PathLike[str],
    model: str | os.PathLike[str] | EmbeddingModel | None = None,
    top_k: int = 10,
    device: str = "auto",
) -> pd.DataFrame:
    """The ``top_k`` images of ``embeddings`` (a file or :class:`Embeddings`) most similar to
    the image ``query`` (itself left out where it is among them), embedded by ``model``
    (default: the model the embeddings record, which ``model`` must otherwise be)."""
    found = embeddings if isinstance(embeddings, Embeddings) else read_embeddings(embeddings)
    recorded = found.meta.get("model")
    if model is None:
        if not recorded:
            raise MedsslError("--query needs --model: the embeddings do not record their model")
        model = recorded
    given = model.path if isinstance(model, EmbeddingModel) else Path(model).expanduser()
    if recorded and os.path.realpath(given) != os.path.realpath(recorded):
        raise MedsslError(
            f"--model {model if not isinstance(model, EmbeddingModel) else given} is not the "
            f"model the embeddings were made with ({recorded}): their features would not compare"
        )
    embedder = model if isinstance(model, EmbeddingModel) else _recorded_model(found, model, device)
    return found.nearest(embed_query(embedder, query), top_k, query_image=query)


def _recorded_model(
    found: Embeddings, model: str | os.PathLike[str], device: str
) -> EmbeddingModel:
    """The model of ``found`` again; a weights file is rebuilt as the metadata describes."""
    meta = found.meta
    options: dict[str, Any] = {}
    if meta.get("kind") == "file":
        options = {"backbone": meta.get("backbone"), "image_size": meta.get("image_size"),
                   "small_stem": meta.get("small_stem"),
                   "patch_size": meta.get("patch_size") or None}  # fmt: skip
    return load_embedding_model(model, device=device, **options)
