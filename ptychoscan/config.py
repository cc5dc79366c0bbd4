"""Load pydantic configuration models from YAML, TOML or JSON files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file could not be read or does not validate."""


def read_mapping(path: str | Path) -> dict:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file into a dict."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such configuration file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror if isinstance(err, OSError) else err})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as err:  # not a ValueError
                raise ValueError(" ".join(str(err).split())) from None
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown configuration format (use .yaml, .toml or .json)")
    except (ValueError, ImportError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot parse ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_model(model: type[ModelT], path: str | Path | None = None, overrides: dict | None = None,
               nulls: dict[str, bool] | None = None) -> ModelT:
    """Build ``model`` from an optional file, then apply non-None ``overrides`` on top, and set to None each field whose
    ``nulls`` entry is true (a flag's "none" value, e.g. ``--batch-positions 0``); validated as a whole."""
    data = read_mapping(path) if path else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    for key, null in (nulls or {}).items():
        if null:
            data[key] = None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ConfigError(f"{path or 'options'}: {where}: {first['msg']}") from None
