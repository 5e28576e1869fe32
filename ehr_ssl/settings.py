"""Typed settings machinery: dataclasses built from TOML tables and overrides, with checks.

A setting is declared once, as a dataclass field with its type, default, docstring and check
(`ehr_ssl.config`); this module turns nested dicts (a TOML file, "section.key" overrides from
the command line) into those dataclasses, rejecting unknown keys and wrong types with one clear
line, and reads each field's docstring so that help text comes from the declaration too.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import functools
import inspect
import math
import textwrap
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from ehr_ssl.errors import InputError


def check_count(value: int, name: str, *, high: int, low: int = 1, why: str = "") -> None:
    """An integer setting in [low, high]. The upper bound is generous but finite, so that an
    absurd value stops at configuration time instead of allocating terabytes later; `why` says
    what it protects."""
    if value < low:
        raise InputError(f"must be >= {low}, got {value}", setting=name)
    if value > high:
        because = f" ({why})" if why else ""
        raise InputError(f"must be <= {high}{because}, got {value}", setting=name)


def check_positive(config: Any, names: tuple[str, ...], section: str, *, high: int) -> None:
    """Each named integer field is in [1, high]."""
    for name in names:
        check_count(getattr(config, name), f"{section}.{name}", high=high)


def check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    """One of `choices`."""
    if value not in choices:
        raise InputError(f"must be one of {', '.join(choices)}, got {value!r}", setting=name)


def check_range(value: float, low: float, high: float, name: str) -> None:
    """Finite and within [low, high] (NaN fails every comparison, so it is named first)."""
    if not math.isfinite(value) or not low <= value <= high:
        raise InputError(f"must be a number in [{low}, {high}], got {value}", setting=name)


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved configuration as plain JSON-ready data."""
    return dataclasses.asdict(config)


NO_FILE = "config"  # the source of settings that come from no file (defaults, flags)


def from_dict(
    cls: type,
    values: dict[str, Any],
    *,
    source: str = NO_FILE,
    overridden: frozenset[str] = frozenset(),
    section: str = "",
) -> Any:
    """Build dataclass `cls` (the table `section`, "" at the top) from nested dicts, rejecting
    unknown keys and wrong types.

    An error names the setting ("section.key") and `source`, the file the values came from,
    unless the setting at fault is one of `overridden` (the "section.key" settings given by
    flags, whose error names the setting only) or the values came from no file."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        setting = f"{section}.{key}" if section else key
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"unknown key '{key}'{hint}", setting=section or None,
                             file=_file_of(setting, source, overridden))  # fmt: skip
        kwargs[key] = _coerce(hints[key], value, setting=setting, source=source,
                              overridden=overridden)  # fmt: skip
    try:
        return cls(**kwargs)
    except InputError as e:
        raise naming_source(e, source, overridden) from None


def _file_of(setting: str, source: str, overridden: frozenset[str]) -> str | None:
    """The file to name for a bad `setting`: none when a flag gave it or no file did."""
    return None if source == NO_FILE or _set_by_flag(setting, overridden) else source


def naming_source(error: InputError, source: str, overridden: frozenset[str]) -> InputError:
    """`error` naming `source`, the file the settings came from, unless it names a file already
    or the setting at fault was given on the command line (`overridden`: "section.key"
    settings; the error then names the setting only)."""
    if error.file is not None or source == NO_FILE or _set_by_flag(error.setting, overridden):
        return error
    return error.in_file(source)


def _set_by_flag(setting: str | None, overridden: frozenset[str]) -> bool:
    """Whether the setting an error names (or one inside it, for a check of several) was given
    on the command line. Flags of one section's settings ("max_epochs") match by suffix."""
    if setting is None:
        return False
    return any(
        key == setting or setting.endswith("." + key) or key.startswith(setting + ".")
        for key in overridden
    )


def _coerce(
    hint: Any, value: Any, *, setting: str, source: str, overridden: frozenset[str] = frozenset()
) -> Any:
    """`value` as type `hint`, else an InputError naming `setting` (and its file)."""

    def wrong(problem: str) -> InputError:
        return InputError(problem, file=_file_of(setting, source, overridden), setting=setting)

    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise wrong(f"must be a table, got {value!r}")
        return from_dict(hint, value, source=source, overridden=overridden, section=setting)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        same = {"setting": setting, "source": source, "overridden": overridden}
        for option in inner[:-1]:  # int | float: the first type the value fits
            try:
                return _coerce(option, value, **same)
            except InputError:
                continue
        return _coerce(inner[-1], value, **same)
    if origin is dict:  # a free-form table, checked where it is used ([model]: by EHRConfig)
        if not isinstance(value, dict):
            raise wrong(f"must be a table, got {value!r}")
        return copy.deepcopy(value)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise wrong(f"must be a list, got {value!r}")
        return [_coerce(item, v, setting=setting, source=source, overridden=overridden)
                for v in value]  # fmt: skip
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a label budget of 1000 (--set evaluate.label_budget=1000)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise wrong(f"must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError("file not found", file=str(path)) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a TOML file", file=str(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid TOML ({e})", file=str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", file=str(path)) from None


def load_config(
    cls: type,
    path: Path | None,
    overrides: dict[str, Any],
    *,
    base: dict[str, Any] | None = None,
    source: str | None = None,
) -> Any:
    """Defaults (or `base`), then the TOML file at `path` (if any), then `overrides`
    ("section.key" -> value; None values are skipped, so unset command-line options keep the
    file's value)."""
    values = copy.deepcopy(base or {})  # overrides below must not write into PRESETS
    if path is not None:
        values = merge(values, read_toml(path))
    given = frozenset(dotted for dotted, value in overrides.items() if value is not None)
    for dotted, value in overrides.items():
        if value is None:
            continue
        *sections, key = dotted.split(".")
        node = values
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise InputError(f"'{section}' is a value, not a table", setting=dotted)
        node[key] = value
    source = source or (str(path) if path else NO_FILE)
    return from_dict(cls, values, source=source, overridden=given)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body, whitespace
    collapsed), inherited fields included: help text comes from the declaration."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def setting_field(root: type, dotted: str) -> tuple[type, dataclasses.Field, Any]:
    """The dataclass declaring the setting "section.key" of `root`, its field and type hint."""
    cls = root
    *sections, name = dotted.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return cls, fields[name], typing.get_type_hints(cls)[name]


def field_default(field: dataclasses.Field) -> Any:
    """A field's default value (its factory's product for lists and tables)."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def parse_assignment(text: str) -> tuple[str, Any]:
    """ "section.key=value" -> ("section.key", value), the value read as TOML (numbers, true,
    [lists], "strings"), or as a plain string when it is not TOML."""
    dotted, sep, raw = text.partition("=")
    if not sep or not dotted.strip():
        raise InputError(f"expected section.key=value, got {text!r}", setting="--set")
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return dotted.strip(), value
