"""Checkpoint I/O: atomic saves, safe loads, backbone import and export.

Loading never unpickles arbitrary objects: ``.safetensors`` files are read with safetensors
and everything else with ``torch.load(weights_only=True)``, which refuses pickled classes
other than tensors and plain containers.

Saving writes to a temporary file in the target's directory, fsyncs it and ``os.replace``-s
it over the target, so a crash or kill mid-write leaves either the old file or the new one,
never a truncated file.

Exported backbones (:func:`export_backbone`) use torchvision's key layout without ``fc``. To
load one into a plain torchvision ResNet of the same architecture (and ImageNet stem)::

    model = torchvision.models.resnet50()
    missing, unexpected = model.load_state_dict(state, strict=False)
    # missing == ["fc.weight", "fc.bias"], unexpected == []
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from medssl.errors import MedsslError
from medssl.fileio import atomic_write

__all__ = [
    "BACKBONE_FILE",
    "LoadReport",
    "architecture_question",
    "export_backbone",
    "load_backbone_state",
    "load_backbone_weights",
    "load_into_backbone",
    "read_checkpoint",
    "read_state_dict",
    "save_safetensors_atomic",
    "save_state_dict_atomic",
]

#: File name of an exported backbone in a run directory (also the one a run dir loads from).
BACKBONE_FILE = "backbone.safetensors"
#: The same weights as a torch pickle, for tools that only read ``torch.load`` files.
BACKBONE_PT_FILE = "backbone.pt"

# Wrapper prefixes stripped (repeatedly, in any order) from checkpoint keys.
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
# Keys (after stripping) that belong to a projection head or classifier, never the backbone.
_HEAD_PREFIXES = ("head.", "projection_head.", "projector.", "fc.")
# Dict keys under which checkpoints nest their state dict.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict")
_LIST_MAX = 10


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did: the tensors loaded into the backbone, the
    checkpoint's head/classifier keys it dropped, and adaptations (a stem dropped, an
    embedding resampled), for the trainers' start banner."""

    source: str
    loaded: int = 0
    dropped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line: ``init: FILE: 60 tensors loaded; dropped 2 head keys (fc.weight, ...)``."""
        parts = [f"{self.loaded} tensors loaded"]
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} head key(s) ({_listing(self.dropped)})")
        parts.extend(self.adapted)
        return f"init: {self.source}: {'; '.join(parts)}"


def save_state_dict_atomic(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save(state, path)`` atomically; return the path written.

    Keep ``state`` to tensors, numbers, strings and plain containers so that it stays loadable
    with ``weights_only=True``. Saved through a file object, so the archive's records are
    named ``archive/...`` rather than after the temporary file (a random name): the same
    state gives the same bytes.
    """

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)

    return atomic_write(path, write)


