"""``medssl sweep``: pretraining runs, then init x label fraction x seed fine-tunes, one table.

A protocol (a YAML file or a dict) names the data, the pretraining runs to make and the
fine-tuning grid::

    data: {dataset: ham10000, root: ../shared/data/ham10000}   # a DataSpec dict
    image_size: 32
    backbone: resnet18
    pretrain:                       # named pretraining runs, made first
      simclr: {method: simclr, epochs: 20, batch_size: 256}
      micle:  {method: micle,  epochs: 20, batch_size: 256}
    inits: [random, simclr, micle]  # pretrain names, "random", a checkpoint/run path
                                    # (label: its file stem) or a mapping {label: path}
    label_fractions: [0.1, 1.0]
    seeds: [0, 1, 2]
    finetune: {epochs: 15, batch_size: 128, lr: 0.001}
    splits: [test, shift]
    n_boot: 1000

Layout of ``OUT/``: ``protocol.yaml`` (the protocol as resolved, for the record),
``pretrain/<name>/`` and ``finetune/<init>-f<fraction>-s<seed>/`` run directories (each
evaluation writes ``eval_<split>.json`` and ``predictions_<split>.npz`` into its run),
``results.csv`` and the report (:func:`medssl.report.write_report`).

Everything is resumable: a finished run is skipped, an unfinished one continues from its
checkpoint, an evaluation whose ``eval_<split>.json`` exists is not redone, and
``results.csv`` is rebuilt from the evaluation files, so running a sweep again (or after a
crash, or with more seeds) only does what is missing. A finished run made with a different
configuration is never silently reused: that is an error naming the differing settings.
One pretraining run serves every fine-tuning seed (as in the paper); the seeds vary the
labelled subset, the head initialisation and the data order.
"""

from __future__ import annotations

import csv
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medssl.data.spec import DataSpec
from medssl.errors import MedsslError
from medssl.train.run import (
    CONFIG,
    RESUMABLE_CHANGES,
    field_default,
    field_defaults,
    is_complete,
    read_config,
)

RESULT_COLUMNS = [
    "dataset", "init", "label_fraction", "seed", "split", "n", "accuracy",
    "balanced_accuracy", "auc_macro", "auc_mean_selected", "run",
]  # fmt: skip
PROTOCOL_KEYS = {
    "data", "image_size", "backbone", "small_stem", "pretrain", "inits", "label_fractions",
    "seeds", "finetune", "splits", "n_boot", "mean_over", "device", "title", "notes",
}  # fmt: skip
REQUIRED_KEYS = ("data", "inits", "label_fractions")
#: config keys a sweep sets itself; a protocol's pretrain/finetune sections may not
_PRETRAIN_RESERVED = {"data", "out", "resume", "progress"}
_FINETUNE_RESERVED = {
    "data", "out", "init", "label_fraction", "seed", "resume", "progress", "class_names", "task",
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
class Protocol:
    """A validated sweep protocol (paths resolved, defaults filled)."""

    data: dict[str, Any]
    inits: list[Init]
    label_fractions: list[float]
    seeds: list[int] = field(default_factory=lambda: [0])
    image_size: int = 64
    backbone: str = "resnet18"
    small_stem: bool = False
    pretrain: dict[str, dict[str, Any]] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)
    n_boot: int = 1000
    mean_over: list[str] | None = None
    device: str = "auto"
    title: str = ""
    notes: str = ""
    source: str = "protocol"  # where it came from, for error messages

    def to_dict(self) -> dict[str, Any]:
        """The protocol as plain YAML-able data (inits back in their written form)."""
        out = asdict(self)
        out.pop("source")
        out["inits"] = [
            i.label if i.kind == "random" or (i.kind == "pretrain" and i.label == i.target)
            else {i.label: i.target}
            for i in self.inits
        ]  # fmt: skip
        return out


# --------------------------------------------------------------------------- validation


def _fail(source: str, key: str, message: str) -> MedsslError:
    return MedsslError(f"{source}: {key}: {message}")


