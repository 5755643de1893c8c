"""Dataclass configs to and from JSON (nested dataclasses, tuples, optionals, literals)."""

import dataclasses
import types
import typing
from pathlib import Path


def to_jsonable(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _convert(tp, value):
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_jsonable(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        item = args[0] if args else typing.Any
        return tuple(_convert(item, v) for v in value)
    if tp is Path:
        return Path(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_jsonable(cls, data: dict):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields in config: {sorted(unknown)}")
    return cls(**{k: _convert(hints[k], v) for k, v in data.items()})