def _sort_safetensors_metadata(path: str) -> None:
    """Rewrite the header of the safetensors file ``path`` with its metadata in key order.

    safetensors' Rust writer takes the metadata as a hash map, whose order changes from
    process to process, so the same weights would get different bytes. The header has the
    same length after sorting (same keys and values, compact JSON as Rust writes it), so it
    is rewritten in place; otherwise the file is rewritten whole.
    """
    with open(path, "rb+") as fh:
        size = int.from_bytes(fh.read(8), "little")
        raw = fh.read(size)
        header = json.loads(raw)
        meta = header.pop("__metadata__", None)
        if not meta:
            return
        ordered = {"__metadata__": dict(sorted(meta.items())), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) <= size:  # padded with spaces to the old length, as safetensors pads
            fh.seek(8)
            fh.write(text.ljust(size, b" "))
            return
        data = fh.read()
        text = text.ljust(-(-len(text) // 8) * 8, b" ")
        fh.seek(0)
        fh.write(len(text).to_bytes(8, "little") + text + data)
        fh.truncate()


def save_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``tensors`` as a safetensors file atomically; return the path written.

    Tensors are detached, moved to CPU and made contiguous. safetensors refuses tensors that
    share memory (tied weights, views of one buffer), so a tensor whose storage was already
    seen is cloned.
    """
    prepared: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        else:
            seen.add(ptr)
        prepared[name] = t

    def write(tmp: str) -> None:
        safetensors.torch.save_file(prepared, tmp, metadata=metadata)
        _sort_safetensors_metadata(tmp)  # the same tensors and metadata: the same bytes

    return atomic_write(path, write)


def _short(exc: BaseException) -> str:
    """First line of an exception message (torch's load errors span many lines)."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


#: torch's words for a weights-only refusal of a pickled global, over the versions: 2.4-2.13
#: "Unsupported global: GLOBAL mod.name", 2.14 "unsupported GLOBAL mod.name whose module ...
#: is blocked", before 2.4 "Unsupported class mod.name"
_REFUSED_GLOBAL = re.compile(r"unsupported (?:global: GLOBAL|GLOBAL|class) ([\w.]+)", re.I)
#: globals of an ordinary torch.save file besides ``torch.*`` (weights-only allows them)
_PLAIN_GLOBALS = {"collections.OrderedDict", "collections.Counter", "collections.defaultdict",
                  "_codecs.encode", *(f"builtins.{t}" for t in ("set", "frozenset", "bytearray",
                  "slice", "complex", "list", "dict", "tuple", "int", "float", "bool", "str",
                  "bytes"))}  # fmt: skip
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}  # fmt: skip


def _pickle_streams(path: Path) -> list[bytes]:
    """The pickles a torch.save file (or a plain pickle) holds, unread."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    return [path.read_bytes()]


def _pickled_globals(path: Path) -> list[str]:
    """The classes and functions the pickles in ``path`` name, found by reading their opcodes
    (:mod:`pickletools`: nothing is unpickled); empty for bytes that are no pickle."""
    found: list[str] = []
    try:
        streams = _pickle_streams(path)
    except (OSError, zipfile.BadZipFile, KeyError):
        return found
    for data in streams:
        stream = io.BytesIO(data)
        for _ in range(8):  # a legacy torch.save file is several pickles in a row
            strings: list[str] = []
            try:
                for op, arg, _ in pickletools.genops(stream):
                    if op.name in ("GLOBAL", "INST"):
                        found.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(".".join(strings[-2:]))
                    elif op.name in _STRING_OPS:
                        strings.append(str(arg))
            except (ValueError, EOFError, UnicodeDecodeError):
                break
    return found


def _foreign_global(path: Path, exc: BaseException) -> str | None:
    """What makes ``path`` a pickle of objects, given torch's weights-only refusal ``exc``:
    a class or function outside torch's own (by reading the pickle's opcodes, which does
    not depend on torch's wording), else the name in torch's message; None: no pickle of
    objects (random or damaged bytes also fail in the weights-only unpickler)."""
    for name in _pickled_globals(path):
        if not name.startswith("torch.") and name not in _PLAIN_GLOBALS:
            return name
    found = _REFUSED_GLOBAL.search(str(exc))
    return found.group(1) if found else None


def _read_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as exc:
            raise MedsslError(f"cannot read safetensors file {path}: {_short(exc)}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's weights-only refusal, or no pickle at all
        name = _foreign_global(path, exc)
        if name is None:
            raise MedsslError(
                f"cannot read checkpoint {path} (not a torch.save or safetensors file, or damaged)"
            ) from None
        raise MedsslError(
            f"{path}: refusing to load: the file holds pickled objects ({name}), not only "
            "tensors and plain containers; re-save just its state dict"
        ) from None
    except Exception as exc:
        raise MedsslError(
            f"cannot read checkpoint {path} (not a torch.save or safetensors file, or "
            f"truncated): {_short(exc)}"
        ) from exc


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """A checkpoint file's contents (safetensors, or ``torch.load(weights_only=True)``).

    A missing, truncated or foreign file is one :class:`MedsslError` line naming it.
    """
    p = Path(path)
    if not p.is_file():
        raise MedsslError(f"checkpoint {p} does not exist")
    return _read_file(p)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def load_backbone_state(
    path: str | os.PathLike[str], dropped: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Read a backbone state dict (torchvision key layout) from a file or a run directory.

    Accepted inputs:

    - a plain torchvision state dict (``.pt``/``.pth``/``.safetensors``);
    - a dict nesting it under ``"state_dict"``, ``"model"`` or ``"model_state_dict"`` (e.g.
      converted SimCLR checkpoints, medssl checkpoints of a whole
      :class:`~medssl.models.heads.SimCLRModel` or :class:`~medssl.models.heads.Classifier`);
    - a medssl run directory holding ``backbone.safetensors``.

    Prefixes ``module.``, ``backbone.``, ``encoder.`` and ``model.`` are stripped; projection
    head and classifier keys (``head.``, ``projection_head.``, ``projector.``, ``fc.``) are
    dropped. Raises :class:`MedsslError` naming the file when it cannot be read or holds no
    state dict. (timm backbones, whose own keys may start with ``head.``, read the state dict
    with :func:`read_state_dict` and map it with
    :func:`medssl.models.timm_backbones.timm_backbone_state`.)
    """
    p, obj = read_state_dict(path)
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in obj.items():
        name = _strip(key)
        if name.startswith(_HEAD_PREFIXES):
            if dropped is not None:
                dropped.append(key)
            continue
        if name in state:
            raise MedsslError(
                f"{p}: keys {origin[name]!r} and {key!r} both give backbone key {name!r}"
            )
        state[name], origin[name] = value, key
    if not state:
        raise MedsslError(f"{p} holds only projection-head / classifier weights, no backbone")
    return state


def read_state_dict(path: str | os.PathLike[str]) -> tuple[Path, dict[str, torch.Tensor]]:
    """The file read and the state dict in it, keys as stored: a state dict file, one nested
    under ``state_dict`` / ``model`` / ``model_state_dict``, or a run directory's
    ``backbone.safetensors``. Problems are one :class:`MedsslError` line naming the file."""
    p = Path(path)
    if p.is_dir():
        if not (p / BACKBONE_FILE).is_file():
            raise MedsslError(
                f"{p} is a directory without {BACKBONE_FILE}: not a finished medssl "
                "pretraining run (a finetune run's weights are its best.pt file)"
            )
        p = p / BACKBONE_FILE
    elif not p.is_file():
        raise MedsslError(f"checkpoint {p} does not exist")

    obj = _read_file(p)
    for _ in range(len(_CONTAINER_KEYS) + 1):
        if _is_state_dict(obj) or not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if k in obj), None)
        if inner is None:
            break
        obj = inner
    if not _is_state_dict(obj):
        raise MedsslError(
            f"{p} holds no state dict (expected a mapping of names to tensors, possibly under "
            f"one of the keys {', '.join(_CONTAINER_KEYS)})"
        )
    return p, dict(obj)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_MAX])
    more = f", ... (+{len(names) - _LIST_MAX} more)" if len(names) > _LIST_MAX else ""
    return f"{shown}{more}"


