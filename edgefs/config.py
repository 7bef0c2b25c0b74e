"""Typed configs with layering: dataclass defaults, then a YAML file, then flags.

The resolved config is saved beside every checkpoint and report
(``config.yaml``), so a result can always be traced to the settings behind it.
Configs are data: a YAML file is parsed with ``yaml.safe_load``, never executed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from edgefs.errors import ConfigError

C = TypeVar("C")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown setting {key!r}; known: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _apply(current, value, f"{where}.{key}")
            continue
        setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}"))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, args[0], where) if len(args) == 1 else value
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return bool(value)
    if tp in (int, float, str):
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if origin is dict and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value


def resolve(cls: type[C], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Build ``cls()`` and apply a YAML file, then ``overrides`` (None values are ignored).

    Raises:
        ConfigError: unreadable YAML, unknown keys, or values of the wrong type.
    """
    config = cls()
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        _apply(config, doc, str(path))
    if overrides:
        _apply(config, {k: v for k, v in overrides.items() if v is not None}, "flags")
    return config


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save(config: Any, path: Path) -> None:
    """Write the resolved config as YAML beside an output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
