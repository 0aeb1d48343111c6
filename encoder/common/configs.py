"""Config dataclasses to and from JSON: the one (de)serialiser every config of the project uses.

``config_to_dict`` turns a dataclass (nested dataclasses and lists of them included) into plain
JSON values; ``config_from_dict`` is its inverse and refuses unknown keys by name, so a typo in a
config file never passes silently; ``save_config`` / ``load_config`` write (atomically) and read a
JSON file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from encoder.common.errors import ConfigError


def config_to_dict(config: Any) -> dict:
    """A dataclass config as plain JSON values (nested dataclasses become dicts, paths strings)."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {key: plain(v) for key, v in value.items()}
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value

    return plain(config)


def _dataclass_type(annotation) -> type | None:
    if dataclasses.is_dataclass(annotation):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def config_from_dict(cls: type, values: dict, error: type[Exception] = ConfigError) -> Any:
    """Inverse of :func:`config_to_dict`: unknown or missing keys raise ``error`` naming them."""
    if not isinstance(values, dict):
        raise error(f"a {cls.__name__} must be a JSON object, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    specs = [spec for spec in dataclasses.fields(cls) if spec.init]
    unknown = sorted(set(values) - {spec.name for spec in specs})
    if unknown:
        raise error(f"unknown {cls.__name__} fields: {unknown} (known: {sorted(spec.name for spec in specs)})")
    missing = sorted(
        spec.name
        for spec in specs
        if spec.name not in values
        and spec.default is dataclasses.MISSING
        and spec.default_factory is dataclasses.MISSING
    )
    if missing:
        raise error(f"{cls.__name__} needs {', '.join(missing)}")
    kwargs = {}
    for name, value in values.items():
        nested = _dataclass_type(hints.get(name))
        kwargs[name] = (
            config_from_dict(nested, value, error) if nested is not None and isinstance(value, dict) else value
        )
    return cls(**kwargs)


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write the config as JSON (atomically: a reader never sees half a file)."""
    from encoder.common.atomic_files import write_file_atomically

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, (json.dumps(config_to_dict(config), indent=2) + "\n").encode("utf-8"))
    return path


def read_config_values(path: str | os.PathLike, error: type[Exception] = ConfigError) -> dict:
    """The JSON object of a config file; FileNotFoundError, or ``error`` naming the file, otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as problem:
        raise error(f"{path}: not valid JSON ({problem})") from None
    if not isinstance(values, dict):
        raise error(f"{path}: expected a JSON object")
    return values


def load_config(cls: type, path: str | os.PathLike, error: type[Exception] = ConfigError, **overrides: Any) -> Any:
    """Read a config file written by :func:`save_config`; ``overrides`` replace its values."""
    return config_from_dict(cls, {**read_config_values(path, error), **overrides}, error)