def load_into_backbone(
    backbone: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    drop_mismatched_conv1: bool = False,
    question: str = "is it the same architecture, width and stem?",
) -> int:
    """Load ``state`` into ``backbone`` strictly (BN ``num_batches_tracked`` aside).

    Any missing key, unexpected key or shape mismatch raises one :class:`MedsslError` line
    that names ``source`` and lists the offending keys (first 10 of each kind, with counts).

    ``drop_mismatched_conv1=True`` skips ``conv1.weight`` when only its shape differs, which
    is the case when ImageNet-stem (7x7) weights go into a small-image (3x3) stem: the model
    keeps its own freshly initialised ``conv1`` and everything else is loaded. Returns the
    number of tensors loaded.
    """
    expected = backbone.state_dict()

    def counted(k: str) -> bool:
        return not k.endswith("num_batches_tracked")

    state = dict(state)
    if (
        drop_mismatched_conv1
        and "conv1.weight" in state
        and "conv1.weight" in expected
        and state["conv1.weight"].shape != expected["conv1.weight"].shape
    ):
        del state["conv1.weight"]
        expected = {k: v for k, v in expected.items() if k != "conv1.weight"}

    missing = [k for k in expected if counted(k) and k not in state]
    unexpected = [k for k in state if counted(k) and k not in expected]
    mismatched = [
        f"{k} {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} with another shape: {_listing(mismatched)}")
        if not (missing or unexpected) and [m.split()[0] for m in mismatched] == ["conv1.weight"]:
            hint = (
                "; only the stem differs (7x7 ImageNet vs 3x3 small-image stem): drop the "
                "checkpoint's conv1 (drop_mismatched_conv1=True) to keep the model's own"
            )
        else:
            hint = f"; {question}"
        raise MedsslError(
            f"checkpoint {source} does not fit the backbone: {'; '.join(parts)}{hint}"
        )

    loadable = {k: v for k, v in state.items() if k in expected}
    backbone.load_state_dict(loadable, strict=False)
    return len(loadable)


