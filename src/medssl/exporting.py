"""A fine-tuned classifier, or a pretraining run's backbone, as one self-contained
TorchScript or ONNX file (``medssl export``, ``medssl.export``).

A pretraining run exports its backbone for embedding services: the same input, the
normalisation inside, and out come the backbone's pooled features ``(N, D)`` float32, as
``medssl embed`` computes them (metadata ``task: embedding``, ``feature_dim``; no classes).

What is **baked into** the exported model: the ImageNet normalisation medssl trains with, the
classifier, and the output activation (softmax over classes for multi-class runs, a sigmoid
per finding for multi-label runs). It returns probabilities, ``(N, K)`` float32, in the order
of ``class_names``.

What it expects (and what is **stored as metadata**, not done by the model): RGB images of
exactly the run's ``image_size``, NCHW ``(N, 3, S, S)``, already brought to that size the way
medssl does it -- shorter side resized to ``S`` (antialiased), then a centre crop; for a run
with ``source_scale`` > 1 the image is first fitted to the run's ``source_shape`` (the
metadata's ``preprocessing`` says how) -- since resizing is not part of the graph (torch's
antialiased resize has no faithful ONNX form).

- TorchScript (``torch.jit.load``): uint8 in [0, 255] or float in [0, 1]; other sizes are
  refused with an error. Metadata: the extra file ``medssl.json``.
- ONNX (onnxruntime and friends): float32 in [0, 1] only (divide uint8 images by 255); the
  input ``images`` has a dynamic batch and a fixed ``S x S``. Metadata: the model's
  ``metadata_props`` (``medssl`` holds the JSON, plus ``image_size`` and ``class_names``).

:func:`read_metadata` reads the metadata back from either file.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): it needs only the ``onnx``
package (the ``torch.export``-based exporter would also need ``onnxscript``) and works over
the whole supported torch range. torch 2.14 deprecates that exporter and ``torch.jit``; their
deprecation warnings are silenced here, and the export test will say when they stop working.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medssl.augment import IMAGENET_MEAN, IMAGENET_STD
from medssl.errors import MedsslError
from medssl.fileio import atomic_write_bytes
from medssl.outputs import check_outputs, run_files

FORMATS = ("torchscript", "onnx")
#: the ONNX output's name by task (a classifier's: probabilities)
OUTPUT_NAMES = {"embedding": "features"}
METADATA_FILE = "medssl.json"
DEFAULT_OPSET = 17


def _supported_opsets() -> tuple[int, int]:
    """The ONNX opsets torch's TorchScript-based exporter (the one used here) supports, as
    torch states them; (7, 20), torch 2.1-2.14's range, where torch does not say."""
    try:
        from torch.onnx import _constants
    except ImportError:
        return 7, 20
    high = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", None)
    high = high or getattr(_constants, "ONNX_MAX_OPSET", 20)
    return int(getattr(_constants, "ONNX_MIN_OPSET", 7)), int(high)


#: (lowest, highest) ``--opset``; outside it onnx's checker fails (1) or torch only warns (21)
OPSETS = _supported_opsets()


class ExportedClassifier(nn.Module):
    """Images in [0, 1] (or uint8) -> normalised -> classifier -> probabilities (``task``
    multiclass: softmax, multilabel: sigmoid; ``embedding``: ``fc`` is an identity and the
    backbone's features come out as they are).

    The normalisation is :func:`medssl.train.monitor.normalize_batch`'s, operation for
    operation, so the exported model computes what ``medssl predict`` computes.
    """

    def __init__(
        self, backbone: nn.Module, fc: nn.Module, task: str, image_size: int, check_size: bool
    ) -> None:
        super().__init__()
        self.backbone, self.fc = backbone, fc
        self.activation = {"multiclass": "softmax", "multilabel": "sigmoid"}.get(task, "none")
        self.image_size = image_size
        self.check_size = check_size  # TorchScript checks shapes; ONNX has them in its graph
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.check_size and (
            images.dim() != 4 or images.shape[1] != 3
            or images.shape[2] != self.image_size or images.shape[3] != self.image_size
        ):  # fmt: skip
            raise ValueError(
                f"expected RGB images of shape (N, 3, {self.image_size}, {self.image_size}), "
                f"got {list(images.shape)}"
            )
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255
        x = (x - self.mean) / self.std
        logits = self.fc(self.backbone(x))
        if self.activation == "softmax":
            return logits.softmax(1)
        if self.activation == "sigmoid":
            return logits.sigmoid()
        return logits


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MedsslError(
            "--format onnx needs the onnx package: pip install onnx (onnxruntime to run it)"
        ) from None
    return onnx


