"""``medssl sweep``: pretraining runs, then init x mode x label fraction x seed fine-tunes.

A protocol (a YAML file or a dict) names the data, the pretraining runs to make and the
fine-tuning grid::

    data: {dataset: ham10000, root: ../shared/data/ham10000}   # a DataSpec dict
    image_size: 32
    backbone: resnet18
    pretrain:                       # named pretraining runs, made first
      simclr: {method: simclr, epochs: 20, batch_size: 256}
      micle:  {method: micle,  epochs: 20, batch_size: 256, init: simclr}   # chained
    pretrain_seeds: [0, 1, 2]       # optional: one pretraining run per seed (paired)
    inits: [random, simclr, micle]  # pretrain names, "random", a checkpoint/run path
                                    # (label: its file stem) or a mapping {label: path}
    label_fractions: [0.1, 1.0]
    seeds: [0, 1, 2]
    finetune: {epochs: 15, batch_size: 128, lr: 0.001}
    finetune_modes: [finetune, linear]   # optional; default [finetune]
    splits: [test, shift]
    external:                       # optional: whole external test sets, no training
      - name: ph2
        data: {dataset: csv, root: ../shared/data/ph2,
               options: {csv_label: diagnosis, csv_case: case_id}}
        class_map: {common nevus: nv, atypical nevus: nv, melanoma: mel}  # dataset -> model
    n_boot: 1000

**Settings.** ``image_size``, ``backbone`` (``timm:<name>`` too), ``small_stem``,
``patch_size`` and ``device`` apply to every run;
a ``pretrain`` entry and the ``finetune`` section take the options of ``medssl pretrain`` /
``medssl finetune`` as keys (an ``augment:`` block too), read and checked by the same code
as those commands' flags (:mod:`medssl.options`) when the protocol is loaded, so a bad value
fails before the first run.

**Chained pretraining.** ``init: <entry>`` in a pretraining entry starts it from another
entry's finished run (anything else is a checkpoint/run path, relative to the protocol
file). Entries run in dependency order; a cycle or an unknown name is an error naming the
key. Each entry is a run of its own, so a stopped chain resumes whichever entry stopped.

**Stages and their data.** A pretraining entry may name its own ``data`` (a DataSpec dict,
relative to the protocol file), e.g. SimCLR on ``tiny-imagenet`` as the paper's natural-image
stage 1, with the in-domain entries chained from it by ``init: <entry>``. ``method:
supervised`` makes an entry a supervised run instead (its keys are ``medssl finetune``'s
options; all of its data's labels unless it sets ``label_fraction``): it is fine-tuned with
``export_backbone`` set, so its best epoch's backbone is exported like a pretraining run's and
the run serves as an init (supervised pretraining, e.g. on tiny-imagenet's 200 classes).
Unlabeled ``data`` (``dataset: images``, or ``unlabeled: true``) is a pretraining pool that
loses the protocol data's val/test/shift images and their cases unless the entry names its own
``exclude``; ``extra_data: [spec, ...]`` adds sources to an entry's run (docs/PROTOCOLS.md,
"Unlabeled pretraining data"). With
``pretrain_seeds``, ``shared: true`` makes an entry ONE run (its own ``seed``, default 0)
that every seed's chained entries and fine-tunes start from -- as the paper started every
in-domain run from one public ImageNet checkpoint; a shared entry cannot start from a
per-seed one.

**Pretraining seeds.** Without ``pretrain_seeds`` one pretraining run per entry
(``pretrain/<name>/``, seed from the entry, default 0) serves every fine-tuning seed, as in
the paper: the seeds vary the labelled subset, the head initialisation and the data order
only. With ``pretrain_seeds: [0, 1, 2]`` each entry runs once per seed
(``pretrain/<name>-s<seed>/``, the entry may not set ``seed``) and fine-tuning seed s starts
from pretraining seed s (chained entries too: micle seed s continues simclr seed s), so the
spread over seeds includes the pretraining's own variance. Every fine-tuning seed must be
in ``pretrain_seeds``; the pretraining runs of a seed are made just before its fine-tunes.

**Modes.** ``finetune_modes`` lists ``finetune`` (the whole network) and/or ``linear`` (a
linear probe on the frozen backbone: ``linear_probe`` is then set by the sweep). Fine-tunes
keep the names ``<init>-f<fraction>-s<seed>``; linear probes are
``<init>-linear-f<fraction>-s<seed>``. results.csv has a ``mode`` column either way.

**Learning-rate (or any option) grid.** ``finetune_grid: {lr: [0.0003, 0.001, 0.003]}``
fine-tunes every (init, mode, fraction, seed) once per value (each checked as that option;
run names get ``-lr0.001``), and keeps the candidate with the best validation score its run
recorded (``best_val_<val_metric>`` in metrics.json; the first on ties). Only that one is
evaluated on the test splits and external sets, so test data never takes part in the
choice. ``selection.csv`` lists every candidate's validation score; results.csv's
``selected`` / ``selected_val`` say which one each row comes from. ``prune: true`` deletes a
finished group's training state (``checkpoints/last.pt``) and the weights of the candidates
not chosen (a grid over a large sweep would otherwise fill the disk).
``finetune_grid_seeds: first`` tries the grid on the first of ``seeds`` only: every later
seed fine-tunes just the candidate that seed chose for the same (init, mode, fraction), so
the hyper-parameters are still chosen on validation, once per init and fraction, at a third
of the cost of a three-value grid (``all``, the default, chooses for every seed anew).

**Embedding maps.** ``embedding_maps: [random, micle]`` draws, for each listed init, a
t-SNE map of its backbone's features before fine-tuning (the first seed's) on the test and
shift images, coloured by class and by split and source (``embedding_map_<init>.png``, in
the report): what pretraining separates, and where the shift sits.

**Comparisons.** paired.csv compares every init with ``random`` (and ``micle`` with
``simclr``); ``compare: [[a, b], ...]`` adds pairs a - b of init labels (e.g. natural ->
in-domain vs supervised natural, MICLe vs its matched SimCLR control).

**External test sets.** Each ``external`` item (``name``, ``data``, optional ``class_map``
``{dataset class: model class or null}`` and ``model_classes`` ``{evaluation class: [model
classes]}``, which sums the model's probabilities per group, e.g. benign vs malignant) is
scored with every fine-tuned model exactly as ``medssl evaluate --split all`` does
(:func:`medssl.evaluation.evaluate_run`): every image, no re-split. Its results.csv ``split``
is ``external:<name>``, its files ``eval_external-<name>.json`` /
``predictions_external-<name>.npz``. The data and class map (that it keeps an image) are
checked before training.

Layout of ``OUT/``: ``protocol.yaml`` (the protocol as resolved, for the record),
``pretrain/<name>[-s<seed>]/`` and ``finetune/<init>[-linear]-f<fraction>-s<seed>/`` run
directories (each evaluation writes ``eval_<split>.json`` and ``predictions_<split>.npz``
into its run), ``results.csv`` (with ``skipped_steps``: optimiser steps the finite-step
guard skipped in that fine-tune), ``selection.csv``, ``pretraining.csv`` (every pretraining
run's log rows: loss, k-NN validation scores, skipped steps per epoch: the convergence
curves), ``paired.csv`` (paired differences between inits, per seed with a paired
case-bootstrap interval and their mean with a t-interval over seeds:
:mod:`medssl.paired`) and the report (:func:`medssl.report.write_report`).

Everything is resumable: a finished run is skipped, an unfinished one continues from its
checkpoint, an evaluation whose ``eval_<split>.json`` exists is not redone, and
``results.csv`` and ``paired.csv`` are rebuilt from the evaluation files, so running a sweep
again (or after a crash, or with more seeds) only does what is missing. A finished run made
with a different configuration is never silently reused: that is an error naming the
differing settings. A protocol without the newer keys plans exactly the runs it always did.
The tables, maps and report are also rewritten after each finished seed, so a stopped sweep
holds the table of its finished seeds. ``record`` (``medssl sweep --record DIR``) keeps a
compact copy that lets the sweep resume on a machine without ``OUT`` (:mod:`medssl.sweep_record`).
"""

from __future__ import annotations

import csv
import math
import re
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medssl.data.exclusion import checked_exclusion
from medssl.data.spec import DataSpec, is_pool, read_spec, spec_at
from medssl.errors import MedsslError
from medssl.options import Given, Where, check_seed, read, read_yaml_mapping, spelling
from medssl.train.run import (
    CONFIG,
    RESUMABLE_CHANGES,
    check_out,
    field_defaults,
    is_complete,
    read_config,
    read_result,
)

