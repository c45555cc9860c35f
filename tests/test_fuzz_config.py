"""Property-based tests of the configuration contract (core/fields.py): for every field
of every configuration dataclass, values of the wrong type, non-finite numbers and values out
of range are refused in one line naming the field, before any work and with nothing written.

The fields are read from the dataclasses themselves, so a new field is covered without an
edit here; its type must be one the contract understands (`test_every_field_has_a_contract`).
"""

from __future__ import annotations

import math
import tempfile
import typing
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flowarena.core.fields import INT_LIMIT, FieldError, check_fields, coerce, describe, hints, parse, split
from flowarena.harness.cli import app
from flowarena.harness.run.config import EvalSettings, Preset, get_preset
from flowarena.harness.run.preset_toml import toml_key, toml_value
from flowarena.methods import get_method, method_names
from flowarena.methods.trainer import TrainConfig
from flowarena.models.toy_pretrain import PretrainConfig
from flowarena.rewards.toy_pick import ToyPickTrainConfig

METHOD_CONFIGS = {name: get_method(name).Config for name in method_names()}
CONFIGS = [TrainConfig, EvalSettings, Preset, PretrainConfig, ToyPickTrainConfig, *METHOD_CONFIGS.values()]
TABLES = {"train", "eval"}  # Preset fields that are configurations of their own, covered as such
FIELDS = [(cls, f.name) for cls in CONFIGS for f in fields(cls) if not (cls is Preset and f.name in TABLES)]
SETTINGS = settings(max_examples=10, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
runner = CliRunner()

words = st.text(alphabet=st.characters(categories=("L", "N", "Zs"), max_codepoint=0x2FF), max_size=6)


def bad_values(hint) -> st.SearchStrategy:
    """Values the field's type and range refuse: wrong types, nan / inf, out of range."""
    base, rng = split(hint)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if type(None) in args:  # an optional refuses what its type refuses (None and "none" unset it)
        inner = next(a for a in args if a is not type(None))
        return bad_values(inner).filter(lambda v: v is not None and v != "none")
    if origin is Literal:
        return st.one_of(words.filter(lambda w: w not in args), st.integers(-5, 5), st.booleans(),
                         st.lists(st.sampled_from(args), min_size=1, max_size=2))
    if base is bool:
        return st.one_of(st.integers(-2, 2), words, st.floats(allow_nan=False))
    if base in (int, float):
        parts = [words, st.booleans(), st.lists(st.integers(0, 3), max_size=2), st.just(math.nan)]
        if base is int:
            parts += [st.floats(-1e6, 1e6).filter(lambda x: x != int(x)),
                      st.integers(INT_LIMIT + 1, 2**62), st.integers(-(2**62), -INT_LIMIT - 1)]
        elif rng is None or rng.finite:
            parts.append(st.sampled_from([math.inf, -math.inf]))
        if rng is not None and rng.lo is not None:
            parts.append(st.integers(max_value=int(rng.lo) - (0 if rng.lo_open else 1), min_value=-(2**40))
                         if base is int else
                         st.floats(max_value=rng.lo, exclude_max=not rng.lo_open, min_value=-1e300))
        if rng is not None and rng.hi is not None:
            parts.append(st.integers(min_value=int(rng.hi) + (0 if rng.hi_open else 1), max_value=2**40)
                         if base is int else
                         st.floats(min_value=rng.hi, exclude_min=not rng.hi_open, max_value=1e300))
        return st.one_of(parts)
    if base is str:
        return st.one_of(st.just(""), st.integers(), st.floats(allow_nan=False), st.booleans(),
                         st.lists(words, min_size=1, max_size=2))
    if origin in (tuple, list):
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        wrong_items = (st.lists(bad_values(item), min_size=1, max_size=2) if item is not None else
                       st.tuples(*[bad_values(a) for a in args]).map(list) if len(args) <= 1 else
                       st.one_of(st.lists(st.floats(0.1, 0.5), min_size=len(args) + 1, max_size=5),
                                 st.lists(st.floats(0.1, 0.5), min_size=1, max_size=len(args) - 1),
                                 st.tuples(bad_values(args[0]), *[st.just(0.5)] * (len(args) - 1)).map(list)))
        return st.one_of(st.just([]), st.integers(), words.filter(bool), wrong_items)
    if origin is dict or base is dict:
        return st.one_of(st.integers(), words, st.lists(st.integers(), max_size=2))
    raise AssertionError(f"no bad values for {hint}")


def _hint(cls, name):
    return hints(cls)[name]


def _one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_every_field_has_a_contract():
    """Each field's type is one `coerce` checks, and its default meets it (so the contract
    refuses what is wrong, not everything)."""
    assert len(FIELDS) > 60
    for cls, name in FIELDS:
        hint = _hint(cls, name)
        text = describe(hint)
        assert "<class" not in text and "typing." not in text, (cls.__name__, name, text)
        f = next(f for f in fields(cls) if f.name == name)
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        if default is not None:
            coerce(default, hint, name)
    for preset in ("quick", "smoke", "default", "sd35-geneval2"):
        check_fields(get_preset(preset))
        check_fields(get_preset(preset).train)


def test_a_subclass_keeps_its_parents_types():
    """A method config that changes a default restates the field: with the same type and range."""
    for cls in METHOD_CONFIGS.values():
        for parent in cls.__mro__[1:]:
            if hasattr(parent, "__dataclass_fields__"):
                mine, theirs = hints(cls), hints(parent)
                for name in theirs:
                    assert mine[name] == theirs[name], (cls.__name__, parent.__name__, name)


@pytest.mark.parametrize("cls,name", FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
@SETTINGS
@given(data=st.data())
def test_a_wrong_value_is_one_line_naming_the_field(cls, name, data):
    """The contract itself, and a config built in Python (`check_fields`)."""
    hint = _hint(cls, name)
    value = data.draw(bad_values(hint))
    with pytest.raises(FieldError) as e:
        coerce(value, hint, f"field {name!r}")
    assert str(e.value).startswith(f"field {name!r}") and " must be " in str(e.value)
    assert "\n" not in str(e.value)
    obj = get_preset("smoke") if cls is Preset else cls()
    with pytest.raises(FieldError, match=rf"^{name}(\[\d\])? must be"):
        check_fields(replace(obj, **{name: value}))


def _toml(cls, name, value) -> str:
    line = f"{toml_key(name)} = {toml_value(value)}\n"
    if cls is TrainConfig:
        return f'base = "smoke"\n[train]\n{line}'
    if cls is EvalSettings:
        return f'base = "smoke"\n[eval]\n{line}'
    if cls is Preset:
        return f'base = "smoke"\n{line}'
    method = next(m for m, c in METHOD_CONFIGS.items() if c is cls)
    return f'base = "smoke"\n[method_overrides.{toml_key(method)}]\n{line}'


RUN_FIELDS = [(c, n) for c, n in FIELDS if c not in (PretrainConfig, ToyPickTrainConfig)]


@pytest.mark.parametrize("cls,name", RUN_FIELDS, ids=[f"{c.__name__}.{n}" for c, n in RUN_FIELDS])
@SETTINGS
@given(data=st.data())
def test_bench_run_refuses_a_wrong_recipe_before_any_work(cls, name, data):
    """`bench run --config FILE` with one wrong field (a [train] or [eval] value, a top-level
    one, a [method_overrides.<method>] one): one error line naming it, exit 1, no run directory."""
    value = data.draw(bad_values(_hint(cls, name)))
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "recipe.toml", Path(tmp) / "run"
        path.write_text(_toml(cls, name, value), encoding="utf-8")
        result = runner.invoke(app, ["run", "--config", str(path), "--out", str(out)])
        line = _one_error_line(result)
        assert name in line, line
        assert not out.exists()


TEXT_FIELDS = [(c, n) for c, n in RUN_FIELDS if c is TrainConfig or c in METHOD_CONFIGS.values()]


@pytest.mark.parametrize("cls,name", TEXT_FIELDS, ids=[f"{c.__name__}.{n}" for c, n in TEXT_FIELDS])
@SETTINGS
@given(data=st.data())
def test_a_wrong_method_setting_on_the_command_line_is_one_line(cls, name, data):
    """`--methods NAME@key=value` typed as text: read as the field's type, refused as in a file."""
    base = split(_hint(cls, name))[0]
    value = data.draw(bad_values(_hint(cls, name)))
    if base is str or (type(None) in typing.get_args(base) and isinstance(value, str)):
        return  # any text is a string: there the file test above holds
    text = toml_value(value).strip('"') if not isinstance(value, (list, dict)) else toml_value(value)
    try:
        parse(text, _hint(cls, name), name)
        return  # text that reads as a good value ('0' for a number, a,b for a list of strings) is one
    except FieldError:
        pass
    if any(c in text for c in "@,=") or not text.strip() and base is str:
        return  # those separate methods and settings
    method = next((m for m, c in METHOD_CONFIGS.items() if c is cls), "grpo")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        result = runner.invoke(app, ["run", "--methods", f"{method}@{name}={text}", "--preset", "smoke",
                                     "--out", str(out)])
        line = _one_error_line(result)
        assert name in line, line
        assert not out.exists()
