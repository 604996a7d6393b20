"""The strict config loader every job's config goes through: declared ranges, one-line errors.

A config is a tree of frozen dataclasses. ``load_config`` reads YAML with a safe loader (no tags
run), applies ``--set a.b=c`` overrides, rejects unknown keys, wrong types, NaN/Inf and numbers
outside their declared range, and names the key at fault in one line
(:class:`~restore_core.errors.ConfigError`).

Every number has its range declared next to it with :func:`ranged` or :func:`each_in` (in the
spirit of scikit-learn's ``_parameter_constraints``); :func:`from_dict` checks them all, in one
place, and :func:`check_ranges` does the same for a config built in code, before any job starts
Ray. Values users write naturally are read as they mean them: ``1e-4`` is a number (YAML 1.1
would read a string) and ``2024-06-30`` stays the text it is (YAML 1.1 would read a date).

This module knows no config class: the core's sections are in :mod:`restore_core.config`, each
job's tree in ``jobs/config_<job>.py``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from restore_core.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """The closed or open interval a number (or each number of a list) must lie in."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is refused
    high_open: bool = False
    whole_above: float | None = None  # numbers above this must be whole (a GPU share: 0.5, 1, 2, not 1.5)

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.whole_above is not None and value > self.whole_above and not float(value).is_integer():
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def __str__(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low is None or self.low_open else "["
        right = ")" if self.high is None or self.high_open else "]"
        whole = "" if self.whole_above is None else f", whole above {self.whole_above:g}"
        return f"{left}{lo}, {hi}{right}{whole}"


def ranged(
    default: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    whole_above: float | None = None,
) -> Any:
    """A dataclass field holding a number that must lie in a range."""
    rng = Range(low, high, low_open, high_open, whole_above)
    return dataclasses.field(default=default, metadata={"range": rng})


def each_in(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> dict[str, Range]:
    """Field metadata: the number, or each number of a list, must lie in this range."""
    return {"range": Range(low, high, low_open, high_open)}


def field_range(field: dataclasses.Field[Any]) -> Range | None:
    """The declared range of a config field, or None."""
    rng = field.metadata.get("range")
    return rng if isinstance(rng, Range) else None


def warn_renamed(old: str, new: str) -> None:
    """Log that a config name is deprecated and which name replaces it."""
    logging.getLogger("restore_core.config").warning("%s is a deprecated name: use %s", old, new)


# ----------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against ``tp`` and return it (ints widen to floats, lists to lists)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(typing.cast(type, tp), value, prefix=f"{key}.")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"config key '{key}' must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin in (list, Sequence):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_tp,) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()) and float(value).is_integer():
            value = float(value)  # "64e6" as YAML 1.1 reads it
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 64e6, 2.0: a whole number written as a float
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value)  # 1e-4, 1E+3: numbers in YAML 1.2, strings to a YAML 1.1 reader
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' is {value}, must be a finite number")
        return float(value)
    if tp is str:
        if isinstance(value, datetime.date):
            return value.isoformat()  # a date read by a YAML 1.1 loader: the text the user wrote
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}' has an unsupported type {_type_name(tp)}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(typing.cast(Any, cls))}
    data = _renamed_keys(cls, data, prefix)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known keys here: {', '.join(sorted(names))})")
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls))}
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            # Start from the parent's default for this section (its default_factory may differ
            # from the section class's own defaults), then apply the given keys.
            default = _field_default(fields[name])
            section: Any = from_dict(typing.cast(type, tp), value, prefix=f"{prefix}{name}.")
            if default is not None:
                renamed: dict[str, str] = getattr(tp, "RENAMED", {})
                given = [renamed.get(str(k), str(k)) for k in value]  # renamed keys under their new names
                section = dataclasses.replace(default, **{k: getattr(section, k) for k in given})
            kwargs[name] = section
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
        check_range(fields[name], kwargs[name], prefix + name)
    return cls(**kwargs)


def _renamed_keys(cls: type, data: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    """``data`` with the keys ``cls.RENAMED`` lists under their new names (a warning each)."""
    renamed: dict[str, str] = getattr(cls, "RENAMED", {})
    if not renamed.keys() & data.keys():
        return data
    out = dict(data)
    for old, new in renamed.items():
        if old in out:
            if new in out:
                raise ConfigError(f"config key '{prefix}{old}' is the old name of '{prefix}{new}': give one of them")
            warn_renamed(f"config key '{prefix}{old}'", f"'{prefix}{new}'")
            out[new] = out.pop(old)
    return out


def check_range(field: dataclasses.Field[Any], value: Any, key: str) -> None:
    """A ConfigError naming ``key``, its value and its range when ``value`` (or an item of it) is outside."""
    rng = field_range(field)
    if rng is None:
        return
    items = value if isinstance(value, list) else [value]
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue  # the type check has spoken
        if v not in rng:
            where = f"{key}[{i}]" if isinstance(value, list) else key
            kind = "an integer" if isinstance(v, int) else "a number"
            raise ConfigError(f"config key '{where}' is {v!r}, must be {kind} in {rng}")


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Check every declared range of a config object tree (for configs built in code, not loaded)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, f"{prefix}{f.name}.")
        elif isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v) and not isinstance(v, type):
                    check_ranges(v, f"{prefix}{f.name}.{k}.")
        else:
            check_range(f, value, prefix + f.name)


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    if field.default is not dataclasses.MISSING:
        return field.default
    return None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for manifests); storage options are redacted."""
    out = dataclasses.asdict(cfg)
    _redact(out)
    return out


_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session")


def _redact(node: Any) -> None:
    if isinstance(node, dict):
        for k, v in list(node.items()):
            if k == "storage_options" and isinstance(v, dict):
                node[k] = {sk: "***" for sk in v}
            elif any(w in str(k).lower() for w in _SECRET_WORDS) and isinstance(v, str) and v:
                node[k] = "***"
            else:
                _redact(v)
    elif isinstance(node, list):
        for v in node:
            _redact(v)


#: YAML 1.2's float syntax: ``1e-4`` and ``1E+3`` without a dot are floats (YAML 1.1, and so
#: PyYAML, reads them as strings).
_FLOAT_RE = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags run) that reads what users write naturally: ``1e-4`` as a
    float, and ``2024-06-30`` as the string it is (no implicit dates or timestamps). A key given
    twice in one mapping is an error (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (lines {seen[key]} and {line}); keep one",
                    key_node.start_mark,
                )
            if isinstance(key, str):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    """Parse config YAML safely (see :class:`_ConfigLoader`)."""
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass: no tags run


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3). The value is parsed as YAML (safe)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Read a YAML file (optional), apply overrides, validate into ``cls``."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (pass an existing YAML file to --config)")
        try:
            loaded = yaml_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None)
            raise ConfigError(
                f"config file {p} is not valid YAML{where}" + (f": {problem}" if problem else "")
            ) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of keys at the top level")
        data = loaded
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)
