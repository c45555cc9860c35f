"""Configuration fields that say what they allow: the type hint is the contract.

Every configuration dataclass (`TrainConfig`, a method's config, `EvalSettings`, `Preset`,
the pretraining recipes) types each field, and a number's range rides on its hint:

    group_size: Count = 8                 # an integer >= 1
    lr: Positive = 3e-4                   # a finite number > 0
    min_lr_ratio: Fraction = 0.0          # a finite number in [0, 1]
    adv_std: Literal["group", "global"]   # one of these strings
    clip_range: Annotated[float, Range(0, finite=False)] = 1e-4   # inf allowed: no clipping

A float is finite unless its `Range` says otherwise (nan never is), an int lies within
±(2³¹ − 1), and a string or a list is never empty. `coerce` checks a value from TOML or
JSON, `parse` one typed on the command line (`dppo@delta=3e-6`), `check_fields` a dataclass
built in Python: each refuses a wrong value in one line naming the field, the value and
what is allowed, so a run never starts (or trains for hours) on a value it cannot use.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass, fields
from typing import Annotated, Literal

from flowarena.core.errors import FlowArenaError


class FieldError(FlowArenaError, ValueError):
    """A configuration value of the wrong type or outside its range."""


INT_LIMIT = 2**31 - 1  # beyond it a count or a seed is a typo, and torch's seeds and sizes overflow


@dataclass(frozen=True)
class Range:
    """The numbers a field allows: [lo, hi] with open ends where said; finite unless not."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    finite: bool = True

    def allows(self, x: float) -> bool:
        if math.isnan(x) or (self.finite and math.isinf(x)):
            return False
        above = self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)
        below = self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
        return above and below

    def text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return ""


Count = Annotated[int, Range(1)]
Whole = Annotated[int, Range(0)]
Positive = Annotated[float, Range(0, lo_open=True)]
NonNegative = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1)]
Decay = Annotated[float, Range(0, 1, hi_open=True)]  # a moving average's weight on the past
Steps = Annotated[int, Range(1, 1000)]  # sampling steps: beyond 1000 a typo (the schedules have 1000)
Limit = Annotated[int, Range(2)]  # prompts of an evaluation: a standard error needs two
Images = Annotated[int, Range(1, 4096)]  # a grid's, or a prompt's: more is a typo (and out of memory)


def hints(cls) -> dict[str, typing.Any]:
    """A dataclass's field types with their ranges (`Annotated` kept)."""
    return typing.get_type_hints(cls, include_extras=True)


def split(hint) -> tuple[typing.Any, Range | None]:
    """(the bare type, its Range or None)."""
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        return base, next((e for e in extras if isinstance(e, Range)), None)
    return hint, None


def optional(hint) -> bool:
    return type(None) in typing.get_args(split(hint)[0])


def describe(hint) -> str:
    """What a field allows, in words: "an integer >= 1", "one of 'group', 'global'", …"""
    base, rng = split(hint)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return describe(inner[0]) + ' or "none"'
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if base is bool:
        return "true or false"
    if base in (int, float):
        kind = "an integer" if base is int else "a number" if rng and not rng.finite else "a finite number"
        return f"{kind} {rng.text()}".rstrip() if rng else kind
    if base is str:
        return "a non-empty string"
    if origin in (tuple, list):
        return "a non-empty list"
    if origin is dict or base is dict:
        return "a table"
    return str(base)


def coerce(value, hint, where: str, error: type[Exception] = FieldError, shown=None):
    """`value` (from TOML, JSON or Python) as the field's type (lists become tuples, an int
    where a float is asked becomes a float), or `error`: "<where> must be <what>, not <value>".
    TOML has no null: "none" unsets an optional field. (`shown`: the hint the message
    describes, an optional's whole type when its inner one is checked.)"""
    base, rng = split(hint)
    origin, args = typing.get_origin(base), typing.get_args(base)

    def refuse(what: str | None = None):
        return error(f"{where} must be {what or describe(shown or hint)}, not {value!r}")

    if type(None) in args:
        if value is None or value == "none":
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where, error, hint)  # the project's optionals wrap one type
    if origin is Literal:
        if value not in args or isinstance(value, bool):
            raise refuse()
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise refuse()
        return value
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (base is int and
                                                                             not isinstance(value, int)):
            raise refuse()
        if (rng and not rng.allows(value)) or (not rng and not math.isfinite(value)):
            raise refuse()
        if base is int and abs(value) > INT_LIMIT:
            raise refuse(f"{describe(shown or hint)} (at most {INT_LIMIT} in size)")
        return float(value) if base is float else value
    if base is str:
        if not isinstance(value, str) or not value:
            raise refuse()
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)) or not value:
            raise refuse()
        if len(args) == 2 and args[1] is Ellipsis or len(args) <= 1:
            item = args[0] if args else typing.Any
            return tuple(coerce(v, item, f"{where}[{i}]", error) for i, v in enumerate(value))
        if len(value) != len(args):
            raise refuse(f"a list of {len(args)} values")
        return tuple(coerce(v, a, f"{where}[{i}]", error) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or base is dict:
        if not isinstance(value, dict):
            raise refuse()
        return value
    return value  # typing.Any


def parse(raw: str, hint, where: str, error: type[Exception] = FieldError):
    """A value typed on the command line (`name@key=value`) read as the field's type, then
    checked as `coerce` does: numbers as Python reads them (.001, 1e-4, inf), true / false,
    "none", and lists as JSON ([0.9, 0.99]) or comma-separated (geneval2,pickscore)."""
    target, text = split(hint)[0], raw.strip()
    if optional(hint):
        if text.lower() in ("none", "null"):
            return None
        target = split(next(a for a in typing.get_args(target) if a is not type(None)))[0]
    value: typing.Any = raw
    try:
        if target is bool:
            value = {"true": True, "false": False}.get(text.lower(), raw)
        elif target is int:
            value = int(text)
        elif target is float:
            value = float(text)
        elif typing.get_origin(target) in (tuple, list) and not text.startswith("["):
            value = [v.strip() for v in text.split(",")]  # a,b,c as well as ["a", "b", "c"]
        elif typing.get_origin(target) in (tuple, list, dict) or target is dict:
            value = json.loads(text)
    except ValueError:
        raise error(f"{where} must be {describe(hint)}, not {raw!r}") from None
    return coerce(value, hint, where, error)


def check_fields(obj, error: type[Exception] = FieldError, where: str = "") -> None:
    """Every field of the dataclass `obj` as its hint allows (a config built in Python, not
    read from a file, meets the same contract)."""
    types = hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if coerce(value, types[f.name], f"{where}{f.name}", error) is None and value is not None:
            raise error(f"{where}{f.name} must be {describe(types[f.name])}, not {value!r} (in Python: None)")
