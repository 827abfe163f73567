"""Typed configs: YAML -> dataclasses, with dotted-path errors and `key=value` overrides.

Every config in normlab is a tree of dataclasses. `from_dict` walks a plain dict (from
`yaml.safe_load`) against the dataclass type hints, coerces what can be coerced safely, and
rejects the rest with the full dotted path of the offending key and what is allowed there.
Range limits live next to each field (`param(..., min=0)`), so there is one place per
hyperparameter.
"""

from __future__ import annotations

import copy
import math
import types
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError


def param(
    default: Any = MISSING,
    *,
    min: float | None = None,
    max: float | None = None,
    help: str = "",
    default_factory: Any = MISSING,
) -> Any:
    """A dataclass field with an allowed range and a one-line description (shown in errors)."""
    meta = {"min": min, "max": max, "help": help}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `path`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"{path}: {value!r} is not allowed; choose {_describe(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)[:1]
        return [_coerce(v, item_tp, _join(path, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_tp, val_tp = get_args(tp)
        return {str(k): _coerce(v, val_tp, _join(path, str(k))) for k, v in value.items()}
    if is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def from_dict(cls: type, raw: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a plain mapping, validating every key, type and range."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = [k for k in raw if k not in known]
    if unknown:
        where = _join(path, str(unknown[0]))
        raise ConfigError(f"{where}: unknown key; allowed keys here: {', '.join(known)}")
    kwargs = {}
    for name, f in known.items():
        where = _join(path, name)
        if name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{where}: required key is missing")
            continue
        value = _coerce(raw[name], hints[name], where)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(value, float) and not math.isfinite(value) and (lo is not None or hi is not None):
            raise ConfigError(
                f"{where}: {value!r} is not a finite number; give a number in "
                f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                raise ConfigError(f"{where}: {value!r} is out of range; allowed {bounds}")
        kwargs[name] = value
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        check(path)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain, YAML-safe dict of a config dataclass (round-trips through from_dict)."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}. Keys that already contain dots are kept as written."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def set_dotted(tree: dict, dotted: str, value: Any, path_prefix: str = "") -> None:
    """Set tree[a][b][c] = value for dotted = 'a.b.c', creating mappings on the way."""
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = _join(path_prefix, ".".join(parts[: i + 1]))
            raise ConfigError(f"{where}: is a value, not a section; cannot set {dotted}")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict, overrides: dict[str, Any], path_prefix: str = "") -> dict:
    """Return a deep copy of `tree` with every dotted key in `overrides` set."""
    out = copy.deepcopy(tree)
    for dotted, value in flatten(overrides).items():
        set_dotted(out, dotted, value, path_prefix)
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning a missing or malformed file into one clear error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (see `normlab list` for the shipped configs)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(
            f"{p}: not a text file (a config is UTF-8 YAML); pass a .yaml config such as configs/knockout.yaml"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)


__all__ = [
    "param",
    "from_dict",
    "to_dict",
    "flatten",
    "set_dotted",
    "apply_overrides",
    "read_yaml",
    "dump_yaml",
    "ConfigError",
]
