"""One config system: frozen pydantic models, loaded from YAML or JSON.

Every model, run and export setting in osp is a :class:`Config` subclass. Unknown keys are errors,
values are validated, and the message of a failure names the field path (``model.hidden_size``) and
the file it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from osp.errors import ConfigError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of all osp configs: typed, frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
        """Validate ``data``; a failure raises :class:`ConfigError` naming ``source`` and each field."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, source)) from None

    @classmethod
    def from_file(cls: type[C], path: str | Path) -> C:
        """Load a YAML (or JSON, which is YAML) file into this config."""
        return cls.from_dict(read_mapping(path), source=str(path))

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with ``changes`` applied (configs are frozen)."""
        return type(self).from_dict({**self.model_dump(), **changes}, source=type(self).__name__)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML/JSON file that must hold a mapping at its top level."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config file ({err})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    """Turn pydantic's report into lines of ``source: field.path: message``."""
    lines = []
    for item in err.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{source}: {field}: {message}")
    return "\n".join(lines)
