"""Dataclass configs to and from JSON (nested dataclasses, tuples, optionals, literals), and
`Count`, the command-line type of step counts."""

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated

import tyro


def parse_count(text: str) -> int:
    """A whole number written as an int ("100000", "100_000") or in float notation ("1e5",
    "2.5e5"); ValueError (one line) for anything else."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a whole number such as 100000 or 1e5, got {text!r}") from None
    if not value.is_integer():
        raise ValueError(f"expected a whole number such as 100000 or 1e5, got {text!r}")
    return int(value)


def _count_spec(optional: bool):
    def parse(args: list[str]):
        return None if optional and args[0] == "None" else parse_count(args[0])

    def is_count(value) -> bool:
        return (optional and value is None) or (type(value) is int)

    return tyro.constructors.PrimitiveConstructorSpec(
        nargs=1,
        metavar="{None}|INT" if optional else "INT",
        instance_from_str=parse,
        is_instance=is_count,
        str_from_instance=lambda value: [str(value)],
    )


Count = Annotated[int, _count_spec(optional=False)]
"""An int option that also takes whole numbers in float notation (`--total-steps 1e5`)."""
CountOrNone = Annotated[int | None, _count_spec(optional=True)]
"""Count or None. (`Count | None` would work too, but tyro's message for a bad value then says
only that no type matched, not why.)"""


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
    """An instance of the dataclass cls from its JSON record. A class with a `refuse_saved(data)`
    classmethod first gets to refuse, in its own words, a record it no longer reads; one with a
    `values_before_added` dict gives its fields' values for records saved before they existed."""
    refuse_saved = getattr(cls, "refuse_saved", None)
    if refuse_saved is not None:
        refuse_saved(data)
    # A field added since the record was saved takes today's default, unless the class names the
    # value that kept the record's behaviour (its default changed the behaviour when it came).
    data = getattr(cls, "values_before_added", {}) | data
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields in config: {sorted(unknown)}")
    return cls(**{k: _convert(hints[k], v) for k, v in data.items()})