def _preprocessing(size: int, source: Sequence[int]) -> str:
    """What a user does to an image before the model, as medssl evaluates: with a run's
    ``source_shape`` (``source_scale`` > 1) the image is fitted to that shape first."""
    text = "not in the model: decode to RGB (grey repeated), "
    if source:
        h, w = (int(n) for n in source)
        text += (f"scale it to cover {h}x{w} (height x width, aspect kept, antialiased) and "
                 f"centre-crop {h}x{w}, then ")  # fmt: skip
    return text + f"resize the shorter side to {size} (antialiased), centre-crop {size}x{size}"


def metadata_for(cfg: dict[str, Any], fmt: str, run: Path) -> dict[str, Any]:
    """What a user of the exported file needs to know, as one JSON-able dict."""
    from medssl import __version__

    size, task = int(cfg["image_size"]), str(cfg["task"])
    dtypes = "uint8 in [0, 255] or float in [0, 1]" if fmt == "torchscript" else "float32 in [0, 1]"
    if task == "embedding":
        output = (f"features (N, {cfg['feature_dim']}): the backbone's pooled features, as "
                  "medssl embed computes them")  # fmt: skip
    else:
        output = "probabilities (N, K) in the order of class_names: " + (
            "softmax over the classes" if task == "multiclass" else "sigmoid per finding"
        )
    extra = {"feature_dim": int(cfg["feature_dim"])} if task == "embedding" else {}
    return {
        "exported_by": f"medssl {__version__}",
        "format": fmt,
        "run": run.name,
        "backbone": cfg.get("backbone"),
        "task": task,
        "class_names": list(cfg["class_names"]),
        "image_size": size,
        "input": f"RGB images, NCHW (N, 3, {size}, {size}), {dtypes}",
        "input_name": "images",
        "output_name": OUTPUT_NAMES.get(task, "probabilities"),
        **extra,
        "preprocessing": _preprocessing(size, cfg.get("source_shape") or ()),
        "normalisation": "in the model: (x - mean) / std",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "output": output,
    }


def build_exportable(run: str | os.PathLike[str], fmt: str) -> tuple[ExportedClassifier, dict]:
    """The CPU wrapper module of ``run``'s classifier (a pretraining run: its backbone) and
    the run's config (``task: embedding`` and ``feature_dim`` for a pretraining run)."""
    from medssl.inference import load_finetuned
    from medssl.train.run import read_config

    if "label_fraction" not in read_config(run):  # a pretraining run: its backbone
        from medssl.embedding import load_embedding_model

        embedder = load_embedding_model(run, device=torch.device("cpu"))
        backbone = embedder.backbone.to(memory_format=torch.contiguous_format)
        cfg = {**embedder.config, "task": "embedding", "class_names": [],
               "feature_dim": embedder.feature_dim}  # fmt: skip
        size, check = int(cfg["image_size"]), fmt == "torchscript"
        wrapper = ExportedClassifier(backbone, nn.Identity(), "embedding", size, check)
        return wrapper.eval(), cfg
    model, cfg = load_finetuned(run, torch.device("cpu"))
    model = model.to(memory_format=torch.contiguous_format)
    wrapper = ExportedClassifier(
        model.backbone, model.fc, cfg["task"], int(cfg["image_size"]), fmt == "torchscript"
    )
    return wrapper.eval(), cfg