_METRIC_COLUMNS = [
    "accuracy", "balanced_accuracy", "auc_macro", "auc_mean_selected", "ece", "brier",
    "sensitivity", "specificity",
]  # fmt: skip
#: each metric's case-level bootstrap interval (the report shows it for one-seed cells)
_CI_COLUMNS = [f"{m}_ci_{end}" for m in _METRIC_COLUMNS for end in ("low", "high")]
RESULT_COLUMNS = [
    "dataset", "init", "mode", "label_fraction", "seed", "split", "n", "n_cases",
    *_METRIC_COLUMNS, *_CI_COLUMNS, "selected", "selected_val", "selected_on_seed",
    "skipped_steps", "run",
]  # fmt: skip
SELECTION_COLUMNS = [
    "init", "mode", "label_fraction", "seed", "candidate", "val_score", "selected",
    "selected_on_seed", "run",
]  # fmt: skip
PRETRAINING_COLUMNS = [
    "run", "entry", "seed", "method", "dataset", "epoch", "loss", "knn_accuracy",
    "knn_balanced_accuracy", "knn_auc_macro", "val_accuracy", "val_auc_macro",
    "skipped_steps",
]  # fmt: skip
PROTOCOL_KEYS = {
    "data", "image_size", "backbone", "small_stem", "pretrain", "pretrain_seeds", "inits",
    "label_fractions", "seeds", "finetune", "finetune_grid", "finetune_grid_seeds",
    "finetune_modes", "splits",
    "external", "compare", "prune", "embedding_maps", "n_boot", "mean_over", "device", "title",
    "notes", "patch_size",
}  # fmt: skip
#: ``finetune_grid_seeds``: try the grid for every seed, or on the first seed only
GRID_SEEDS = ("all", "first")
#: keys of a pretraining entry that the sweep reads itself (the others are run options)
ENTRY_KEYS = ("data", "shared")
#: ``method`` of a pretraining entry that is a supervised run (medssl finetune options)
SUPERVISED = "supervised"
#: protocol keys that set one option of every run (pretraining and fine-tuning)
_SHARED = ("image_size", "backbone", "small_stem", "patch_size", "device")
#: fine-tuning modes: the whole network, or a linear probe on the frozen backbone
FINETUNE_MODES = ("finetune", "linear")
REQUIRED_KEYS = ("data", "inits", "label_fractions")
#: config keys a sweep sets itself; a protocol's pretrain/finetune sections may not
_BY_SWEEP = "is set by the sweep"
_PRETRAIN_RESERVED = dict.fromkeys(("data", "out", "resume", "progress"), _BY_SWEEP)
_FINETUNE_RESERVED = dict.fromkeys(
    ("data", "out", "init", "label_fraction", "seed", "resume", "progress", "class_names",
     "task", "export_backbone"),
    _BY_SWEEP,
)  # fmt: skip
#: a supervised pretraining entry: finetune options, but its init, fraction and seed its own
_SUPERVISED_RESERVED = {
    **dict.fromkeys(("data", "out", "resume", "progress", "class_names", "task",
                     "export_backbone"), _BY_SWEEP),
    "linear_probe": "is not a pretraining (the backbone would stay as it started)",
}  # fmt: skip
#: config keys that may differ between a finished run and the sweep that reuses it
_REUSE_IGNORES = RESUMABLE_CHANGES - {"epochs"} | {"out", "precision", "class_names", "task"}
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class Init:
    """One initialisation of the fine-tuning grid."""

    label: str
    kind: str  # "random", "pretrain" (a protocol entry) or "path"
    target: str = ""  # the pretrain entry's name or the resolved path


@dataclass
class External:
    """An external test set: every image of ``data`` scored by every fine-tuned model."""

    name: str
    data: dict[str, Any]
    class_map: dict[str, str | None] | None = None  # dataset class -> evaluation class
    model_classes: dict[str, list[str]] | None = None  # evaluation class -> model classes

    @property
    def split(self) -> str:
        """Its ``split`` value in results.csv."""
        return f"external:{self.name}"


@dataclass
class EntryRole:
    """What a pretraining entry is besides its run options (``pretrain.<name>``)."""

    supervised: bool = False  # method: supervised -- a medssl finetune run, backbone exported
    data: dict[str, Any] | None = None  # its own data (None: the protocol's ``data``)
    shared: bool = False  # with pretrain_seeds: one run (its own seed) serves every seed


@dataclass
class Protocol:
    """A validated sweep protocol (paths resolved, defaults filled)."""

    data: dict[str, Any]
    inits: list[Init]
    label_fractions: list[float]
    seeds: list[int] = field(default_factory=lambda: [0])
    # settings of every run (_SHARED); None: not in the protocol, each config's own default
    image_size: int | None = None
    backbone: str | None = None
    small_stem: bool | None = None
    patch_size: int | None = None
    pretrain: dict[str, dict[str, Any]] = field(default_factory=dict)  # dependency order
    roles: dict[str, EntryRole] = field(default_factory=dict)  # every pretrain entry's role
    pretrain_seeds: list[int] | None = None  # None: one pretraining run serves every seed
    finetune: dict[str, Any] = field(default_factory=dict)
    #: fine-tuning options tried per (init, mode, fraction, seed); the best on val is kept
    finetune_grid: dict[str, list[Any]] = field(default_factory=dict)
    #: "all": the grid is tried for every seed; "first": on the first seed only
    finetune_grid_seeds: str = "all"
    finetune_modes: list[str] | None = None  # None: ["finetune"], run names without a mode
    splits: list[str] = field(default_factory=list)
    external: list[External] = field(default_factory=list)
    compare: list[tuple[str, str]] = field(default_factory=list)  # extra paired comparisons
    prune: bool = False  # drop finished fine-tunes' weights the sweep no longer needs
    embedding_maps: list[str] = field(default_factory=list)  # inits whose features are mapped
    n_boot: int = 1000
    mean_over: list[str] | None = None
    device: str | None = None
    title: str = ""
    notes: str = ""
    source: str = "protocol"  # where it came from, for error messages

    def to_dict(self) -> dict[str, Any]:
        """The protocol as plain YAML-able data (inits back in their written form)."""
        out = asdict(self)
        out.pop("source")
        roles = out.pop("roles")
        out["pretrain"] = {name: _written_entry(s, roles.get(name, {}))
                           for name, s in out["pretrain"].items()}  # fmt: skip
        for key in ("pretrain_seeds", "finetune_modes", *_SHARED):
            if out[key] is None:
                out.pop(key)
        for key in ("external", "finetune_grid", "compare", "prune", "embedding_maps"):
            if not out[key]:
                out.pop(key)
        if out["finetune_grid_seeds"] == "all":
            out.pop("finetune_grid_seeds")
        if "compare" in out:
            out["compare"] = [list(pair) for pair in out["compare"]]
        out["inits"] = [
            i.label if i.kind == "random" or (i.kind == "pretrain" and i.label == i.target)
            else {i.label: i.target}
            for i in self.inits
        ]  # fmt: skip
        return out


def _written_entry(settings: dict[str, Any], role: dict[str, Any]) -> dict[str, Any]:
    """A pretraining entry in its written form: run options plus the sweep's own keys."""
    out = dict(settings)
    if role.get("supervised"):
        out["method"] = SUPERVISED
    if role.get("data") is not None:
        out["data"] = role["data"]
    if role.get("shared"):
        out["shared"] = True
    return out


# --------------------------------------------------------------------------- validation


def _fail(source: str, key: str, message: str) -> MedsslError:
    return MedsslError(f"{source}: {key}: {message}")




