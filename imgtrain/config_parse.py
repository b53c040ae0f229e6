"""Text to config dataclasses: YAML files and ``section.key=value`` overrides.

Works on any dataclass tree (it never imports ``imgtrain.config``), so the schema and its
checks stay in one module and the parsing in this one. Hand-written rather than dacite or
OmegaConf on merit: unknown keys get a "did you mean" from the schema's own field names, a
``--set`` value is typed by YAML exactly as the file would be, ``Union`` fields such as
``class_weights`` (a name or a mapping) convert by trying each arm, and every failure is one
line naming the key and the file. dacite's errors name the Python type, not the key's place in
the file; OmegaConf brings interpolation and merge semantics that a run config does not use.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from imgtrain.errors import UserError


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every way it can go wrong into one clear line."""
    if path.is_dir():
        yamls = sorted(p.name for p in path.glob("*.y*ml"))[:3]
        hint = f" (it holds {', '.join(yamls)})" if yamls else ""
        raise UserError(f"--config {path} is a folder{hint}; pass the YAML file itself, e.g. --config {path}/NAME.yaml")
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise UserError(f"config file {path} cannot be read (permission denied); make it readable") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}; fix the file and retry") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {path} must hold a mapping of sections (data:, model:, train:), not {type(data).__name__}"
        )
    return data


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any, key: str, where: str) -> Any:
    """Coerce one YAML value to the field's declared type, or say which key is wrong."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' in {where} must be a mapping, got {value!r}")
        return from_dict(hint, value, where=where, prefix=key + ".")
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[-1] if errors else f"config key '{key}' in {where} has an invalid value {value!r}")
    if origin is list:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and args and args[0] in (int, float):
            value = [value]
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' in {where} must be a list, got {value!r}")
        return [_convert(v, args[0], key, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' in {where} must be a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], key, where) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}' in {where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"config key '{key}' in {where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"config key '{key}' in {where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{key}' in {where} must be a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting keys it does not know."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            extra = (
                f"; did you mean '{prefix}{hint[0]}'?"
                if hint
                else f"; known keys: {', '.join(prefix + n for n in names)}"
            )
            raise UserError(f"unknown config key '{prefix}{key}' in {where}{extra}")
        kwargs[key] = _convert(value, hints[key], prefix + key, where)
    return cls(**kwargs)


def apply_override(cfg: Any, item: str) -> Any:
    """Apply one ``section.key=value`` override; the value is parsed as YAML."""
    if "=" not in item:
        raise UserError(f"--set '{item}' must look like section.key=value, e.g. train.epochs=5")
    dotted, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return set_value(cfg, dotted, value, where="--set")


def set_value(cfg: Any, dotted: str, value: Any, where: str = "--set") -> Any:
    """A copy of ``cfg`` with one dotted key set to an already-parsed value."""
    data = cfg.to_dict()
    node = data
    parts = dotted.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            if part in node and node[part] is None:
                node[part] = {}
            else:
                _unknown(parts, i, node)
        node = node[part]
    last = parts[-1]
    if last not in node and not _is_mapping_field(cfg, parts[:-1]):
        _unknown(parts, len(parts) - 1, node)
    node[last] = value
    return from_dict(type(cfg), data, where=where, prefix="")


def _is_mapping_field(cfg: Any, parts: list[str]) -> bool:
    obj: Any = cfg
    for p in parts:
        obj = getattr(obj, p, None) if not isinstance(obj, dict) else obj.get(p)
    return isinstance(obj, dict) and not dataclasses.is_dataclass(obj)


def _unknown(parts: list[str], i: int, node: dict[str, Any]) -> None:
    key = ".".join(parts[: i + 1])
    hint = difflib.get_close_matches(parts[i], list(node), n=1)
    prefix = ".".join(parts[:i])
    suggestion = f"; did you mean '{(prefix + '.' if prefix else '') + hint[0]}'?" if hint else ""
    raise UserError(f"unknown config key '{key}' in --set{suggestion}")
