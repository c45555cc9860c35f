"""Command-line options generated from the configuration dataclasses, so that a setting is
declared once: a field's name is its flag, its type hint what the flag takes, its docstring
the help. `TrainConfig.lr` is `--lr`, `EvalSettings.limit` is `--eval-limit`, the preset's
`epochs` is `--epochs`; a new trainer field is a new option of `bench run` with no other edit,
as it is a new preset key and a new `--dump-config` line. `bench eval`'s options are the fields
of `EvalRequest`, what a benchmark's `evaluate` reads.

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

from flowarena.core.fields import coerce, describe, hints, parse, split
from flowarena.harness.oneline import BadInput


@dataclass(frozen=True)
class Setting:
    """One generated option: the field `name` of the `section` table ("" = the preset's top level;
    None: no preset's, a command's own dataclass such as `bench eval`'s `EvalRequest`)."""
    section: str | None
    name: str
    hint: object
    doc: str
    panel: str

    @property
    def key(self) -> str:  # the command function's parameter
        return f"{self.section}_{self.name}" if self.section == "eval" else self.name

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def help(self) -> str:  # the docstring, after where a preset file holds it
        where = None if self.section is None else f"{self.section}.{self.name}" if self.section else self.name
        return f"{where}: {self.doc}" if where and self.doc else where or self.doc


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


def settings_of(cls, section: str | None, skip: tuple[str, ...] = (),
                panel: str | None = None) -> list[Setting]:
    types, docs = hints(cls), field_docs(cls)
    return [Setting(section, f.name, types[f.name], docs.get(f.name, ""), panel or PANELS[section])
            for f in fields(cls) if f.name not in skip]


def _is_flag(hint) -> bool:
    base = split(hint)[0]
    args = [a for a in typing.get_args(base) if a is not type(None)]
    return base is bool or (args == [bool])


PANELS = {"": "Recipe (a preset file's top level)", "train": "Training (the train table of a preset file)",
          "eval": "Evaluation (the eval table of a preset file)"}


def _parameter(s: Setting) -> inspect.Parameter:
    help_text, panel = s.help, s.panel
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
        if taken:  # a new field named like one of the command's own options: a bug, not a user's mistake
            raise TypeError(f"{fn.__name__}: options declared twice: {sorted(taken)}")
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
            (out.setdefault(s.section, {}) if s.section else out)[s.name] = value  # None, "": top level
    return out


# --- options several commands share ---------------------------------------------------------
ModelOpt = typer.Option("toy", "--model", "-m", help="Model to use (toy: the embedded 32x32 model).")
PathOpt = typer.Option(None, "--model-path", help="Weights file or directory (default: shipped).")
StepsOpt = typer.Option(None, "--steps", help="ODE sampling steps (default: the model's, 20 for toy).")
GuidanceOpt = typer.Option(None, "--guidance", "-g",
                           help="Classifier-free guidance scale (1.0 = no CFG; toy default 4.5).")


ResolutionOpt = typer.Option(None, "--resolution",
                             help="Image side in pixels for sd35/FLUX (default: the pipeline's, "
                                  "1024 for the released models; the Flow-GRPO recipes train at 512).")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (the toy model is made for cpu).")


def check_values(**given) -> None:
    """Command-line values that are no preset field, checked by the same contract (the name,
    the value and what is allowed, in one line): `name=(value, type)`."""
    for name, (value, hint) in given.items():
        if value is not None:  # None: not given
            coerce(value, hint, f"--{name.replace('_', '-')}", BadInput)



JudgeOpt = typer.Option(None, "--judge", help="VQA judge of geneval2 / vqascore: a hub id or a directory "
                                             "(default Qwen/Qwen3-VL-8B-Instruct).")
ReferenceOpt = typer.Option(None, "--reference",
                            help="The method every other is compared with, paired over seeds and prompts "
                                 "with 95 % intervals (default: grpo where it runs).")
JudgeUrlOpt = typer.Option(None, "--judge-url",
                           help="Ask the --judge served at this OpenAI-compatible endpoint (vLLM, sglang; "
                                "e.g. http://HOST:8000/v1) instead of loading it here.")
DetectorOpt = typer.Option(None, "--detector",
                           help="GenEval's detector, a COCO-instance Mask2Former id or directory "
                                "(default facebook/mask2former-swin-small-coco-instance), or GenEval's "
                                "own through mmdet: mmdet:CONFIG:CHECKPOINT.")
ClipOpt = typer.Option(None, "--clip", help="GenEval's colour model, a CLIP id or directory "
                                            "(default openai/clip-vit-large-patch14), or through "
                                            "open_clip: open_clip:ViT-L-14:openai.")
PickOpt = typer.Option(None, "--pickscore", help="PickScore model id or directory (default "
                                                 "yuvalkirstain/PickScore_v1).")
PickProcOpt = typer.Option(None, "--pickscore-processor",
                           help="Its processor (default: the --pickscore directory if given, else "
                                "laion/CLIP-ViT-H-14-laion2B-s32B-b79K).")


SCORERS = {"judge": JudgeOpt, "judge_url": JudgeUrlOpt, "detector": DetectorOpt, "clip": ClipOpt,
           "pickscore": PickOpt, "pickscore_processor": PickProcOpt}
"""The scorers' model options (`bench eval` and `bench run`), named as the rewards' and the
benchmarks' constructors name them."""


def with_scorers(fn):
    """Add the SCORERS options to a command after its own; it takes them in `**given` and
    passes on `scorers(given)`."""
    own = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
    fn.__signature__ = inspect.Signature(own + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                          annotation=typing.Optional[str])  # noqa: UP045 - typer reads it at run time
        for name, option in SCORERS.items()])
    return fn


def scorers(given: dict) -> dict:
    """The scorer options the user gave."""
    return {k: given[k] for k in SCORERS if given.get(k) is not None}

