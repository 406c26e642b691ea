"""Building a stage config: its defaults, then a preset (``salmon/configs/<preset>/<stage>.yaml``),
then a YAML file, then ``key=value`` overrides; errors name the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from salmon.core.errors import SalmonInputError
from salmon.core.yamlio import safe_load

C = TypeVar("C", bound=BaseModel)


def model_ref_fields(cfg: BaseModel) -> list[tuple[BaseModel, str]]:
    """``(config, field name)`` of every field marked :data:`MODEL_REF`, nested configs included."""
    found: list[tuple[BaseModel, str]] = []
    for name, info in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("model_ref"):
            found.append((cfg, name))
        elif isinstance(value, BaseModel):
            found += model_ref_fields(value)
    return found

PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}``; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SalmonInputError(f"override '{item}'", "expected key=value",
                                   "write overrides as key=value, e.g. learning_rate=1e-4")
        try:
            value = safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def preset_path(preset: str, stage: str) -> Path:
    """``salmon/configs/<preset>/<stage>.yaml``."""
    return PRESETS_DIR / preset / f"{stage}.yaml"


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SalmonInputError(str(p), "config file not found", "check the path")
    try:
        data = safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SalmonInputError(str(p), f"not UTF-8 text ({e.reason} at byte {e.start})",
                               "save the file as UTF-8") from None
    except yaml.YAMLError as e:
        raise SalmonInputError(str(p), f"not valid YAML ({e})".replace("\n", " "),
                               "fix the YAML syntax at the line shown") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SalmonInputError(str(p), f"a config file must be a mapping of key: value, not a {type(data).__name__}",
                               "write one key: value per line")
    return data


def build_config(
    cls: type[C],
    *,
    stage: str,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> C:
    """Resolve a stage config: defaults -> preset -> config file -> ``values`` -> overrides."""
    data: dict[str, Any] = {}
    if preset:
        path = preset_path(preset, stage)
        if not path.is_file():
            raise SalmonInputError(f"preset '{preset}'", f"has no config for stage {stage}",
                                   f"expected {path}")
        data = _merge(data, load_yaml_mapping(path))
    if config_file:
        data = _merge(data, load_yaml_mapping(config_file))
    if values:
        data = _merge(data, values)
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                parts.append(f"unknown key '{loc}'")
            elif err["type"] == "missing":
                parts.append(f"missing required key '{loc}'")
            elif not loc:  # a check across keys
                parts.append(err["msg"].removeprefix("Value error, "))
            else:
                parts.append(f"key '{loc}': {err['msg'].removeprefix('Value error, ')}")
        raise SalmonInputError(f"{stage} config", "; ".join(parts),
                               f"see `salmon {stage} --help` for the keys") from None