def _read_protocol_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise MedsslError(f"protocol {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise MedsslError(f"protocol {path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise MedsslError(f"protocol {path}: expected a mapping of protocol keys to values")
    return data


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


def _type_ok(value: Any, default: Any) -> bool:
    """Whether ``value`` fits a config field whose default is ``default``."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(value, bool):
        return default is None
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, str | dict | list):
        return isinstance(value, type(default))
    return True  # None defaults (optional settings) take any value


def _check_config_keys(
    values: Any, cls: type, reserved: set[str], source: str, key: str
) -> dict[str, Any]:
    """``values`` as a dict of ``cls`` fields, each of the type of the field's default."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise _fail(source, key, f"expected a mapping of settings, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    allowed = sorted(set(known) - reserved)
    for name, value in values.items():
        if name not in known or name in reserved:
            why = "is set by the sweep" if name in reserved else "is not a setting"
            raise _fail(source, f"{key}.{name}", f"{why}; allowed: {', '.join(allowed)}")
        default = field_default(known[name])
        if value is not None and not _type_ok(value, default):
            kind = type(default).__name__
            raise _fail(source, f"{key}.{name}", f"expected {kind}, got {value!r}")
    return dict(values)


def _resolve_path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


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
        raw, source, base = _read_protocol_file(path), f"protocol {path}", path.resolve().parent
    unknown = sorted(str(k) for k in raw if k not in PROTOCOL_KEYS)
    if unknown:
        raise MedsslError(
            f"{source}: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(PROTOCOL_KEYS))}"
        )
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise MedsslError(f"{source}: missing required key {key}")

    # data: a DataSpec dict
    data = raw["data"]
    if not isinstance(data, dict) or "dataset" not in data:
        raise _fail(source, "data", "expected a mapping with dataset (and root)")
    spec_keys = {f.name for f in fields(DataSpec)}
    bad = sorted(set(data) - spec_keys)
    if bad:
        raise _fail(source, f"data.{bad[0]}", f"not a data setting; allowed: {sorted(spec_keys)}")
    data = dict(data)
    data.setdefault("root", "")
    if data["root"]:
        data["root"] = _resolve_path(str(data["root"]), base)
    try:
        data = DataSpec.from_dict(data).to_dict()
    except TypeError as exc:
        raise _fail(source, "data", str(exc)) from None
    from medssl.data.adapters import ADAPTERS, NO_ROOT

    if data["dataset"] not in ADAPTERS:
        raise _fail(
            source, "data.dataset", f"{data['dataset']!r} is not one of {', '.join(ADAPTERS)}"
        )
    if not data["root"] and data["dataset"] not in NO_ROOT:
        raise _fail(source, "data.root", f"required with dataset {data['dataset']}")

    image_size = _int(raw.get("image_size", 64), source, "image_size", minimum=8)
    backbone = raw.get("backbone", "resnet18")
    if not isinstance(backbone, str) or not backbone:
        raise _fail(source, "backbone", f"expected a backbone name, got {backbone!r}")
    small_stem = raw.get("small_stem", False)
    if not isinstance(small_stem, bool):
        raise _fail(source, "small_stem", f"expected true or false, got {small_stem!r}")

    pretrain_raw = raw.get("pretrain") or {}
    if not isinstance(pretrain_raw, dict):
        raise _fail(source, "pretrain", "expected a mapping {name: settings}")
    pretrain: dict[str, dict[str, Any]] = {}
    for name, settings in pretrain_raw.items():
        name = str(name)
        if not _LABEL.match(name) or name == "random":
            raise _fail(source, f"pretrain.{name}", "names must be letters, digits, _.+- "
                        "and not 'random'")  # fmt: skip
        settings = _check_config_keys(
            settings, PretrainConfig, _PRETRAIN_RESERVED, source, f"pretrain.{name}"
        )
        if isinstance(settings.get("init"), str) and settings["init"] not in ("", "random"):
            settings["init"] = _resolve_path(settings["init"], base)
        pretrain[name] = settings

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
    seeds = [_int(s, source, "seeds", 0) for s in _list(raw.get("seeds", [0]), source, "seeds")]
    if len(set(seeds)) != len(seeds):
        raise _fail(source, "seeds", "a seed appears twice")

    finetune = _check_config_keys(
        raw.get("finetune"), FinetuneConfig, _FINETUNE_RESERVED, source, "finetune"
    )
    splits = raw.get("splits") or []
    splits = [str(s) for s in _list(splits, source, "splits")] if splits else []
    if len(set(splits)) != len(splits):
        raise _fail(source, "splits", "a split appears twice")
    if any(not _LABEL.match(s) for s in splits):
        raise _fail(source, "splits", f"{splits} are not split names (test, shift, val)")
    n_boot = _int(raw.get("n_boot", 1000), source, "n_boot", minimum=0)
    mean_over = raw.get("mean_over")
    if mean_over is not None:
        mean_over = [str(m) for m in _list(mean_over, source, "mean_over")]
    device = str(raw.get("device", "auto"))
    title, notes = str(raw.get("title") or ""), str(raw.get("notes") or "")
    return Protocol(
        data=data, inits=inits, label_fractions=fractions, seeds=seeds, image_size=image_size,
        backbone=backbone, small_stem=small_stem, pretrain=pretrain, finetune=finetune,
        splits=splits, n_boot=n_boot, mean_over=mean_over, device=device, title=title,
        notes=notes, source=source,
    )  # fmt: skip


# --------------------------------------------------------------------------- planning


def fraction_name(fraction: float) -> str:
    """0.1 -> '0.1', 1.0 -> '1', 0.25 -> '0.25' (as it appears in run directory names)."""
    return f"{fraction:g}"


@dataclass
class _Job:
    kind: str  # "pretrain" or "finetune"
    name: str  # run directory name
    description: str
    config: Any  # PretrainConfig or FinetuneConfig
    init: Init | None = None
    fraction: float = 1.0
    seed: int = 0

    @property
    def run(self) -> Path:
        return Path(self.config.out)


def _pretrain_config(p: Protocol, name: str, out_dir: Path, progress: bool) -> Any:
    from medssl.train.pretrain import PretrainConfig

    settings = {
        "image_size": p.image_size, "backbone": p.backbone, "small_stem": p.small_stem,
        "device": p.device, **p.pretrain[name],
    }  # fmt: skip
    return PretrainConfig(
        data=p.data,
        out=str(out_dir / "pretrain" / name),
        progress=progress,
        resume=True,
        **settings,
    )


def _finetune_config(
    p: Protocol, init: Init, fraction: float, seed: int, out_dir: Path, progress: bool
) -> Any:
    from medssl.train.finetune import FinetuneConfig

    backbone, small_stem = p.backbone, p.small_stem
    if init.kind == "pretrain":  # fine-tune the architecture that was pretrained
        entry = p.pretrain[init.target]
        backbone = entry.get("backbone", p.backbone)
        small_stem = bool(entry.get("small_stem", p.small_stem))
        target = str(out_dir / "pretrain" / init.target)
    elif init.kind == "path":
        target = init.target
        if Path(target).is_dir() and (Path(target) / CONFIG).is_file():
            source = read_config(target)
            backbone = source.get("backbone", backbone)
            small_stem = bool(source.get("small_stem", small_stem))
    else:
        target = "random"
    settings = {
        "image_size": p.image_size, "backbone": backbone, "small_stem": small_stem,
        "device": p.device, **p.finetune,
    }  # fmt: skip
    name = f"{init.label}-f{fraction_name(fraction)}-s{seed}"
    return FinetuneConfig(
        data=p.data, out=str(out_dir / "finetune" / name), init=target,
        label_fraction=fraction, seed=seed, progress=progress, resume=True, **settings,
    )  # fmt: skip


def plan(p: Protocol, out_dir: Path, progress: bool = True) -> list[_Job]:
    """Every training job of the sweep, pretraining first, in the order they run.

    Seeds are the outer loop of the fine-tunes, so a sweep stopped part-way already holds
    the complete init x label-fraction comparison for its first seeds.
    """
    jobs = [
        _Job("pretrain", name, f"pretrain {name} ({cfg.method}, {cfg.epochs} epochs)", cfg)
        for name in p.pretrain
        for cfg in [_pretrain_config(p, name, out_dir, progress)]
    ]
    for seed in p.seeds:
        for fraction in p.label_fractions:
            for init in p.inits:
                cfg = _finetune_config(p, init, fraction, seed, out_dir, progress)
                desc = f"finetune {init.label} f={fraction_name(fraction)} seed={seed}"
                jobs.append(_Job("finetune", Path(cfg.out).name, desc, cfg, init, fraction, seed))
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


# --------------------------------------------------------------------------- running


def _say(message: str) -> None:
    print(message, flush=True)


def _check_splits(p: Protocol) -> list[str]:
    """The splits to evaluate (default: test, plus shift where the data has one)."""
    try:
        _, splits = DataSpec.from_dict(p.data).load()
    except MedsslError as exc:
        raise MedsslError(f"{p.source}: data: {exc}") from None
    available = splits.names()
    if not p.splits:
        return [s for s in ("test", "shift") if s in available]
    missing = [s for s in p.splits if s not in available]
    if missing:
        raise _fail(
            p.source, "splits",
            f"{', '.join(missing)} not in this dataset's splits ({', '.join(available)}); "
            "a shift split needs data.shift_sources (HAM10000 and synthetic have one by default)",
        )  # fmt: skip
    return list(p.splits)


def _metric(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def collect_results(p: Protocol, out_dir: Path, splits: list[str]) -> Path:
    """(Re)write ``results.csv`` from the evaluation files of the protocol's runs."""
    import json

    rows = []
    for job in plan(p, out_dir, progress=False):
        if job.kind != "finetune":
            continue
        for split in splits:
            path = job.run / f"eval_{split}.json"
            if not path.is_file():
                continue
            metrics = json.loads(path.read_text())
            rows.append({
                "dataset": metrics.get("dataset", p.data["dataset"]), "init": job.init.label,
                "label_fraction": job.fraction, "seed": job.seed, "split": split,
                "n": metrics.get("n", ""),
                **{k: _metric(metrics.get(k)) for k in RESULT_COLUMNS[6:10]},
                "run": job.run.relative_to(out_dir).as_posix(),
            })  # fmt: skip
    results = out_dir / "results.csv"
    tmp = results.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(results)
    return results


def _notes(p: Protocol) -> str:
    lines = [f"Protocol: {p.source}. Backbone {p.backbone}, images {p.image_size} px."]
    for name, entry in p.pretrain.items():
        settings = ", ".join(f"{k} {v}" for k, v in entry.items())
        lines.append(f"Pretraining {name}: {settings or 'defaults'}.")
    ft = ", ".join(f"{k} {v}" for k, v in p.finetune.items())
    lines.append(
        f"Fine-tuning: {ft or 'defaults'}; seeds {', '.join(map(str, p.seeds))}; "
        f"case-level bootstrap resamples per evaluation: {p.n_boot}."
    )
    text = "\n".join(lines)
    return f"{p.notes.strip()}\n\n{text}" if p.notes.strip() else text


def run_sweep(
    protocol: dict[str, Any] | str | Path, out_dir: str | Path, progress: bool = True
) -> Path:
    """Run (or resume) a sweep into ``out_dir`` and return the path of its ``results.csv``.

    ``progress`` controls the per-epoch output of the training runs; the sweep's own
    ``[i/n]`` lines are always printed.
    """
    from medssl.predict import evaluate_run
    from medssl.report import write_report
    from medssl.train.finetune import finetune
    from medssl.train.pretrain import pretrain

    p = load_protocol(protocol)
    out_dir = Path(out_dir).expanduser().resolve()
    splits = _check_splits(p)
    jobs = plan(p, out_dir, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / CONFIG).is_file() or (out_dir / "checkpoints").is_dir():
        raise MedsslError(f"--out {out_dir} is a run directory, not a sweep folder")
    (out_dir / "protocol.yaml").write_text(yaml.safe_dump(p.to_dict(), sort_keys=False))

    done = sum(is_complete(j.run) for j in jobs)
    n_ft = sum(j.kind == "finetune" for j in jobs)
    _say(
        f"sweep: dataset {p.data['dataset']}, {len(jobs) - n_ft} pretraining and {n_ft} "
        f"fine-tuning runs, splits {', '.join(splits)} -> {out_dir}"
    )
    if done:
        _say(f"resuming: {done} of {len(jobs)} runs are already complete")
    started = time.perf_counter()
    for i, job in enumerate(jobs, 1):
        head = f"[{i}/{len(jobs)}] {job.description}"
        where = f"{p.source}: {job.kind} {job.name}"
        if is_complete(job.run):
            stale = _stale_settings(job, out_dir)
            if stale:
                raise MedsslError(
                    f"{where}: {job.run} holds a finished run made with different settings "
                    f"({', '.join(stale)}); choose another --out or restore the protocol"
                )
            _say(f"{head} ... done before, reused")
        else:
            _say(f"{head} ...")
            t0 = time.perf_counter()
            try:
                (pretrain if job.kind == "pretrain" else finetune)(job.config)
            except MedsslError as exc:
                raise MedsslError(f"{where}: {exc}") from None
            _say(f"{head} ... finished in {time.perf_counter() - t0:.0f} s")
        if job.kind != "finetune":
            continue
        for split in splits:
            if (job.run / f"eval_{split}.json").is_file():
                continue
            t0 = time.perf_counter()
            try:
                m = evaluate_run(
                    job.run, split, n_boot=p.n_boot, mean_over=p.mean_over, device=p.device
                )
            except MedsslError as exc:
                raise MedsslError(f"{where}: evaluate {split}: {exc}") from None
            score = ", ".join(
                f"{k} {m[k]:.3f}" for k in ("accuracy", "auc_macro", "auc_mean_selected")
                if isinstance(m.get(k), float)
            )  # fmt: skip
            _say(f"    evaluated on {split}: {score} ({time.perf_counter() - t0:.0f} s)")
    results = collect_results(p, out_dir, splits)
    title = p.title or f"medssl sweep: {p.data['dataset']}"
    report = write_report(results, out_dir, title, _notes(p))
    _say(
        f"sweep finished in {(time.perf_counter() - started) / 60:.1f} min: {results} and {report}"
    )
    return results
