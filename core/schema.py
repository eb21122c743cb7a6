"""Typed YAML → dataclass conversion that reports every problem at once.

A run must fail before any work starts when its config is wrong, and a user fixing a config wants
all of its mistakes in one message, not one per attempt. `build` walks a dataclass type and a raw
mapping together, collecting unknown keys (with a close-match hint), wrong types and the values a
dataclass's `problems()` method rejects.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """Raised with every problem found in a config, one per line."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


def build(cls: type, raw: Any, source: str = "config") -> Any:
    """Convert `raw` (parsed YAML) to an instance of dataclass `cls`, or raise ConfigError."""
    problems: list[str] = []
    obj = _convert(cls, raw, "", problems)
    if obj is not None:
        _check(obj, "", problems)
    if problems:
        raise ConfigError(problems, source)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (for YAML output and hashing)."""
    return dataclasses.asdict(obj)


# Field metadata of settings added after runs were stamped: left out of stage keys at their default.
KEY_UNLESS_SET = {"key": "unless_set"}
# Field metadata of settings that choose how a fitted model is used, not how it is made: never in its key.
NOT_IN_KEY = {"key": "never"}


def stage_key(obj: Any) -> Any:
    """Plain data of a config for a stage's up-to-date key: `to_dict`, without the fields marked
    `NOT_IN_KEY` and those marked `KEY_UNLESS_SET` that hold their default, so a new option left off
    does not make every fitted model of an earlier version look stale."""
    if isinstance(obj, list):  # e.g. image_tower.also: a list of dataclasses
        return [stage_key(v) for v in obj]
    if not dataclasses.is_dataclass(obj):
        return copy.deepcopy(obj)
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        marked = f.metadata.get("key")
        if marked == "never" or (marked == "unless_set" and value == _default(f)):
            continue
        out[f.name] = stage_key(value)
    return out


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _check(obj: Any, path: str, problems: list[str]) -> None:
    """Run `problems()` on every nested dataclass, prefixing messages with the key path."""
    if not dataclasses.is_dataclass(obj):
        return
    if hasattr(obj, "problems"):
        problems.extend(f"{path}{msg}" for msg in obj.problems())
    for f in dataclasses.fields(obj):
        _check(getattr(obj, f.name), f"{path}{f.name}.", problems)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Convert one value to type `tp`; on failure record a problem and return None."""
    where = path.rstrip(".") or "<root>"
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {type(value).__name__}")
            return None
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        for key in value:
            if key not in names:
                hint = difflib.get_close_matches(str(key), names, n=1)
                extra = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(names)})"
                problems.append(f"{path}{key}: unknown key{extra}")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                before = len(problems)
                converted = _convert(hints[f.name], value[f.name], f"{path}{f.name}.", problems)
                if len(problems) == before:  # a field that failed keeps its default, so checks still run
                    kwargs[f.name] = converted
        try:
            return tp(**kwargs)
        except TypeError as exc:  # a required field is missing
            problems.append(f"{where}: {exc}")
            return None
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        problems.append(f"{where}: expected one of {_type_name(tp)}, got {value!r}")
        return None
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _convert(arg, value, path, trial)
            if not trial:
                return out
        problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {value!r}")
            return None
        return [_convert(item_tp, v, f"{path}{i}.", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return None
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool):
        problems.append(f"{where}: expected int, got {value!r}")
        return None
    if isinstance(value, tp):
        return value
    problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return None