def _int(value: Any, source: str, key: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(source, key, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(source, key, f"must be at least {minimum}, got {value}")
    return value


def _list(value: Any, source: str, key: str) -> list[Any]:
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise _fail(source, key, "must not be empty")
    return value


def _config_section(
    values: Any, cls: type, reserved: dict[str, str], source: str, key: str
) -> dict[str, Any]:
    """A protocol's ``pretrain.<name>`` / ``finetune`` section: options of ``cls``, read and
    checked by the same code as the command line's flags and ``--config`` files."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise _fail(source, key, f"expected a mapping of settings, got {values!r}")
    return read(cls, Given(values, Where(f"{source}: {key}.")), reserved)


def _resolve_path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _seeds(value: Any, source: str, key: str) -> list[int]:
    seeds = [check_seed(s, f"{source}: {key}") for s in _list(value, source, key)]
    if len(set(seeds)) != len(seeds):
        raise _fail(source, key, "a seed appears twice")
    return seeds


def _data_spec(value: Any, source: str, key: str, base: Path) -> dict[str, Any]:
    """A protocol's DataSpec dict (``data``, or an external set's), root resolved relative
    to the protocol file, checked like the command line's data options."""
    if not isinstance(value, dict) or "dataset" not in value:
        raise _fail(source, key, "expected a mapping with dataset (and root)")
    return read_spec(Given(value, Where(f"{source}: {key}.")), base=base).to_dict()


def _pretrain_order(pretrain: dict[str, dict[str, Any]], source: str) -> list[str]:
    """Entry names with every ``init: <entry>`` before the entry that starts from it.

    Declared order is kept where the chain allows; a cycle is an error naming its entries.
    """
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" or "done"

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise _fail(source, f"pretrain.{path[-1]}.init", f"the entries form a cycle ({cycle})")
        state[name] = "visiting"
        parent = pretrain[name].get("init")
        if isinstance(parent, str) and parent in pretrain:
            visit(parent, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in pretrain:
        visit(name, [])
    return order


def _externals(value: Any, source: str, base: Path, splits: list[str]) -> list[External]:
    """The ``external`` list: ``{name, data, class_map, model_classes}`` items."""
    from medssl.metrics import class_map_from_dict

    if value is None:
        return []
    out: list[External] = []
    for i, item in enumerate(_list(value, source, "external")):
        key = f"external[{i}]"
        if not isinstance(item, dict) or "name" not in item or "data" not in item:
            raise _fail(source, key, "expected a mapping with name, data (and class_map)")
        name = str(item["name"])
        key = f"external.{name}"
        if not _LABEL.match(name) or any(e.name == name for e in out) or name in splits:
            raise _fail(source, key, "names must be unique letters, digits, _.+-")
        bad = sorted(set(item) - {"name", "data", "class_map", "model_classes"})
        if bad:
            raise _fail(source, f"{key}.{bad[0]}", "not a setting; allowed: name, data, "
                        "class_map, model_classes")  # fmt: skip
        data = _data_spec(item["data"], source, f"{key}.data", base)
        class_map, groups = item.get("class_map"), item.get("model_classes")
        if class_map is not None and not isinstance(class_map, dict):
            raise _fail(source, f"{key}.class_map", "expected a mapping {dataset class: "
                        f"model class or null}}, got {class_map!r}")  # fmt: skip
        try:
            classes = class_map_from_dict(class_map, f"{key}.class_map") if class_map else None
            merge = class_map_from_dict({"model_classes": groups}, key) if groups else None
        except MedsslError as exc:
            raise MedsslError(f"{source}: {exc}") from None
        entries = classes.classes if classes else None
        merged = merge.model_classes if merge else (classes.model_classes if classes else None)
        out.append(External(name, data, entries, merged))
    return out


def _entry_role(
    settings: Any, source: str, key: str, base: Path
) -> tuple[dict[str, Any], EntryRole]:
    """Split a pretraining entry into its run options and its :class:`EntryRole`."""
    if settings is None:
        return {}, EntryRole()
    if not isinstance(settings, dict):
        raise _fail(source, key, f"expected a mapping of settings, got {settings!r}")
    settings = dict(settings)
    role = EntryRole(supervised=settings.get("method") == SUPERVISED)
    if role.supervised:
        del settings["method"]
    if "data" in settings:
        role.data = _data_spec(settings.pop("data"), source, f"{key}.data", base)
    if "shared" in settings:
        shared = settings.pop("shared")
        if not isinstance(shared, bool):
            raise _fail(source, f"{key}.shared", f"expected true or false, got {shared!r}")
        role.shared = shared
    return settings, role


def _exclude_evaluation_data(role: EntryRole, data: dict[str, Any], source: str, key: str) -> None:
    """An entry pretraining on an unlabeled pool never sees the protocol's evaluation cases:
    unless it names its own ``exclude``, the pool loses every image (and its case) of the
    protocol data's val, test and shift splits (:mod:`medssl.data.exclusion`)."""
    if not role.data or not is_pool(role.data):
        return
    if role.supervised:
        raise _fail(source, f"{key}.data", "a supervised entry needs labelled data")
    if not role.data.get("exclude"):
        role.data = {**role.data, "exclude": checked_exclusion({"data": data})}


def _extra_data(
    value: Any, data: dict[str, Any], source: str, key: str, base: Path
) -> list[dict[str, Any]]:
    """An entry's ``extra_data``: data specs (roots relative to the protocol file) or paths
    of runs / spec files; an unlabeled one loses the protocol's evaluation cases as ``data``
    does (:func:`_exclude_evaluation_data`)."""
    out = []
    for i, item in enumerate(_list(value, source, key)):
        if isinstance(item, str):
            spec = spec_at(Path(_resolve_path(item, base)), f"{source}: {key}[{i}]")
        else:
            spec = _data_spec(item, source, f"{key}[{i}]", base)
        role = EntryRole(data=spec)
        _exclude_evaluation_data(role, data, source, f"{key}[{i}]")
        out.append(role.data)
    return out


def _check_shared_chains(
    pretrain: dict[str, dict[str, Any]], roles: dict[str, EntryRole],
    pretrain_seeds: list[int] | None, source: str,
) -> None:  # fmt: skip
    """A shared entry is one run, so it cannot start from a run that exists per seed."""
    for name, settings in pretrain.items():
        if roles[name].shared and pretrain_seeds is None:
            raise _fail(source, f"pretrain.{name}.shared", "needs pretrain_seeds (without "
                        "them every entry is already one run for all seeds)")  # fmt: skip
        parent = settings.get("init")
        if roles[name].shared and parent in pretrain and not roles[parent].shared:
            raise _fail(
                source, f"pretrain.{name}.init",
                f"a shared entry cannot start from {parent!r}, which runs once per seed",
            )  # fmt: skip


def _finetune_grid(value: Any, finetune: dict[str, Any], source: str) -> dict[str, list[Any]]:
    """``finetune_grid: {option: [values]}``: each value checked as that fine-tuning option."""
    from medssl.train.finetune import FinetuneConfig

    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise _fail(source, "finetune_grid", "expected a mapping {option: [values]}")
    grid: dict[str, list[Any]] = {}
    for key, values in value.items():
        where = f"finetune_grid.{key}"
        values = _list(values, source, where)
        checked = [
            _config_section({key: v}, FinetuneConfig, _FINETUNE_RESERVED, source,
                            "finetune_grid")  # fmt: skip
            for v in values
        ]
        name = next(iter(checked[0]))  # the option's field name (batch-size -> batch_size)
        if name in finetune:
            raise _fail(source, where, "is also set in finetune; remove one of them")
        if name == "linear_probe":
            raise _fail(source, where, "is set by finetune_modes")
        options = [c[name] for c in checked]
        if len(set(map(repr, options))) != len(options):
            raise _fail(source, where, "a value appears twice")
        grid[name] = options
    return grid


def _comparisons(value: Any, labels: list[str], source: str) -> list[tuple[str, str]]:
    """``compare: [[a, b], ...]``: paired differences a - b beyond the default ones."""
    if value is None:
        return []
    pairs: list[tuple[str, str]] = []
    for item in _list(value, source, "compare"):
        if not (isinstance(item, list) and len(item) == 2):
            raise _fail(source, "compare", f"expected pairs [a, b] of init labels, got {item!r}")
        a, b = (str(x) for x in item)
        unknown = [x for x in (a, b) if x not in labels]
        if unknown or a == b:
            what = f"{unknown[0]!r} is not an init" if unknown else "compares an init with itself"
            raise _fail(source, "compare", f"{[a, b]}: {what} (inits: {', '.join(labels)})")
        if (a, b) not in pairs:
            pairs.append((a, b))
    return pairs


def load_protocol(protocol: dict[str, Any] | str | Path) -> Protocol:
    """Validate a protocol (a dict, or a YAML file path); every problem is a MedsslError.

    Relative paths (data root, init checkpoints) are taken relative to the protocol file's
    folder, or to the working directory for a dict.
    """
    from medssl.train.finetune import FinetuneConfig
    from medssl.train.pretrain import PretrainConfig

    if isinstance(protocol, dict):
        raw, source, base = dict(protocol), "protocol", Path.cwd()
    else:
        path = Path(protocol).expanduser()
        source, base = f"protocol {path}", path.resolve().parent
        raw = read_yaml_mapping(path, source, "protocol keys to values")
    unknown = sorted(str(k) for k in raw if k not in PROTOCOL_KEYS)
    if unknown:
        raise MedsslError(
            f"{source}: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(PROTOCOL_KEYS))}"
        )
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise MedsslError(f"{source}: missing required key {key}")

    data = _data_spec(raw["data"], source, "data", base)
    # settings of every run: checked as the pretraining options they are (None: the
    # configs' own defaults)
    shared = read(
        PretrainConfig, Given({k: raw[k] for k in _SHARED if k in raw}, Where(f"{source}: "))
    )

    pretrain_raw = raw.get("pretrain") or {}
    if not isinstance(pretrain_raw, dict):
        raise _fail(source, "pretrain", "expected a mapping {name: settings}")
    pretrain: dict[str, dict[str, Any]] = {}
    roles: dict[str, EntryRole] = {}
    for name, settings in pretrain_raw.items():
        name = str(name)
        if not _LABEL.match(name) or name == "random":
            raise _fail(source, f"pretrain.{name}", "names must be letters, digits, _.+- "
                        "and not 'random'")  # fmt: skip
        settings, roles[name] = _entry_role(settings, source, f"pretrain.{name}", base)
        _exclude_evaluation_data(roles[name], data, source, f"pretrain.{name}")
        if "extra_data" in (settings or {}):
            settings["extra_data"] = _extra_data(settings["extra_data"], data, source,
                                                 f"pretrain.{name}.extra_data", base)  # fmt: skip
        cls, reserved = (
            (FinetuneConfig, _SUPERVISED_RESERVED) if roles[name].supervised
            else (PretrainConfig, _PRETRAIN_RESERVED)
        )  # fmt: skip
        settings = _config_section(settings, cls, reserved, source, f"pretrain.{name}")
        init = settings.get("init")
        if isinstance(init, str) and init not in ("", "random") and init not in pretrain_raw:
            path = _resolve_path(init, base)
            if not Path(path).exists():
                raise _fail(
                    source, f"pretrain.{name}.init",
                    f"{init!r} is not 'random', a pretrain entry "
                    f"({', '.join(map(str, pretrain_raw))}) or an existing checkpoint/run path",
                )  # fmt: skip
            settings["init"] = path
        pretrain[name] = settings
    pretrain = {name: pretrain[name] for name in _pretrain_order(pretrain, source)}
    pretrain_seeds = None
    if raw.get("pretrain_seeds") is not None:
        pretrain_seeds = _seeds(raw["pretrain_seeds"], source, "pretrain_seeds")
        for name, settings in pretrain.items():
            if "seed" in settings and not roles[name].shared:
                raise _fail(source, f"pretrain.{name}.seed", "is set by the sweep from "
                            "pretrain_seeds (or add shared: true for one run that serves "
                            "every seed); remove one of them")  # fmt: skip
    _check_shared_chains(pretrain, roles, pretrain_seeds, source)

    inits: list[Init] = []
    for item in _list(raw["inits"], source, "inits"):
        if isinstance(item, dict) and len(item) == 1:
            label, target = (str(x) for x in next(iter(item.items())))
        elif isinstance(item, str) and item:
            target = item
            label = item if item in pretrain or item == "random" else Path(item).stem
        else:
            expected = "a name, a path or {label: path}"
            raise _fail(source, "inits", f"expected {expected}, got {item!r}")
        if not _LABEL.match(label):
            raise _fail(source, "inits", f"label {label!r} must be letters, digits, _.+-")
        if target == "random":
            init = Init(label, "random")
        elif target in pretrain:
            init = Init(label, "pretrain", target)
        else:
            path = _resolve_path(target, base)
            if not Path(path).exists():
                entries = ", ".join(pretrain) or "none"
                raise _fail(
                    source, "inits",
                    f"{target!r} is not 'random', a pretrain entry ({entries}) "
                    "or an existing checkpoint/run path",
                )  # fmt: skip
            init = Init(label, "path", path)
        if any(i.label == label for i in inits):
            raise _fail(source, "inits", f"label {label!r} appears twice")
        inits.append(init)

    fractions: list[float] = []
    for value in _list(raw["label_fractions"], source, "label_fractions"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise _fail(source, "label_fractions", f"{value!r} is not a fraction in (0, 1]")
        fractions.append(float(value))
    if len(set(fractions)) != len(fractions):
        raise _fail(source, "label_fractions", "a fraction appears twice")
    seeds = _seeds(raw.get("seeds", [0]), source, "seeds")
    if pretrain_seeds is not None:
        unpaired = [s for s in seeds if s not in pretrain_seeds]
        if unpaired:
            raise _fail(
                source, "pretrain_seeds",
                f"fine-tuning seed(s) {', '.join(map(str, unpaired))} have no pretraining run "
                "of the same seed; list every seed of seeds in pretrain_seeds",
            )  # fmt: skip

    finetune = _config_section(
        raw.get("finetune"), FinetuneConfig, _FINETUNE_RESERVED, source, "finetune"
    )
    grid = _finetune_grid(raw.get("finetune_grid"), finetune, source)
    grid_seeds = raw.get("finetune_grid_seeds", "all")
    if grid_seeds not in GRID_SEEDS:
        raise _fail(source, "finetune_grid_seeds",
                    f"expected one of {', '.join(GRID_SEEDS)}, got {grid_seeds!r}")  # fmt: skip
    if grid_seeds != "all" and not grid:
        raise _fail(source, "finetune_grid_seeds", "needs a finetune_grid to choose from")
    modes = raw.get("finetune_modes")
    if modes is not None:
        modes = [str(m) for m in _list(modes, source, "finetune_modes")]
        bad = [m for m in modes if m not in FINETUNE_MODES]
        if bad or len(set(modes)) != len(modes):
            what = f"{bad[0]!r} is not a mode" if bad else "a mode appears twice"
            raise _fail(source, "finetune_modes", f"{what}; modes: {', '.join(FINETUNE_MODES)}")
        if "linear_probe" in finetune:
            raise _fail(source, "finetune.linear_probe", "is set by finetune_modes when "
                        "that key is given; remove one of them")  # fmt: skip
    splits = raw.get("splits") or []
    splits = [str(s) for s in _list(splits, source, "splits")] if splits else []
    if len(set(splits)) != len(splits):
        raise _fail(source, "splits", "a split appears twice")
    if any(not _LABEL.match(s) for s in splits):
        raise _fail(source, "splits", f"{splits} are not split names (test, shift, val)")
    external = _externals(raw.get("external"), source, base, splits)
    compare = _comparisons(raw.get("compare"), [i.label for i in inits], source)
    maps = raw.get("embedding_maps")
    embedding_maps = [str(x) for x in _list(maps, source, "embedding_maps")] if maps else []
    unknown = [m for m in embedding_maps if m not in [i.label for i in inits]]
    if unknown:
        raise _fail(source, "embedding_maps", f"{unknown[0]!r} is not an init "
                    f"({', '.join(i.label for i in inits)})")  # fmt: skip
    prune = raw.get("prune", False)
    if not isinstance(prune, bool):
        raise _fail(source, "prune", f"expected true or false, got {prune!r}")
    n_boot = _int(raw.get("n_boot", 1000), source, "n_boot", minimum=0)
    mean_over = raw.get("mean_over")
    if mean_over is not None:
        mean_over = [str(m) for m in _list(mean_over, source, "mean_over")]
    title, notes = str(raw.get("title") or ""), str(raw.get("notes") or "")
    return Protocol(
        data=data, inits=inits, label_fractions=fractions, seeds=seeds, **shared,
        pretrain=pretrain, roles=roles, pretrain_seeds=pretrain_seeds, finetune=finetune,
        finetune_grid=grid, finetune_grid_seeds=grid_seeds, finetune_modes=modes,
        splits=splits, external=external,
        compare=compare, prune=prune, embedding_maps=embedding_maps, n_boot=n_boot,
        mean_over=mean_over, title=title, notes=notes, source=source,
    )  # fmt: skip


# --------------------------------------------------------------------------- planning


def fraction_name(fraction: float) -> str:
    """0.1 -> '0.1', 1.0 -> '1', 0.25 -> '0.25' (as it appears in run directory names)."""
    return f"{fraction:g}"


def pretrain_run_name(name: str, seed: int | None) -> str:
    """``micle`` (one pretraining run for every seed) or ``micle-s1`` (pretrain_seeds)."""
    return name if seed is None else f"{name}-s{seed}"


def finetune_run_name(
    label: str, fraction: float, seed: int, mode: str = "finetune",
    candidate: dict[str, Any] | None = None,
) -> str:  # fmt: skip
    """``simclr-f0.1-s0``; linear probes get ``-linear``: ``simclr-linear-f0.1-s0``; a
    ``finetune_grid`` candidate appends its values: ``simclr-f0.1-s0-lr0.001``."""
    middle = "" if mode == "finetune" else f"-{mode}"
    tail = "".join(f"-{_short(k)}{_value_name(v)}" for k, v in (candidate or {}).items())
    return f"{label}{middle}-f{fraction_name(fraction)}-s{seed}{tail}"


def _short(key: str) -> str:
    return {"learning_rate": "lr", "weight_decay": "wd"}.get(key, key)


def _value_name(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def candidate_name(candidate: dict[str, Any]) -> str:
    """``lr=0.001`` (``wd=0.01`` ...): a grid candidate as results.csv records it."""
    return ",".join(f"{_short(k)}={_value_name(v)}" for k, v in candidate.items())


def grid_candidates(p: Protocol) -> list[dict[str, Any]]:
    """Every combination of the ``finetune_grid`` values ([{}] without a grid)."""
    import itertools

    keys = list(p.finetune_grid)
    combos = itertools.product(*p.finetune_grid.values())
    return [dict(zip(keys, values, strict=True)) for values in combos]


def modes(p: Protocol) -> list[str]:
    """The fine-tuning modes of the grid (``finetune`` when the protocol names none)."""
    return list(p.finetune_modes or ["finetune"])


def _pretrain_seed(p: Protocol, seed: int) -> int | None:
    """The pretraining seed paired with fine-tuning ``seed`` (None: the one shared run)."""
    return seed if p.pretrain_seeds is not None else None


def entry_run_name(p: Protocol, name: str, seed: int | None) -> str:
    """The run directory name of entry ``name`` for pretraining seed ``seed``: a shared
    entry has one run whatever the seed."""
    role = p.roles.get(name, EntryRole())
    return pretrain_run_name(name, None if role.shared else seed)


def _entry_run(p: Protocol, name: str, seed: int | None, out_dir: Path) -> str:
    return str(out_dir / "pretrain" / entry_run_name(p, name, seed))


@dataclass
class _Job:
    kind: str  # "pretrain" or "finetune"
    name: str  # run directory name
    description: str
    config: Any  # PretrainConfig or FinetuneConfig
    init: Init | None = None
    fraction: float = 1.0
    seed: int = 0
    mode: str = "finetune"
    candidate: dict[str, Any] = field(default_factory=dict)  # its finetune_grid values
    entry: str = ""  # a pretraining job's protocol entry
    last_of_group: bool = True  # the last candidate of its (init, mode, fraction, seed)

    @property
    def run(self) -> Path:
        return Path(self.config.out)


def _shared(p: Protocol) -> dict[str, Any]:
    """The settings the protocol gives every run (image_size, backbone, ...)."""
    return {k: getattr(p, k) for k in _SHARED if getattr(p, k) is not None}


def _pretrain_config(
    p: Protocol, name: str, seed: int | None, out_dir: Path, progress: bool
) -> Any:
    """The run of entry ``name`` for pretraining seed ``seed``: a PretrainConfig, or a
    FinetuneConfig exporting its backbone for a supervised entry."""
    from medssl.train.finetune import FinetuneConfig
    from medssl.train.pretrain import PretrainConfig

    role = p.roles.get(name, EntryRole())
    settings = {**_shared(p), **p.pretrain[name]}
    if seed is not None and not role.shared:
        settings["seed"] = seed
    parent = settings.get("init")
    if isinstance(parent, str) and parent in p.pretrain:  # chained: the same seed's run
        settings["init"] = _entry_run(p, parent, seed, out_dir)
    common = {
        "data": role.data or p.data, "out": _entry_run(p, name, seed, out_dir),
        "progress": progress, "resume": True,
    }  # fmt: skip
    if role.supervised:
        return FinetuneConfig(**common, export_backbone=True, **settings)
    return PretrainConfig(**common, **settings)


def _finetune_config(
    p: Protocol, init: Init, fraction: float, seed: int, out_dir: Path, progress: bool,
    mode: str = "finetune", candidate: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    from medssl.options import default_of
    from medssl.train.finetune import FinetuneConfig
    from medssl.train.pretrain import PretrainConfig

    # the protocol's image size, else pretraining's default (not the init run's own size)
    settings = {"image_size": default_of(PretrainConfig, "image_size"), **_shared(p)}
    architecture: dict[str, Any] = {}
    if init.kind == "pretrain":  # fine-tune the architecture that was pretrained
        architecture = p.pretrain[init.target]
        target = _entry_run(p, init.target, _pretrain_seed(p, seed), out_dir)
    elif init.kind == "path":
        target = init.target
        if Path(target).is_dir() and (Path(target) / CONFIG).is_file():
            architecture = read_config(target)
    else:
        target = "random"
    arch_keys = ("backbone", "small_stem", "patch_size")
    settings.update({k: architecture[k] for k in arch_keys if k in architecture})
    settings.update(p.finetune)
    settings.update(candidate or {})
    if p.finetune_modes is not None:
        settings["linear_probe"] = mode == "linear"
    name = finetune_run_name(init.label, fraction, seed, mode, candidate)
    return FinetuneConfig(
        data=p.data, out=str(out_dir / "finetune" / name), init=target,
        label_fraction=fraction, seed=seed, progress=progress, resume=True, **settings,
    )  # fmt: skip


def _pretrain_jobs(
    p: Protocol, seed: int | None, out_dir: Path, progress: bool, names: list[str]
) -> list[_Job]:
    jobs = []
    for name in names:  # dependency order
        cfg = _pretrain_config(p, name, seed, out_dir, progress)
        run_name = entry_run_name(p, name, seed)
        parent = p.pretrain[name].get("init")
        start = f", from {entry_run_name(p, parent, seed)}" if parent in p.pretrain else ""
        role = p.roles.get(name, EntryRole())
        method = SUPERVISED if role.supervised else cfg.method
        data = f" on {role.data['dataset']}" if role.data else ""
        desc = f"pretrain {run_name} ({method}{data}, {cfg.epochs} epochs{start})"
        jobs.append(_Job("pretrain", run_name, desc, cfg, seed=seed or 0, entry=name))
    return jobs


def _finetune_jobs(p: Protocol, seed: int, out_dir: Path, progress: bool) -> list[_Job]:
    jobs = []
    candidates = grid_candidates(p)
    for mode in modes(p):
        for fraction in p.label_fractions:
            for init in p.inits:
                for i, cand in enumerate(candidates):
                    cfg = _finetune_config(p, init, fraction, seed, out_dir, progress, mode,
                                           cand)  # fmt: skip
                    what = "finetune" if mode == "finetune" else f"finetune ({mode})"
                    tried = f" {candidate_name(cand)}" if cand else ""
                    desc = f"{what} {init.label} f={fraction_name(fraction)} seed={seed}{tried}"
                    jobs.append(_Job(
                        "finetune", Path(cfg.out).name, desc, cfg, init, fraction, seed, mode,
                        cand, last_of_group=i == len(candidates) - 1,
                    ))  # fmt: skip
    return jobs


def plan(p: Protocol, out_dir: Path, progress: bool = True) -> list[_Job]:
    """Every training job of the sweep, in the order they run.

    Pretraining comes first (chained entries after the entry they start from). Seeds are the
    outer loop of the fine-tunes, so a sweep stopped part-way already holds the complete
    init x label-fraction comparison for its first seeds; with ``pretrain_seeds`` each
    seed's pretraining runs come just before its fine-tunes, for the same reason.
    """
    if p.pretrain_seeds is None:
        jobs = _pretrain_jobs(p, None, out_dir, progress, list(p.pretrain))
        for seed in p.seeds:
            jobs += _finetune_jobs(p, seed, out_dir, progress)
        return jobs
    shared = [n for n in p.pretrain if p.roles.get(n, EntryRole()).shared]
    jobs = _pretrain_jobs(p, None, out_dir, progress, shared)  # once, before every seed
    for seed in p.pretrain_seeds:
        per_seed = [n for n in p.pretrain if n not in shared]
        jobs += _pretrain_jobs(p, seed, out_dir, progress, per_seed)
        if seed in p.seeds:
            jobs += _finetune_jobs(p, seed, out_dir, progress)
    return jobs


def _stale_settings(job: _Job, out_dir: Path) -> list[str]:
    """Settings of a finished run that differ from what the protocol asks for now.

    Compared on the resolved configuration, so defaults count too; paths inside the sweep
    folder are compared relative to it, so a moved or copied sweep folder stays reusable.
    """
    old = read_config(job.run)
    new = asdict(job.config.resolved())
    asked = asdict(job.config)
    defaults = field_defaults(type(job.config))
    old_root = str(Path(old.get("out", job.run)).parent.parent)

    def norm(key: str, value: Any, root: str) -> Any:
        if key == "init" and isinstance(value, str) and value.startswith(root + "/"):
            return "<sweep>/" + value[len(root) + 1 :]
        return value

    def differs(key: str) -> bool:
        if key in _REUSE_IGNORES:
            return False
        if key not in old:  # a setting added to medssl after the run: fine at its default
            return key in asked and asked[key] != defaults.get(key)
        return norm(key, old.get(key), old_root) != norm(key, new.get(key), str(out_dir))

    return sorted(k for k in set(old) | set(new) if differs(k))


def _moved_data_hint(job: _Job) -> str:
    """When a finished run differs only in its data root (a sweep or record moved to a
    machine whose data sits elsewhere): the two roots, and what makes the run reusable.
    medssl cannot tell that two roots hold the same images, so it does not assume it."""
    old = dict(read_config(job.run).get("data") or {})
    new = dict(asdict(job.config.resolved()).get("data") or {})
    if not old or old.get("root") == new.get("root"):
        return ""
    if {k: v for k, v in old.items() if k != "root"} != {
        k: v for k, v in new.items() if k != "root"
    }:  # fmt: skip
        return ""
    return (
        f" (the run's data root was {old.get('root')}, the protocol's is {new.get('root')}: "
        "if they hold the same dataset, make it reachable at the run's path, a symbolic "
        "link will do)"
    )


# --------------------------------------------------------------------------- running


def _say(message: str) -> None:
    print(message, flush=True)


def _check_splits(p: Protocol) -> tuple[list[str], list[str]]:
    """The splits to evaluate (default: test, plus shift where the data has one), and the
    class names of the data (the fine-tuned models' classes)."""
    try:
        manifest, splits = DataSpec.from_dict(p.data).load()
    except MedsslError as exc:
        raise MedsslError(f"{p.source}: data: {exc}") from None
    available = splits.names()
    if not p.splits:
        return [s for s in ("test", "shift") if s in available], manifest.class_names
    missing = [s for s in p.splits if s not in available]
    if missing:
        raise _fail(
            p.source, "splits",
            f"{', '.join(missing)} not in this dataset's splits ({', '.join(available)}); "
            "a shift split needs data.shift_sources (HAM10000 and synthetic have one by default)",
        )  # fmt: skip
    return list(p.splits), manifest.class_names


def _check_external(p: Protocol, model_classes: list[str]) -> None:
    """Load every external set and check its class map before any training starts."""
    from medssl.evaluation import align_targets

    for ext in p.external:
        key = f"external.{ext.name}"
        try:
            manifest, _ = DataSpec.from_dict(ext.data).load()
        except MedsslError as exc:
            raise MedsslError(f"{p.source}: {key}.data: {exc}") from None
        evaluation = list(ext.model_classes or model_classes)
        for group, members in (ext.model_classes or {}).items():
            unknown = [m for m in members if m not in model_classes]
            if unknown:
                raise _fail(
                    p.source, f"{key}.model_classes.{group}",
                    f"{', '.join(unknown)} not among the model's classes "
                    f"({', '.join(model_classes)})",
                )  # fmt: skip
        if ext.class_map is None:
            if manifest.task == "multiclass" and not set(manifest.class_names) & set(evaluation):
                raise _fail(
                    p.source, f"{key}.class_map",
                    f"required: no class of this set ({', '.join(manifest.class_names)}) is "
                    f"a model class ({', '.join(evaluation)})",
                )  # fmt: skip
            continue
        for src, dst in ext.class_map.items():
            if src not in manifest.class_names:
                raise _fail(
                    p.source, f"{key}.class_map",
                    f"{src!r} is not a class of this set ({', '.join(manifest.class_names)})",
                )  # fmt: skip
            if dst is not None and dst not in evaluation:
                raise _fail(
                    p.source, f"{key}.class_map",
                    f"{src!r} goes to {dst!r}, which is not one of {', '.join(evaluation)}",
                )  # fmt: skip
        try:  # as evaluating the whole set will: "class mapping excludes every row"
            align_targets(manifest, evaluation, ext.class_map)
        except MedsslError as exc:
            raise _fail(p.source, f"{key}.class_map", str(exc)) from None


def _eval_files(p: Protocol, splits: list[str]) -> list[tuple[str, str]]:
    """(``split`` value in results.csv, label of the ``eval_<label>.json`` file) pairs."""
    from medssl.report import split_file_label

    return [(s, s) for s in splits] + [(e.split, split_file_label(e.split)) for e in p.external]


def _metric(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _ci_cells(ci: dict[str, Any]) -> dict[str, Any]:
    """``<metric>_ci_low`` / ``<metric>_ci_high`` cells of an evaluation's ``ci``."""
    cells = {}
    for m in _METRIC_COLUMNS:
        low, high = ci.get(m) or (None, None)
        cells[f"{m}_ci_low"], cells[f"{m}_ci_high"] = _metric(low), _metric(high)
    return cells


def _groups(jobs: list[_Job]) -> list[list[_Job]]:
    """The fine-tuning jobs grouped by (init, mode, fraction, seed): a group's runs differ
    only in their ``finetune_grid`` candidate."""
    groups: list[list[_Job]] = []
    current: list[_Job] = []
    for job in jobs:
        if job.kind != "finetune":
            continue
        current.append(job)
        if job.last_of_group:
            groups.append(current)
            current = []
    return groups


def validation_score(run: Path) -> float | None:
    """The best validation score a finished fine-tune recorded (its model selection metric)."""
    metrics = read_result(run / "metrics.json") or {}
    value = next((v for k, v in metrics.items() if k.startswith("best_val_")), None)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def select_candidate(group: list[_Job]) -> tuple[_Job, float | None]:
    """The candidate with the best validation score (the first on ties, or when none
    scored), and that score. Only validation decides: test splits are never read here."""
    scored = [(validation_score(job.run), i) for i, job in enumerate(group)]
    best = max(scored, key=lambda x: (x[0] is not None, x[0] or 0.0, -x[1]))
    return group[best[1]], best[0]


def _group_key(job: _Job) -> tuple[str, str, float]:
    return (job.init.label, job.mode, job.fraction)


def trained_candidates(
    p: Protocol, group: list[_Job], first: dict[tuple[str, str, float], list[_Job]]
) -> tuple[list[_Job], int]:
    """The candidates of ``group`` that are trained, and the seed whose validation chooses
    among them. All of them, chosen on the group's own seed, unless ``finetune_grid_seeds``
    is ``first`` and the group belongs to a later seed: then only the candidate the first
    seed chose for the same (init, mode, fraction) (none until that group has finished).
    ``first`` maps that key to the first seed's group."""
    head = group[0]
    lead = first.get(_group_key(head))
    if p.finetune_grid_seeds == "all" or lead is None or head.seed == lead[0].seed:
        return group, head.seed
    if not all(is_complete(j.run) for j in lead):
        return [], lead[0].seed
    chosen = select_candidate(lead)[0].candidate
    return [j for j in group if j.candidate == chosen], lead[0].seed


def _first_seed_groups(p: Protocol, groups: list[list[_Job]]) -> dict[tuple[str, str, float],
                                                                       list[_Job]]:  # fmt: skip
    """Each (init, mode, fraction)'s group of the first fine-tuning seed."""
    return {_group_key(g[0]): g for g in groups if g[0].seed == p.seeds[0]}


def _finished_choices(
    p: Protocol, out_dir: Path, seeds: Collection[int] | None = None
) -> list[tuple[list[_Job], _Job, float | None, int]]:
    """Every finished group's trained candidates, the one chosen on validation, its score
    and the seed whose validation chose it (only the groups of ``seeds`` when given)."""
    groups = _groups(plan(p, out_dir, progress=False))
    first = _first_seed_groups(p, groups)
    out = []
    for group in groups:
        if seeds is not None and group[0].seed not in seeds:
            continue
        trained, chosen_on = trained_candidates(p, group, first)
        if not trained or not all(is_complete(j.run) for j in trained):
            continue
        chosen, score = select_candidate(trained)
        out.append((trained, chosen, score, chosen_on))
    return out


def _is_shared_run(p: Protocol, job: _Job) -> bool:
    """A pretraining run that every seed uses: a ``shared`` entry, or any entry of a protocol
    without ``pretrain_seeds``."""
    return job.kind == "pretrain" and (
        p.pretrain_seeds is None or p.roles.get(job.entry, EntryRole()).shared
    )


def finished_seeds(p: Protocol, jobs: list[_Job]) -> tuple[list[Path], dict[int, list[Path]]]:
    """The shared pretraining runs, and the runs of every seed whose work is all done (its
    own pretraining runs and the fine-tunes it trains; with ``finetune_grid_seeds: first``
    a later seed's unchosen candidates are not its work): what ``--record`` keeps."""
    groups = _groups(jobs)
    first = _first_seed_groups(p, groups)
    needed = {id(j) for g in groups for j in trained_candidates(p, g, first)[0]}
    shared = [j.run for j in jobs if _is_shared_run(p, j)]
    by_seed: dict[int, list[_Job]] = {}
    for job in jobs:
        if not _is_shared_run(p, job) and (job.kind == "pretrain" or id(job) in needed):
            by_seed.setdefault(job.seed, []).append(job)
    done = {
        seed: [j.run for j in seed_jobs] for seed, seed_jobs in by_seed.items()
        if any(j.kind == "finetune" for j in seed_jobs)  # a seed with its fine-tunes planned
        and all(is_complete(j.run) for j in seed_jobs)
    }  # fmt: skip
    return shared, done


def skipped_steps(run: Path) -> int | None:
    """Optimiser steps the finite-step guard skipped in a run (the sum of log.csv's column;
    None when the run has no log)."""
    path = run / "log.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        return sum(int(float(r.get("skipped_steps") or 0)) for r in csv.DictReader(fh))


def collect_selection(p: Protocol, out_dir: Path, seeds: Collection[int] | None = None) -> Path:
    """(Re)write ``selection.csv``: every grid candidate's validation score, the chosen one
    marked (one row per fine-tune without a grid; only ``seeds``' fine-tunes when given)."""
    rows = []
    for trained, chosen, _, chosen_on in _finished_choices(p, out_dir, seeds):
        for job in trained:
            rows.append({
                "init": job.init.label, "mode": job.mode, "label_fraction": job.fraction,
                "seed": job.seed, "candidate": candidate_name(job.candidate),
                "val_score": _metric(validation_score(job.run)), "selected": job is chosen,
                "selected_on_seed": chosen_on, "run": job.run.relative_to(out_dir).as_posix(),
            })  # fmt: skip
    return _write_csv(out_dir / "selection.csv", SELECTION_COLUMNS, rows)


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> Path:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def collect_pretraining(p: Protocol, out_dir: Path, seeds: Collection[int] | None = None) -> Path:
    """(Re)write ``pretraining.csv``: each pretraining run's log.csv rows (loss, k-NN
    validation scores, skipped steps per epoch), the curves behind a budget choice. With
    ``seeds``, the shared runs and those seeds' own runs only."""
    rows = []
    for job in plan(p, out_dir, progress=False):  # each pretraining run once, shared ones too
        if job.kind != "pretrain" or not (job.run / "log.csv").is_file():
            continue
        if seeds is not None and not _is_shared_run(p, job) and job.seed not in seeds:
            continue
        entry = job.entry
        role = p.roles.get(entry, EntryRole())
        method = SUPERVISED if role.supervised else job.config.method
        dataset = (role.data or p.data)["dataset"]
        with (job.run / "log.csv").open(newline="") as fh:
            for r in csv.DictReader(fh):
                rows.append({
                    "run": job.name, "entry": entry, "seed": "" if role.shared else job.seed,
                    "method": method, "dataset": dataset,
                    **{k: r.get(k, "") for k in PRETRAINING_COLUMNS[5:]},
                })  # fmt: skip
    return _write_csv(out_dir / "pretraining.csv", PRETRAINING_COLUMNS, rows)


def collect_results(
    p: Protocol, out_dir: Path, splits: list[str], seeds: Collection[int] | None = None
) -> Path:
    """(Re)write ``results.csv`` from the evaluation files of the protocol's runs: one row
    per (init, mode, fraction, seed, split), from the grid candidate chosen on validation
    (only ``seeds``' fine-tunes when given)."""
    rows = []
    for _, job, score, chosen_on in _finished_choices(p, out_dir, seeds):
        for split, label in _eval_files(p, splits):
            metrics = read_result(job.run / f"eval_{label}.json")
            if metrics is None:
                continue
            rows.append({
                "dataset": p.data["dataset"], "init": job.init.label, "mode": job.mode,
                "label_fraction": job.fraction, "seed": job.seed, "split": split,
                "n": metrics.get("n", ""), "n_cases": metrics.get("n_cases", ""),
                **{k: _metric(metrics.get(k)) for k in _METRIC_COLUMNS},
                **_ci_cells(metrics.get("ci") or {}),
                "selected": candidate_name(job.candidate), "selected_val": _metric(score),
                "selected_on_seed": chosen_on,
                "skipped_steps": _metric(skipped_steps(job.run)),
                "run": job.run.relative_to(out_dir).as_posix(),
            })  # fmt: skip
    return _write_csv(out_dir / "results.csv", RESULT_COLUMNS, rows)


def _readable(value: Any) -> str:
    """A setting's value as report text: a mapping as ``key = value`` pairs, a list comma
    separated; never Python's repr of a dict or list."""
    if isinstance(value, dict):
        return ", ".join(f"{k} = {_readable(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(_readable(v) for v in value) or "none"
    return _value_name(value)


def settings_text(settings: dict[str, Any]) -> str:
    """``epochs: 20; augment_overrides: crop_scale_min = 0.3, blur_p = 0`` (``defaults`` when
    empty; unset values left out): a protocol entry's settings as the report's protocol box
    shows them."""
    shown = {k: v for k, v in settings.items() if v is not None and v != ""}  # unset: default
    return "; ".join(f"{k}: {_readable(v)}" for k, v in shown.items()) or "defaults"


def _notes(p: Protocol) -> str:
    from medssl.options import default_of
    from medssl.train.pretrain import PretrainConfig

    backbone = p.backbone or default_of(PretrainConfig, "backbone")
    size = p.image_size or default_of(PretrainConfig, "image_size")
    # a protocol given as a dict (the demo, the API) has no file to name
    origin = p.source.removeprefix("protocol ").strip() if p.source != "protocol" else ""
    lines = [(f"Protocol file: {origin}. " if origin else "")
             + f"Backbone {backbone}, images {size} px."]  # fmt: skip
    for name, entry in p.pretrain.items():
        lines.append(f"Pretraining {name}: {settings_text(entry)}.")
    if p.pretrain_seeds is not None:
        lines.append(
            f"Pretraining seeds {', '.join(map(str, p.pretrain_seeds))}: fine-tuning seed s "
            "starts from the pretraining run of seed s (chained entries too)."
        )
    lines.append(
        f"Fine-tuning: {settings_text(p.finetune)}; modes {', '.join(modes(p))}; "
        f"seeds {', '.join(map(str, p.seeds))}; "
        f"case-level bootstrap resamples per evaluation: {p.n_boot}."
    )
    if p.finetune_grid:
        tried = "; ".join(f"{k} {', '.join(map(_value_name, v))}" for k, v in
                          p.finetune_grid.items())  # fmt: skip
        how = (
            "for each init, mode, label fraction and seed the candidate with the best "
            "validation score is kept"
            if p.finetune_grid_seeds == "all" else
            f"tried on seed {p.seeds[0]} only: for each init, mode and label fraction the "
            "candidate with the best validation score there is the one every later seed "
            "fine-tunes"
        )  # fmt: skip
        lines.append(f"Fine-tuning grid: {tried}; {how}; only the chosen run is evaluated "
                     "(selection.csv).")  # fmt: skip
    for name, role in p.roles.items():
        if role.data or role.shared or role.supervised:
            what = [SUPERVISED if role.supervised else "self-supervised"]
            if role.data:
                what.append(f"on {role.data['dataset']}")
            if role.shared:
                what.append("one run shared by every pretraining seed")
            lines.append(f"Pretraining {name}: {', '.join(what)}.")
    for ext in p.external:
        lines.append(
            f"External test set {ext.name} ({ext.data['dataset']}, every image, no further "
            "training): class map "
            + (", ".join(f"{k} → {'left out' if v is None else v}"
                         for k, v in (ext.class_map or {}).items()) or "by name")
            + ("; merged model classes " + "; ".join(
                f"{k} = {' + '.join(map(str, v))}" for k, v in ext.model_classes.items())
               if ext.model_classes else "")
            + "."
        )
    text = "\n".join(lines)
    return f"{p.notes.strip()}\n\n{text}" if p.notes.strip() else text


def _device(p: Protocol) -> dict[str, str]:
    """The protocol's ``device`` for evaluations (none: evaluate's own default)."""
    return {"device": p.device} if p.device is not None else {}


def _evaluate(p: Protocol, job: _Job, splits: list[str], where: str) -> int:
    """Evaluate a finished fine-tune on every split and external set not yet evaluated;
    returns how many it evaluated."""
    from medssl import evaluation
    from medssl.metrics import ClassMap

    evaluated = 0
    for split, label in _eval_files(p, splits):
        path = job.run / f"eval_{label}.json"
        if path.is_file():
            if read_result(path) is not None:
                continue
            _say(f"    {path} is damaged (not a JSON object): evaluating {split} again")
        evaluated += 1
        ext = next((e for e in p.external if e.split == split), None)
        t0 = time.perf_counter()
        try:
            if ext is None:
                m = evaluation.evaluate_run(
                    job.run, split, n_boot=p.n_boot, mean_over=p.mean_over, **_device(p)
                )
            else:  # the whole external set, through medssl evaluate's own code path
                m = evaluation.evaluate_run(
                    job.run, "all", data=ext.data,
                    class_map=ClassMap(ext.class_map, ext.model_classes), n_boot=p.n_boot,
                    mean_over=p.mean_over, name=label, **_device(p),
                )  # fmt: skip
        except MedsslError as exc:
            raise MedsslError(f"{where}: evaluate {split}: {exc}") from None
        score = ", ".join(
            f"{k} {m[k]:.3f}" for k in ("accuracy", "auc_macro", "auc_mean_selected")
            if isinstance(m.get(k), float)
        )  # fmt: skip
        _say(f"    evaluated on {split}: {score} ({time.perf_counter() - t0:.0f} s)")
    return evaluated


def _select(p: Protocol, group: list[_Job], where: str, chosen_before: bool = False) -> _Job:
    """The grid candidate to evaluate, said when there was a choice."""
    chosen, score = select_candidate(group)
    if chosen_before:
        _say(f"    {candidate_name(chosen.candidate)}, as chosen on seed {p.seeds[0]}")
    elif len(group) > 1:
        shown = "none scored" if score is None else f"val {score:.4f}"
        _say(f"    chose {candidate_name(chosen.candidate)} on validation ({shown})")
    return chosen


#: images per embedding map (a class-stratified draw past it keeps t-SNE to seconds)
MAP_IMAGES = 2000


def draw_embedding_maps(p: Protocol, out_dir: Path, splits: list[str]) -> list[tuple[str, str]]:
    """``embedding_maps: [init, ...]``: for each init, a t-SNE map of its backbone's features
    (before fine-tuning: what pretraining made of the images; the first seed's run) of the
    test and shift images, coloured by class and by source, so a reader sees what
    pretraining separates and where the shift sits. Returns (file, caption) pairs."""
    import numpy as np
    import torch

    from medssl.models.backbones import backbone_from_config
    from medssl.options import default_of
    from medssl.report.plots import plot_embedding_map
    from medssl.train.common import initialise_backbone, load_eval_data
    from medssl.train.monitor import model_outputs
    from medssl.train.pretrain import PretrainConfig

    if not p.embedding_maps:
        return []
    figures = []
    seed = p.seeds[0]
    n_test = "test and shift" if "shift" in splits else " and ".join(splits)

    def caption(label: str) -> str:
        return (f"t-SNE map of the {label} backbone's features (before fine-tuning; seed "
                f"{seed}) of up to {MAP_IMAGES} {n_test} images, coloured by class and by "
                "split: source.")  # fmt: skip

    missing = [x for x in p.embedding_maps if not (out_dir / _map_file(x)).is_file()]
    if not missing:  # drawn before (their backbones may be gone since: a copied record)
        return [(_map_file(x), caption(x)) for x in p.embedding_maps]
    jobs = _finetune_jobs(p, seed, out_dir, False)  # the first seed's, with each init's start
    size = jobs[0].config.image_size or 0
    manifest, parts, pixels = load_eval_data(p.data, size, progress=False)
    rows = np.concatenate([parts[s] for s in splits if s in parts.names()])
    rng = np.random.default_rng(0)
    if len(rows) > MAP_IMAGES:
        rows = np.sort(rng.choice(rows, MAP_IMAGES, replace=False))
    where = np.empty(len(manifest), dtype=object)
    for s in splits:
        where[parts[s]] = s
    table = manifest.table.iloc[rows]
    labels = [manifest.class_names[int(t)] for t in manifest.targets[rows]] if (
        manifest.task == "multiclass") else None  # fmt: skip
    for label in p.embedding_maps:
        name = _map_file(label)
        if label not in missing:
            figures.append((name, caption(label)))
            continue
        init = next(i for i in p.inits if i.label == label)
        job = next(j for j in jobs if j.init is init)
        cfg = job.config  # its architecture and init, as the sweep fine-tunes it
        settings = {"backbone": cfg.backbone or default_of(PretrainConfig, "backbone"),
                    "small_stem": cfg.small_stem, "image_size": size,
                    "patch_size": getattr(cfg, "patch_size", 0)}  # fmt: skip
        torch.manual_seed(seed)  # the random init's backbone is the fine-tunes' random start
        backbone, _ = backbone_from_config(settings)
        initialise_backbone(backbone, cfg.init)
        features = model_outputs(backbone, pixels, rows, torch.device("cpu")).numpy()
        colour_by = {"source": [f"{w}: {src}" for w, src in zip(
            where[rows], table["source"], strict=True)]}  # fmt: skip
        if labels is not None:
            colour_by = {"class": labels, **colour_by}
        plot_embedding_map(features, out_dir / name, colour_by, title=f"{label} backbone")
        figures.append((name, caption(label)))
    return figures


def _map_file(label: str) -> str:
    return f"embedding_map_{label}.png"


def _prune(group: list[_Job], chosen: _Job) -> None:
    """``prune: true``: once a group is chosen and evaluated, its runs' training state
    (``checkpoints/last.pt``: weights and optimiser moments, only needed to continue a run)
    and the weights of the candidates not chosen go; logs, configs, metrics, evaluations and
    the chosen ``best.pt`` stay. A pruned run is still complete, so the sweep resumes."""
    from medssl.train.finetune import BEST
    from medssl.train.run import CHECKPOINT

    for job in group:
        (job.run / CHECKPOINT).unlink(missing_ok=True)
        if job is not chosen:
            (job.run / BEST).unlink(missing_ok=True)


def _save_record(p: Protocol, jobs: list[_Job], out_dir: Path, record: Path | None) -> None:
    from medssl.sweep_record import save_record

    if record is None:
        return
    shared, seeds = finished_seeds(p, jobs)
    written, recorded = save_record(out_dir, record, shared, seeds)
    held = f"seeds {', '.join(map(str, recorded))}" if recorded else "no finished seed yet"
    _say(f"record {record}: {written} files updated ({held})")


def run_sweep(
    protocol: dict[str, Any] | str | Path, out_dir: str | Path, progress: bool = True,
    record: str | Path | None = None,
) -> Path:  # fmt: skip
    """Run (or resume) a sweep into ``out_dir`` and return the path of its ``results.csv``.

    ``progress`` controls the per-epoch output of the training runs; the sweep's own
    ``[i/n]`` lines are always printed. ``record``: a folder that keeps the sweep's record
    (:mod:`medssl.sweep_record`): restored into ``out_dir`` first, brought up to date after
    each finished seed, so the sweep resumes from it on a machine without ``out_dir``.
    """
    from medssl.outputs import check_writable_folder
    from medssl.sweep_record import check_record_dir, record_holds, restore_record
    from medssl.train.finetune import FinetuneConfig, finetune
    from medssl.train.pretrain import pretrain

    p = load_protocol(protocol)
    out_dir = Path(out_dir).expanduser().resolve()
    record = Path(record).expanduser().resolve() if record is not None else None
    if record is not None:
        check_record_dir(record, out_dir)
    splits, class_names = _check_splits(p)
    _check_external(p, class_names)
    jobs = plan(p, out_dir, progress)
    check_out(out_dir)
    check_writable_folder("--out", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / CONFIG).is_file() or (out_dir / "checkpoints").is_dir():
        raise MedsslError(f"--out {out_dir} is a run directory, not a sweep folder")
    if record is not None and (copied := restore_record(record, out_dir)):
        _say(f"restored {copied} files from the record {record}")
    (out_dir / "protocol.yaml").write_text(yaml.safe_dump(p.to_dict(), sort_keys=False))

    all_groups = _groups(jobs)
    first = _first_seed_groups(p, all_groups)
    group_of = {job.name: group for group in all_groups for job in group}
    last_of_seed = {j.seed: j for j in jobs if j.kind == "finetune"}
    done = sum(is_complete(j.run) for j in jobs)
    n_ft = sum(j.kind == "finetune" for j in jobs)
    n_trained = sum(  # with finetune_grid_seeds: first, a later seed trains one candidate
        len(g) if p.finetune_grid_seeds == "all" or g[0].seed == p.seeds[0] else 1
        for g in all_groups
    )
    tested = ", ".join([*splits, *(e.split for e in p.external)])
    _say(
        f"sweep: dataset {p.data['dataset']}, {len(jobs) - n_ft} pretraining and {n_trained} "
        f"fine-tuning runs, splits {tested} -> {out_dir}"
    )
    if done:
        _say(f"resuming: {done} of {len(jobs) - n_ft + n_trained} runs are already complete")
    started = time.perf_counter()
    changed = False  # trained or evaluated anything since the tables were last written
    for i, job in enumerate(jobs, 1):
        head = f"[{i}/{len(jobs)}] {job.description}"
        where = f"{p.source}: {job.kind} {job.name}"
        group = group_of.get(job.name, [])
        trained, chosen_on = trained_candidates(p, group, first) if group else ([], job.seed)
        if job.kind == "finetune" and not any(j is job for j in trained):
            _say(f"{head} ... not run: the grid was chosen on seed {p.seeds[0]}")
        elif is_complete(job.run):
            stale = _stale_settings(job, out_dir)
            if stale:
                raise MedsslError(
                    f"{where}: {job.run} holds a finished run made with different settings "
                    f"({', '.join(stale)}); choose another --out or restore the protocol"
                    + _moved_data_hint(job)
                )
            _say(f"{head} ... done before, reused")
        else:
            _say(f"{head} ...")
            t0 = time.perf_counter()
            try:
                with spelling(str):  # the protocol's keys: "batch_size", not "--batch-size"
                    # a supervised pretraining entry is a fine-tune run (FinetuneConfig)
                    supervised = isinstance(job.config, FinetuneConfig)
                    (finetune if supervised else pretrain)(job.config)
            except MedsslError as exc:
                raise MedsslError(f"{where}: {exc}") from None
            _say(f"{head} ... finished in {time.perf_counter() - t0:.0f} s")
            changed = True
            if _is_shared_run(p, job):  # every seed starts from it: record it now
                _save_record(p, jobs, out_dir, record)
        if job.kind == "finetune" and job.last_of_group:
            trained, chosen_on = trained_candidates(p, group, first)  # this group's runs now
            chosen = _select(p, trained, where, chosen_on != job.seed)
            changed |= _evaluate(p, chosen, splits, f"{p.source}: finetune {chosen.name}") > 0
            if p.prune:
                _prune(group, chosen)
        if job is last_of_seed.get(job.seed) and job is not jobs[-1]:
            # a resumed sweep passes finished seeds without redoing their tables and record
            finished = finished_seeds(p, jobs)[1]
            unrecorded = record is not None and not record_holds(
                record, out_dir, finished.get(job.seed, [])
            )
            if changed or unrecorded:
                _say(f"seed {job.seed} finished: the tables and report so far")
                write_outputs(p, out_dir, splits, seeds=sorted(finished))
                _save_record(p, jobs, out_dir, record)
                changed = False
    results, report = write_outputs(p, out_dir, splits)
    _save_record(p, jobs, out_dir, record)
    _say(
        f"sweep finished in {(time.perf_counter() - started) / 60:.1f} min: {results} and {report}"
    )
    return results


def write_outputs(
    p: Protocol, out_dir: Path, splits: list[str], seeds: Collection[int] | None = None
) -> tuple[Path, Path]:
    """(Re)write results.csv, selection.csv, pretraining.csv, paired.csv, the embedding maps
    and the report from the finished runs; returns the paths of results.csv and the report.
    The sweep does this after each seed's fine-tunes too, with ``seeds`` the finished ones,
    so a stopped sweep holds the tables of its finished seeds and nothing of a half-done one
    (whose runs the record does not hold)."""
    from medssl.paired import write_paired
    from medssl.report import write_report

    results = collect_results(p, out_dir, splits, seeds)
    collect_selection(p, out_dir, seeds)
    curves = collect_pretraining(p, out_dir, seeds)
    paired = write_paired(results, out_dir, n_boot=p.n_boot, comparisons=p.compare)
    title = p.title or f"medssl sweep: {p.data['dataset']}"
    maps = draw_embedding_maps(p, out_dir, splits)
    report = write_report(
        results, out_dir, title, _notes(p), paired_csv=paired, pretraining_csv=curves,
        extra_figures=maps,
    )  # fmt: skip
    return results, report