def architecture_question(state: Mapping[str, torch.Tensor], backbone: nn.Module) -> str:
    """The end of the message for a checkpoint that does not fit a torchvision ResNet
    (:func:`load_into_backbone`'s ``question``): the ResNet the checkpoint is, and the
    option that picks it, where its shapes tell."""
    from medssl.models.backbones import resnet_of_state
    from medssl.options import spelled

    found, model = resnet_of_state(state), resnet_of_state(backbone.state_dict())
    if found is None or model is None or found[0] == model[0]:
        return "is it the same architecture, width and stem?"
    return f"the checkpoint is a {found[0]}: pass {spelled('backbone')} {found[0]}"


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike[str]) -> LoadReport:
    """Load the checkpoint file or medssl run ``path`` into ``backbone``, strictly.

    torchvision ResNets read it with :func:`load_backbone_state` (an ImageNet-stem ``conv1``
    is dropped for a small-image stem); timm backbones with
    :func:`~medssl.models.timm_backbones.timm_backbone_state` (timm's layout, classifier
    dropped, ViT embeddings resampled). A checkpoint of another architecture is one line
    naming the keys that do not fit. Returns what was loaded, dropped and adapted.
    """
    from medssl.models.timm_backbones import is_timm_model, timm_backbone_state

    report = LoadReport(str(path))
    if is_timm_model(backbone):
        p, state = read_state_dict(path)
        name = type(backbone).__name__
        question = f"is it a checkpoint of this timm architecture ({name}, same size)?"
        fitted = timm_backbone_state(state, backbone, report)
        report.loaded = load_into_backbone(backbone, fitted, str(p), question=question)
    else:
        state = load_backbone_state(path, report.dropped)
        model_conv1 = backbone.state_dict().get("conv1.weight")
        report.loaded = load_into_backbone(
            backbone, state, str(path), drop_mismatched_conv1=True,
            question=architecture_question(state, backbone),
        )  # fmt: skip
        if (
            "conv1.weight" in state and model_conv1 is not None
            and state["conv1.weight"].shape != model_conv1.shape
        ):  # fmt: skip
            k = "x".join(map(str, state["conv1.weight"].shape[2:]))
            report.adapted.append(f"conv1 {k} not loaded (the small stem keeps its own)")
    return report


def export_backbone(
    backbone: nn.Module,
    out_dir: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``backbone.safetensors`` and ``backbone.pt`` into ``out_dir``, atomically.

    Keys are torchvision's (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...); any
    ``fc.*`` key is left out (a classifier is never part of the backbone). ``metadata``
    (strings only) goes into the safetensors header, e.g. the backbone name and stem.
    Returns the safetensors path, which :func:`load_backbone_state` reads back (given the
    file or ``out_dir``).
    """
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in backbone.state_dict().items()
        if not k.startswith("fc.")
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict_atomic(state, out / BACKBONE_PT_FILE)
    return save_safetensors_atomic(state, out / BACKBONE_FILE, metadata=metadata)