def export_model(
    run: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Export ``run``'s fine-tuned classifier, or a pretraining run's backbone, to ``out``
    (written atomically); return its metadata.

    ``fmt`` is ``torchscript`` or ``onnx`` (see the module docstring for the inputs each
    takes). ``opset`` is the ONNX opset version.
    """
    if fmt not in FORMATS:
        raise MedsslError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "onnx" and (
        isinstance(opset, bool) or not isinstance(opset, int) or not OPSETS[0] <= opset <= OPSETS[1]
    ):
        raise MedsslError(f"--opset: must be from {OPSETS[0]} to {OPSETS[1]}, got {opset!r}")
    onnx = _require_onnx() if fmt == "onnx" else None
    out_path = Path(out).expanduser()
    run_path = Path(run).expanduser()
    check_outputs([("--out", out_path)], run_files(run_path))
    wrapper, cfg = build_exportable(run_path, fmt)
    meta = metadata_for(cfg, fmt, run_path.resolve())
    size = meta["image_size"]
    example = torch.rand(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        # timm's shape checks (_assert, pos_embed size early-outs) are constants at the fixed
        # exported size: their tracer warnings say nothing to the user
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*(TorchScript|torch\.jit).*deprecated")
        if fmt == "torchscript":
            scripted = torch.jit.script(wrapper)
            extra = {METADATA_FILE: json.dumps(meta, indent=2)}
            # in memory first: torch.jit.save to a file aborts the process on a full disk
            buffer = io.BytesIO()
            torch.jit.save(scripted, buffer, _extra_files=extra)
            atomic_write_bytes(out_path, buffer.getvalue())
        else:
            proto = _onnx_proto(onnx, wrapper, example, opset, meta["output_name"])
            for key, value in (
                ("medssl", json.dumps(meta)), ("image_size", str(size)),
                ("class_names", json.dumps(meta["class_names"])),
            ):  # fmt: skip
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.checker.check_model(proto)
            atomic_write_bytes(out_path, proto.SerializeToString())
    return meta


def _onnx_proto(
    onnx: Any, wrapper: nn.Module, example: torch.Tensor, opset: int, output: str
) -> Any:
    """The ONNX ModelProto of ``wrapper`` (legacy exporter, dynamic batch), weights inside."""
    kwargs: dict[str, Any] = {
        "input_names": ["images"], "output_names": [output],
        "dynamic_axes": {"images": {0: "batch"}, output: {0: "batch"}},
        "opset_version": opset, "do_constant_folding": True,
    }  # fmt: skip
    import inspect

    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    buffer = io.BytesIO()  # in memory: no temporary file on a disk that may be full
    try:
        torch.onnx.export(wrapper, (example,), buffer, **kwargs)
    except (ValueError, RuntimeError) as exc:
        if "opset" in str(exc).lower():
            raise MedsslError(f"--opset {opset}: {str(exc).splitlines()[0]}") from None
        raise
    return onnx.load_from_string(buffer.getvalue())


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The medssl metadata of an exported ``.pt`` (TorchScript) or ``.onnx`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MedsslError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):  # TorchScript files are zip archives
        extra = {METADATA_FILE: ""}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        text = extra[METADATA_FILE]
    else:
        onnx = _require_onnx()
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf's decode errors have no common type
            raise MedsslError(f"{path}: neither a TorchScript nor an ONNX file ({exc})") from None
        text = next((p.value for p in proto.metadata_props if p.key == "medssl"), "")
    if not text:
        raise MedsslError(f"{path} holds no medssl metadata (not exported by medssl export?)")
    with contextlib.suppress(json.JSONDecodeError):
        return json.loads(text)
    raise MedsslError(f"{path}: its medssl metadata is not valid JSON")
