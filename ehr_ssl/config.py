"""Typed run configuration: dataclasses with checks, TOML files and command-line overrides.

A run's configuration resolves in three layers: the dataclass defaults, then a TOML file
(`[data]`, `[split]`, `[tokenizer]` tables), then explicit command-line options. The resolved
configuration is saved beside every output (`config.json`).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ehr_ssl.errors import InputError


@dataclass
class DataConfig:
    """How the input tables are read."""

    prediction_offset_minutes: float = 60.0
    """prediction_time = arrival_time + this, for visits tables without a prediction_time column."""
    static_columns: list[str] | None = None
    """Visit columns used as static features; None = every extra visit column of a usable type."""
    drop_null_time_events: bool = False
    """Drop events with a null time (MEDS static rows) instead of rejecting the file."""

    def __post_init__(self) -> None:
        if self.prediction_offset_minutes < 0:
            raise InputError(
                f"must be >= 0, got {self.prediction_offset_minutes}",
                column="data.prediction_offset_minutes",
            )


@dataclass
class SplitConfig:
    """The patient-level train/val/test split (a hash of patient_id and the seed)."""

    seed: int = 0
    """Changing it reassigns patients; keep it fixed across runs that must be comparable."""
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise InputError(
                f"must be a non-negative integer, got {self.seed}", column="split.seed"
            )
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise InputError(f"must be in [0, 1), got {value}", column=f"split.{name}")
        if self.val_fraction + self.test_fraction >= 1:
            raise InputError(
                "val_fraction + test_fraction must leave patients for training, got "
                f"{self.val_fraction} + {self.test_fraction}",
                column="split",
            )


@dataclass
class TokenizerConfig:
    """How a visit becomes a token sequence."""

    lookback_days: float = 365.0
    """History window: events from arrival_time - lookback up to prediction_time are read."""
    max_length: int = 256
    """Tokens per visit, specials and statics included; the oldest history is dropped first."""
    min_count: int = 5
    """A code (or static value) enters the vocabulary only if at least this many distinct
    training patients have it; counting patients, not events, is the privacy guard."""
    n_bins: int = 10
    """Per-code quantile bins for numeric values (edges fitted on the training split)."""

    def __post_init__(self) -> None:
        if self.lookback_days < 0:
            raise InputError(
                f"must be >= 0, got {self.lookback_days}", column="tokenizer.lookback_days"
            )
        if self.min_count < 1:
            raise InputError(f"must be >= 1, got {self.min_count}", column="tokenizer.min_count")
        if not 1 <= self.n_bins <= 100:
            raise InputError(f"must be in [1, 100], got {self.n_bins}", column="tokenizer.n_bins")


@dataclass
class TokenizeConfig:
    """Everything `ehr-ssl tokenize` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    shard_visits: int = 200_000
    """Visits per output shard (each split is written as shards of at most this many visits)."""

    def __post_init__(self) -> None:
        if self.shard_visits < 1:
            raise InputError(f"must be >= 1, got {self.shard_visits}", column="shard_visits")


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved configuration as plain JSON-ready data."""
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict[str, Any], *, source: str = "config") -> Any:
    """Build dataclass `cls` from nested dicts, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"unknown key '{key}'{hint}", file=source)
        kwargs[key] = _coerce(hints[key], value, key=key, source=source)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, *, key: str, source: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise InputError(f"'{key}' must be a table, got {value!r}", file=source)
        return from_dict(hint, value, source=source)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(inner, value, key=key, source=source)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise InputError(f"'{key}' must be a list, got {value!r}", file=source)
        return [_coerce(item, v, key=key, source=source) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise InputError(
            f"'{key}' must be {hint.__name__}, got {type(value).__name__} {value!r}", file=source
        )
    return value


def load_config(cls: type, path: Path | None, overrides: dict[str, Any]) -> Any:
    """Defaults, then the TOML file at `path` (if any), then `overrides` ("section.key" -> value;
    None values are skipped, so unset command-line options keep the file's value)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError("file not found", file=str(path)) from None
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"not valid TOML ({e})", file=str(path)) from None
    for dotted, value in overrides.items():
        if value is None:
            continue
        *sections, key = dotted.split(".")
        node = values
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return from_dict(cls, values, source=str(path) if path else "config")
