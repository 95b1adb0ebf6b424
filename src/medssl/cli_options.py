"""Command-line flags from the configuration dataclasses (:mod:`medssl.options`).

The flags of ``pretrain``, ``finetune`` and the data options of every command are made from
the fields that define them (name, help, choices, default); what is read back goes through
the same checks as a ``--config`` file or a sweep protocol. What is only the command line's
lives here or in :mod:`medssl.cli`: ``--config`` itself, ``--quiet`` (``progress``),
``--json``, ``--aug KEY=VALUE`` (``augment_overrides``) and repeatable flags.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any

from medssl.data.adapters import DATASETS, option_names
from medssl.data.spec import SPEC_KEYS, DataSpec, read_spec
from medssl.errors import MedsslError
from medssl.options import (
    Given,
    Setting,
    Where,
    parse_flag_value,
    read,
    read_yaml_mapping,
    settings,
)

#: command-line flags; ``--aug key=value`` names the keys of ``augment_overrides``
FLAGS = Where(flags=True, blocks=(("augment_overrides", Where("--aug ")),))
#: keys a trainer's ``--config`` file may hold besides options: the command line's own
CLI_KEYS = ("quiet", "json")
#: config-file keys of older releases -> today's option
ALIASES = {"shift_source": "shift_sources"}
#: the trainer options that commands without a config class (evaluate, knn) offer too
DATA_EXTRAS = ("cache_dir", "skip_unreadable")


def _base(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and len(args) == 1:
        return args[0], True
    return hint, False


def add_flag(parser: Any, s: Setting, defaults: bool = False, help_text: str = "") -> None:
    """One flag for setting ``s``. Without ``defaults`` an absent flag leaves no attribute
    (argparse.SUPPRESS), so only what the user gave is read back and the dataclass keeps the
    one default."""
    kind, nullable = _base(s.hint)
    kwargs: dict[str, Any] = {
        "dest": s.name,
        "help": help_text or s.help_text(),
        "default": (s.default if not s.required else None) if defaults else argparse.SUPPRESS,
    }
    if kind is bool:
        plain = s.default is False and not nullable
        kwargs["action"] = "store_true" if plain else argparse.BooleanOptionalAction
    else:
        if typing.get_origin(kind) is list:
            kwargs["action"] = "append"
        choices = s.accepted()
        kwargs["metavar"] = s.meta.metavar or (
            "{" + ",".join(map(str, choices)) + "}" if choices else s.name.upper()
        )
    parser.add_argument(s.flag, **kwargs)


def add_option_flags(
    parser: Any, cls: type, skip: tuple[str, ...] = (), only: tuple[str, ...] = ()
) -> None:
    """Flags for the user options of ``cls`` (minus ``skip``, or just ``only``)."""
    for name, s in settings(cls).items():
        if not s.meta.user or s.meta.flag == "" or name in skip or (only and name not in only):
            continue
        add_flag(parser, s)


def add_data_flags(parser: argparse.ArgumentParser, extras: bool = True) -> None:
    """The data options: the spec's own and every dataset's (help says which datasets read
    each); ``extras``: ``--cache-dir`` and ``--skip-unreadable`` for commands without a
    config class (their defaults from :class:`~medssl.train.pretrain.PretrainConfig`)."""
    group = parser.add_argument_group("data")
    add_option_flags(group, DataSpec)
    readers = option_names()
    done: set[str] = set()
    for info in DATASETS.values():
        for name, s in settings(info.options).items():
            if name in done or s.meta.flag == "":
                continue
            done.add(name)
            add_flag(group, s, help_text=f"{', '.join(readers[name])}: {s.help_text()}")
    if extras:
        from medssl.train.pretrain import PretrainConfig

        for name in DATA_EXTRAS:
            add_flag(group, settings(PretrainConfig)[name], defaults=True)


def flag_values(args: argparse.Namespace, classes: tuple[type, ...]) -> dict[str, Any]:
    """The flags the user gave for the options of ``classes``, as a config file would hold
    them (numbers parsed, so both are checked alike)."""
    out: dict[str, Any] = {}
    for cls in classes:
        for name, s in settings(cls).items():
            if s.meta.user and s.meta.flag != "" and hasattr(args, name):
                value = getattr(args, name)
                kind, _ = _base(s.hint)
                if isinstance(value, str) and kind is not str:
                    value = parse_flag_value(value, s.hint)
                out[name] = value
    return out


def _dataset_option_classes() -> tuple[type, ...]:
    return tuple(dict.fromkeys(info.options for info in DATASETS.values()))


def flat_data_options() -> list[str]:
    """The dataset options that are flags and config-file keys of their own (those without
    a flag, like the synthetic data's render size, are only set in a protocol's or the
    API's ``options``)."""
    return [
        name
        for cls in _dataset_option_classes()
        for name, s in settings(cls).items()
        if s.meta.flag != ""
    ]


def data_given(args: argparse.Namespace) -> Given:
    """The data flags the user gave (keys of the spec and of the datasets' options)."""
    return Given(flag_values(args, (DataSpec, *_dataset_option_classes())), FLAGS)


def spec_from(given: Given) -> DataSpec:
    """A checked :class:`DataSpec` from data keys (the spec's and the datasets' options)."""
    return read_spec(given.only(SPEC_KEYS), given.only(flat_data_options()))


def load_config_file(path: str | None) -> dict[str, Any]:
    """Options from a YAML/JSON config file, keyed by option name (dashes or underscores)."""
    if not path:
        return {}
    where = f"--config {path}"
    data = read_yaml_mapping(path, where, "option names to values", allow_empty=True)
    out: dict[str, Any] = {}
    written: dict[str, str] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        name = ALIASES.get(name, name)
        if name in written:
            raise MedsslError(f"{where}: {written[name]} and {key} are the same option; keep one")
        out[name], written[name] = value, str(key)
    return out


def trainer_config(cls: type, args: argparse.Namespace) -> tuple[Any, Given]:
    """``cls`` (a trainer's config) from its ``--config`` file and flags (flags win).

    Each source is checked on its own, so a message names the option as that source wrote
    it (``--epochs`` or ``--config run.yaml: epochs``). Returns the config and every given
    option with its origin, for :func:`medssl.options.spelling` (library messages).
    """
    path = getattr(args, "config", None)
    file = Given(load_config_file(path), Where(f"--config {path}: ") if path else FLAGS)
    own = [k for k, s in settings(cls).items() if s.meta.user]
    data_keys = [*SPEC_KEYS, *flat_data_options()]
    for key in file:
        if key not in own and key not in data_keys and key not in CLI_KEYS:
            read(cls, file.only([key]))  # raises: names the key, suggests a setting
    flags = Given(flag_values(args, (cls,)), FLAGS)
    if getattr(args, "aug", None):
        from medssl.augment import parse_overrides

        flags.set("augment_overrides", parse_overrides(args.aug), FLAGS)
    values = read(cls, file.only(own))
    for key, value in read(cls, flags.only(own)).items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            value = {**values[key], **value}  # --aug adds to the file's augment block
        values[key] = value
    data = file.only(data_keys)
    for key, value in data_given(args).values.items():
        data.set(key, value, FLAGS)
    names = Given()
    for source in (file, flags, data):
        for key in source:
            names.set(key, source.get(key), source.where_of(key))
    if "out" not in values:
        raise MedsslError(f"{names.name('out')} is required (a flag, or a key of --config)")
    values["out"] = str(Path(values["out"]).expanduser().resolve())
    for key in CLI_KEYS:  # the file's --quiet / --json
        if key in file and not isinstance(file.get(key), bool):
            raise MedsslError(f"{file.name(key)}: expected true or false, got {file.get(key)!r}")
        setattr(args, key, bool(getattr(args, key, False) or file.get(key, False)))
    config = cls(data=_data_of(cls, data, names, values), progress=not args.quiet, **values)
    return config, names


def _data_of(cls: type, data: Given, names: Given, values: dict[str, Any]) -> dict[str, Any]:
    """The config's data spec. Without a dataset, a trainer that inherits its data from an
    ``--init`` run (``inherits_data``: finetune) gets the data keys that were given (the
    rest its ``resolved`` takes from the run); any other is told that the dataset is needed."""
    if "dataset" in data:
        return spec_from(data).to_dict()
    inherits = getattr(cls, "inherits_data", False)
    if not inherits or values.get("init", "random") in ("", "random"):
        unless = f", or {names.name('init')} a medssl run to inherit it from" if inherits else ""
        raise MedsslError(
            f"{names.name('dataset')} is required (a flag, or a key of --config{unless})"
        )
    partial: dict[str, Any] = {k: data.get(k) for k in SPEC_KEYS if k in data}
    options = {k: data.get(k) for k in flat_data_options() if k in data}
    return {**partial, "options": options} if options else partial
