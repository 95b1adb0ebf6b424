"""User options: defined once, on dataclass fields; read the same way from every source.

A configuration dataclass (:class:`~medssl.train.pretrain.PretrainConfig`,
:class:`~medssl.train.finetune.FinetuneConfig`, :class:`~medssl.data.spec.DataSpec`, a
dataset's options, :class:`~medssl.augment.AugmentConfig`) declares each option with
:func:`option`: its default, help, choices, range and flag live with the field. From that one
definition

- the command line builds its flags (``cli.py``),
- ``--config`` files, sweep protocols and the Python API are validated by :func:`read` /
  :func:`check_fields`, and
- messages name the option as the user wrote it: ``--epochs`` for a flag,
  ``--config run.yaml: epochs`` for a key of a config file, ``protocol p.yaml:
  finetune.epochs`` for a protocol (:class:`Where`, :class:`Given`).

Library code that reports a problem with an option after reading (an ``--init`` path that
does not exist, a batch larger than the data) names it with :func:`spelled`, which follows
how the current command was given its options (:func:`spelling`).

This module imports nothing of medssl but its errors: every layer may use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field
from functools import cache
from typing import Any

from medssl.errors import MedsslError

__all__ = [
    "MAX_SEED",
    "Given",
    "Option",
    "Setting",
    "Where",
    "check_fields",
    "check_seed",
    "default_of",
    "option",
    "parse_flag_value",
    "parse_yaml",
    "read",
    "read_text",
    "read_yaml_mapping",
    "settings",
    "spelled",
    "spelling",
]


@dataclass(frozen=True)
class Option:
    """What a field means to a user (the field's type and default give the rest)."""

    help: str = ""
    choices: tuple[Any, ...] = ()
    minimum: float | None = None  #: inclusive
    above: float | None = None  #: exclusive lower bound
    maximum: float | None = None  #: inclusive
    #: the command-line flag; None: ``--`` + the name with dashes; "": no flag of its own
    flag: str | None = None
    #: False: medssl fills it (never a flag, a config-file key or a protocol key)
    user: bool = True
    #: a dict field whose keys and values are the options of this dataclass
    nested: type | None = None
    metavar: str | None = None


#: The largest seed: what every generator medssl seeds takes, with room to spare
#: (``torch.manual_seed`` overflows at 2**64, numpy's legacy seeding at 2**32, and fine-tuning
#: seeds each epoch's sampler with ``seed * 1_000_003 + epoch``). Every seed option's maximum.
MAX_SEED = 2**32 - 1


def option(default: Any = MISSING, *, factory: Any = MISSING, **meta: Any) -> Any:
    """A dataclass field that is a user option: its one default plus :class:`Option` metadata.

    The default is always valid, even outside ``choices`` or the range: it is how a field
    says "automatic" (``""``, ``0`` or None, explained in its help).
    """
    return field(default=default, default_factory=factory, metadata={"option": Option(**meta)})


@dataclass(frozen=True)
class Setting:
    """One field of a configuration dataclass, as users see it."""

    name: str
    hint: Any  #: the field's type (resolved annotation)
    default: Any  #: MISSING for a required field
    meta: Option

    @property
    def flag(self) -> str:
        return self.meta.flag if self.meta.flag is not None else "--" + self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def accepted(self) -> tuple[Any, ...]:
        """The values ``choices`` allows, led by a default word outside them (``auto``):
        what a flag's help and a refusal list."""
        choices = self.meta.choices
        default = self.default
        if choices and isinstance(default, str) and default and default not in choices:
            return (default, *choices)
        return choices

    def help_text(self) -> str:
        """The help, with the default unless the help explains it (an automatic choice)."""
        text = self.meta.help
        shown = self.default is not MISSING and self.default not in (None, "", {}, [], ())
        if shown and not isinstance(self.default, bool) and "default" not in text:
            text = f"{text} (default: {self.default})" if text else f"default: {self.default}"
        return text


@cache
def settings(cls: type) -> dict[str, Setting]:
    """Every field of the dataclass ``cls`` as a :class:`Setting` (fields without
    :func:`option` metadata count as user options without help)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Setting] = {}
    for f in dataclasses.fields(cls):
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        out[f.name] = Setting(f.name, hints[f.name], default, f.metadata.get("option", Option()))
    return out


def default_of(cls: type, name: str) -> Any:
    """The one default of option ``name`` of ``cls`` (for code that falls back to it)."""
    return settings(cls)[name].default


# --------------------------------------------------------------------------- naming


#: How library messages spell an option; set by the front end that read the options.
_SPELLING: contextvars.ContextVar[Callable[[str], str] | None] = contextvars.ContextVar(
    "medssl_option_spelling", default=None
)


def _as_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def read_text(path: str | os.PathLike[str], where: str) -> str:
    """The UTF-8 text of the file ``path``; a file that cannot be read or is not UTF-8 is
    one line starting with ``where`` (``--config run.yaml``, ``class mapping m.yaml``)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise MedsslError(f"{where}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MedsslError(
            f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(f"{key!r} is written twice (lines {first} and {again}); keep one")


@cache
def _unique_key_loader() -> type:
    """A ``yaml.SafeLoader`` whose mappings refuse a key written twice (YAML's own rule,
    which PyYAML does not enforce: it keeps the last). Merge keys (``<<: *base``) still
    override."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        if key in seen:
                            raise _DuplicateKey(key, seen[key], line)
                        seen[key] = line
                    except TypeError:  # an unhashable key: SafeLoader says so
                        break
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def parse_yaml(text: str, where: str) -> Any:
    """The YAML (or JSON) document ``text``; invalid YAML or a mapping key written twice is
    one line starting with ``where``. The one YAML parser for files users write."""
    import yaml

    try:
        return yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader
    except _DuplicateKey as exc:
        raise MedsslError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise MedsslError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None


def read_yaml_mapping(
    path: str | os.PathLike[str], where: str, holds: str, allow_empty: bool = False
) -> dict[str, Any]:
    """The mapping in the YAML (or JSON) file ``path``; every problem is one line starting
    with ``where`` (``--config run.yaml``, ``protocol p.yaml``) and a file that is not a
    mapping is said to need ``holds`` (what its keys and values are). ``allow_empty``: an
    empty file reads as ``{}``."""
    data = parse_yaml(read_text(path, where), where)
    if data is None and allow_empty:
        return {}
    if not isinstance(data, dict):
        raise MedsslError(f"{where}: expected a mapping of {holds}")
    return data


def spelled(name: str) -> str:
    """Option ``name`` as the user gave it: ``--batch-size`` (a flag, and the default),
    ``batch_size`` (a protocol), ``--config run.yaml: batch_size`` (a config file key)."""
    spell = _SPELLING.get()
    if spell is None:
        return _as_flag(name)
    token = _SPELLING.set(None)  # a spelling that falls back on spelled() gets the flag
    try:
        return spell(name)
    finally:
        _SPELLING.reset(token)


@contextlib.contextmanager
def spelling(spell: Callable[[str], str]) -> Iterator[None]:
    """Within the block, :func:`spelled` names options with ``spell``."""
    token = _SPELLING.set(spell)
    try:
        yield
    finally:
        _SPELLING.reset(token)


@dataclass(frozen=True)
class Where:
    """Where options were written, to name them in messages.

    ``Where(flags=True)``: command-line flags (``--epochs``). ``Where("--config run.yaml: ")``:
    keys of a file (``--config run.yaml: epochs``); :meth:`inside` names the keys of a block
    (``--config run.yaml: augment.blur_p``). ``blocks`` gives a block its own naming (the
    command line writes ``augment_overrides`` as ``--aug blur_p=0``).
    """

    prefix: str = ""
    flags: bool = False
    blocks: tuple[tuple[str, Where], ...] = ()
    fixed: str = ""  #: the name of a value that was written under another key

    def name(self, key: str, setting: Setting | None = None) -> str:
        if self.fixed:
            return self.fixed
        if self.flags:
            return setting.flag if setting is not None and setting.meta.flag else _as_flag(key)
        return f"{self.prefix}{key}"

    def inside(self, key: str) -> Where:
        for name, where in self.blocks:
            if name == key:
                return where
        return Where(f"{self.prefix}{key}.")


class Given:
    """Option values as a user gave them, each with where it was written.

    Later :meth:`update` calls win (command-line flags over a config file). A key that was
    not given is named as a key of the same place (the constructor's ``where``), else as the
    current :func:`spelled` would name it.
    """

    def __init__(self, values: Mapping[str, Any] | None = None, where: Where | None = None):
        self.values: dict[str, Any] = {}
        self.where: dict[str, Where | None] = {}
        self.base = where
        if values:
            self.update(values, where)

    def update(self, values: Mapping[str, Any], where: Where | None) -> None:
        for key, value in values.items():
            self.values[str(key)] = value
            self.where[str(key)] = where

    def set(self, key: str, value: Any, where: Where | None) -> None:
        self.update({key: value}, where)

    def pop(self, key: str) -> Any:
        self.where.pop(key, None)
        return self.values.pop(key)

    def only(self, keys: Any) -> Given:
        """The values of ``keys`` (with their origins)."""
        out = Given(where=self.base)
        for key in self.values:
            if key in keys:
                out.values[key], out.where[key] = self.values[key], self.where[key]
        return out

    def where_of(self, key: str) -> Where | None:
        return self.where.get(key)

    def name(self, key: str, setting: Setting | None = None) -> str:
        where = self.where.get(key, self.base)
        return where.name(key, setting) if where is not None else spelled(key)

    def __contains__(self, key: object) -> bool:
        return key in self.values

    def __len__(self) -> int:
        return len(self.values)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.values))


# --------------------------------------------------------------------------- checking


class _Bad(Exception):
    """A value that does not fit; the message lacks the option's name."""


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return inner[0], True
    return hint, False


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` (ints stay ints, numbers become floats, a comma-
    separated string is a list of strings), or :class:`_Bad`."""
    hint, nullable = _optional(hint)
    if value is None:
        if nullable or hint is Any:
            return None
        raise _Bad(f"expected {_kind(hint)}, got null")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Bad(f"expected true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Bad(f"expected an integer, got {_show(value)}")
    if hint is float:
        number = value
        if isinstance(value, str):  # YAML reads 1e-3 as a string; so does the command line
            try:
                number = float(value)
            except ValueError:
                raise _Bad(f"expected a number, got {_show(value)}") from None
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise _Bad(f"expected a number, got {_show(value)}")
        if not math.isfinite(number):
            raise _Bad(f"expected a finite number, got {_show(value)}")
        return float(number)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # the Python API may pass paths
            return os.fspath(value)
        raise _Bad(f"expected a string, got {_show(value)}")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        item = args[0] if args else Any
        if isinstance(value, str) and item is str:
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise _Bad(f"expected a list, got {_show(value)}")
        return [_coerce(v, item) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Bad(f"expected a mapping, got {_show(value)}")
        item = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, item) for k, v in value.items()}
    return value


def _kind(hint: Any) -> str:
    hint, _ = _optional(hint)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    return {list: "a list", dict: "a mapping"}.get(typing.get_origin(hint), "a value")


def _check_value(s: Setting, value: Any) -> Any:
    """The value of setting ``s``, type-converted and checked against choices and range."""
    coerced = _coerce(value, s.hint)
    if coerced is None or (s.default is not MISSING and coerced == s.default):
        return coerced
    m = s.meta
    if m.choices and coerced not in m.choices:
        raise _Bad(f"{_show(value)} is not one of {', '.join(map(str, s.accepted()))}")
    if isinstance(coerced, int | float) and not isinstance(coerced, bool):
        if m.minimum is not None and coerced < m.minimum:
            raise _Bad(f"must be at least {_number(m.minimum)}, got {_show(value)}")
        if m.above is not None and not coerced > m.above:
            raise _Bad(f"must be greater than {_number(m.above)}, got {_show(value)}")
        if m.maximum is not None and coerced > m.maximum:
            raise _Bad(f"must be at most {_number(m.maximum)}, got {_show(value)}")
    return coerced


def _unknown(name: str, key: str, known: list[str]) -> MedsslError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"settings: {', '.join(sorted(known))}"
    return MedsslError(f"{name}: is not a setting; {hint}")


def read(
    cls: type,
    given: Given,
    reserved: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The values of ``given`` as options of ``cls``: known, user-settable, of the field's
    type, within choices and range. The first problem is a one-line :class:`MedsslError`
    naming the option as it was written.

    ``reserved``: keys the caller sets itself (a sweep sets ``out``), each with the reason.
    A dataclass may expand values first (``__expand_options__(given)``, e.g. an ``augment``
    block into a preset and overrides).
    """
    expand = getattr(cls, "__expand_options__", None)
    if expand is not None:
        expand(given)
    known = settings(cls)
    reserved = reserved or {}
    allowed = [k for k, s in known.items() if s.meta.user and k not in reserved]
    out: dict[str, Any] = {}
    for key in given:
        s = known.get(key)
        if key in reserved:
            raise MedsslError(f"{given.name(key, s)}: {reserved[key]}")
        if s is None or not s.meta.user:
            raise _unknown(given.name(key, s), key, allowed)
        out[key] = check(s, given.get(key), given.name(key, s), given.where_of(key))
    return out


def check(s: Setting, value: Any, name: str, where: Where | None = None) -> Any:
    """One value of setting ``s`` (named ``name`` in a message), checked and converted."""
    if s.meta.nested is not None and isinstance(value, Mapping):
        inner = where.inside(s.name) if where is not None else Where(f"{name}.")
        return read(s.meta.nested, Given(value, inner))
    try:
        return _check_value(s, value)
    except _Bad as exc:
        raise MedsslError(f"{name}: {exc}") from None


def check_fields(config: Any, skip: tuple[str, ...] = ()) -> None:
    """Check every field of a configuration object (the Python API builds them directly),
    naming options with :func:`spelled`, and store each value in its field's type (a path
    object as a string, an integer learning rate as a float)."""
    for name, s in settings(type(config)).items():
        if name not in skip:
            setattr(config, name, check(s, getattr(config, name), spelled(name)))


def check_seed(value: Any, name: str) -> int:
    """A seed given outside a configuration dataclass (``medssl knn --seed``, a protocol's
    ``seeds``): an integer from 0 to :data:`MAX_SEED`, else one line naming it ``name``."""
    s = Setting("seed", int, MISSING, Option(minimum=0, maximum=MAX_SEED))
    return check(s, value, name)


def parse_flag_value(text: str, hint: Any) -> Any:
    """A command-line string as a config file would hold it, so both read alike: numbers
    for number fields (``1.5`` stays a float, and an integer option then says so), the
    string itself otherwise."""
    inner, nullable = _optional(hint)
    if nullable and text.strip().lower() in ("none", "null"):
        return None
    if inner in (int, float):
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
    if inner is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
    return text
