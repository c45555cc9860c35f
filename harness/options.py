"""Command-line options generated from the configuration dataclasses, so that a setting is
declared once: a field's name is its flag, its type hint what the flag takes, its docstring
the help. `TrainConfig.lr` is `--lr`, `EvalSettings.limit` is `--eval-limit`, the preset's
`epochs` is `--epochs`; a new trainer field is a new option of `bench run` with no other edit,
as it is a new preset key and a new `--dump-config` line.

A command takes them with `@settings(...)` and receives what the user gave, read by
`core.fields.parse` (the same reader as `--methods grpo@lr=...`), as the preset's overrides.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, fields
from functools import cache

import typer

from flowarena.core.fields import describe, hints, parse, split


@dataclass(frozen=True)
class Setting:
    """One generated option: the field `name` of the `section` table ("" = the preset's top level)."""
    section: str
    name: str
    hint: object
    doc: str

    @property
    def key(self) -> str:  # the command function's parameter
        return f"{self.section}_{self.name}" if self.section == "eval" else self.name

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def where(self) -> str:  # where the preset file holds it
        return f"{self.section}.{self.name}" if self.section else self.name


@cache
def field_docs(cls) -> dict[str, str]:
    """Each field's docstring (the string right below it in the class body), parents first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError, IndexError, AttributeError):
            continue
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def settings_of(cls, section: str, skip: tuple[str, ...] = ()) -> list[Setting]:
    types, docs = hints(cls), field_docs(cls)
    return [Setting(section, f.name, types[f.name], docs.get(f.name, "")) for f in fields(cls)
            if f.name not in skip]


def _is_flag(hint) -> bool:
    base = split(hint)[0]
    args = [a for a in typing.get_args(base) if a is not type(None)]
    return base is bool or (args == [bool])


PANELS = {"": "Recipe (a preset file's top level)", "train": "Training (the train table of a preset file)",
          "eval": "Evaluation (the eval table of a preset file)"}


def _parameter(s: Setting) -> inspect.Parameter:
    help_text, panel = f"{s.where}: {s.doc}" if s.doc else s.where, PANELS[s.section]
    if _is_flag(s.hint):
        option = typer.Option(None, f"{s.flag}/--no-{s.flag[2:]}", help=help_text, show_default=False,
                              rich_help_panel=panel)
        annotation = typing.Optional[bool]  # noqa: UP045 - typer reads the annotation at run time
    else:
        option = typer.Option(None, s.flag, help=f"{help_text} [{describe(s.hint)}]", show_default=False,
                              metavar=_metavar(s.hint), rich_help_panel=panel)
        annotation = typing.Optional[str]  # noqa: UP045 - read by `parse` as the field's type
    return inspect.Parameter(s.key, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _metavar(hint) -> str:
    base = split(hint)[0]
    if typing.get_origin(base) in (typing.Union, types.UnionType):  # an optional: its inner type
        base = split(next(a for a in typing.get_args(base) if a is not type(None)))[0]
    inner = base
    if typing.get_origin(inner) is typing.Literal:
        return "[" + "|".join(map(str, typing.get_args(inner))) + "]"
    return {int: "INT", float: "NUMBER", str: "TEXT"}.get(inner, "LIST")


def settings(*groups: list[Setting]):
    """Add the settings' options to a command after its own parameters; the command takes them
    as `**given` and turns them into overrides with `overrides`."""
    generated = [_parameter(s) for group in groups for s in group]

    def wrap(fn):
        own = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
        taken = {p.name for p in own} & {p.name for p in generated}
        assert not taken, f"options declared twice: {taken}"  # a field named like a command option
        fn.__signature__ = inspect.Signature(own + generated)
        return fn

    return wrap


def overrides(given: dict, *groups: list[Setting], error: type[Exception]) -> dict:
    """The options the user gave, read as their fields' types: {field: value} for the preset's
    top level, {"train": {...}, "eval": {...}} for its tables (an empty table is left out)."""
    out: dict = {}
    for group in groups:
        for s in group:
            raw = given.get(s.key)
            if raw is None:
                continue
            value = raw if isinstance(raw, bool) else parse(raw, s.hint, s.flag, error)
            (out.setdefault(s.section, {}) if s.section else out)[s.name] = value
    return out
