"""The result files, typed: what the run writes and what reports, live logging and tests read.

    eval/<epoch>.json, base/seed<k>/eval.json   EvalRecord   (metrics + each benchmark's result)
    <cell>/result.json                          CellResult   (final and base evaluations, cost)
    manifest.json                               Manifest     (command, config, versions, sessions)
    metrics.jsonl keys k<k>/[i<j>/]<name>       diag_key / parse_diag_key

Every file carries `schema`. Files written before the schema existed (no key) are schema 1
and still read: their evaluations were the toy benchmark's, laid out flat, and the toy world
registers their upgrade (`upgrade`). A file of a newer
schema than this code knows is one line naming the version it needs.

A `Metric` describes itself (title, higher-is-better, digits, role, per-prompt values where
they pair across models), so reports build columns from the files alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from flowarena.core.errors import FlowArenaError

SCHEMA = 2
ROLES = ("primary", "detail", "secondary")
"""primary: the in-domain headline (the table's first columns, paired against the base model);
detail: its breakdown (skills, atom counts); secondary: out-of-domain scores."""


class ResultSchemaError(FlowArenaError, ValueError):
    """A result file this code cannot read (newer schema, or not a result file)."""


@dataclass
class Metric:
    key: str
    """Column name in tables and CSV (unique within a run)."""
    title: str
    value: float
    stderr: float | None = None
    """Over prompts; None where the benchmark has none (per skill)."""
    n: int | None = None
    higher_is_better: bool | None = True
    digits: int | None = 1
    """Decimals in tables (None: scientific notation)."""
    role: str = "primary"
    benchmark: str = ""
    paired: bool = False
    """`per_prompt` holds values on the same prompts and noise for every model: ΔX vs base."""
    per_prompt: list[float] | None = None
    log_name: str | None = None
    """Its name in live logs (`eval/<log_name>`; default: the key)."""


@contextmanager
def _malformed(what: str):
    """A file whose keys or types are not those of its record: one ResultSchemaError line."""
    try:
        yield
    except (KeyError, TypeError, AttributeError) as e:  # AttributeError: a string where a table belongs
        raise ResultSchemaError(f"{what} ({type(e).__name__}: {e})") from None


def _from_fields(cls, d: dict):
    if not isinstance(d, dict):  # valid JSON of another kind ("x", a list) where a record belongs
        raise TypeError(f"a {type(d).__name__} where an object belongs")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def _check_schema(d: dict, what: str) -> int:
    if not isinstance(d, dict):
        raise ResultSchemaError(f"{what} is not a JSON object")
    schema = d.get("schema", 1)
    if not isinstance(schema, int) or schema > SCHEMA:
        raise ResultSchemaError(f"{what} has result schema {schema}; this FlowArena reads schemas "
                                f"1-{SCHEMA}: upgrade it (pip install -U flowarena) to read this run")
    return schema


# --- evaluations ------------------------------------------------------------------------------
@dataclass
class EvalRecord:
    metrics: list[Metric]
    benchmarks: dict[str, dict]
    """Each benchmark's full result (per prompt, per skill, settings), by benchmark name."""
    kl_to_pretrained: dict | None = None
    epoch: int | None = None
    wall_seconds: float | None = None
    schema: int = SCHEMA

    def metric(self, key: str) -> Metric | None:
        return next((m for m in self.metrics if m.key == key), None)

    @property
    def paired(self) -> Metric | None:
        """The primary metric whose per-prompt values pair with the base model's (ΔGM)."""
        return next((m for m in self.metrics if m.paired and m.role == "primary"), None)

    @property
    def kl(self) -> float | None:
        return None if self.kl_to_pretrained is None else self.kl_to_pretrained.get("mean")

    def to_json(self) -> dict:
        out = {"schema": self.schema, "epoch": self.epoch, "wall_seconds": self.wall_seconds,
               "metrics": [asdict(m) for m in self.metrics], "benchmarks": self.benchmarks}
        if self.kl_to_pretrained is not None:
            out["kl_to_pretrained"] = self.kl_to_pretrained
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_json(cls, d: dict, what: str = "evaluation") -> EvalRecord:
        schema = _check_schema(d, what)
        d = _upgraded(d, schema, what)
        with _malformed(f"{what} is not an evaluation record"):
            return cls(metrics=[_from_fields(Metric, m) for m in d["metrics"]], benchmarks=d["benchmarks"],
                       kl_to_pretrained=d.get("kl_to_pretrained"), epoch=d.get("epoch"),
                       wall_seconds=d.get("wall_seconds"), schema=schema)


UPGRADES: dict[int, Callable[[dict], dict]] = {}
"""schema k -> the function that turns an evaluation record of schema k into one of schema k + 1.
The task whose results an old schema held registers it (schema 1: the toy world's), so the
foundation reads old runs without knowing any benchmark."""


def upgrade(schema: int) -> Callable[[Callable[[dict], dict]], Callable[[dict], dict]]:
    """Decorator: register the upgrade of an evaluation record from `schema` to `schema + 1`."""
    def deco(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
        UPGRADES[schema] = fn
        return fn
    return deco


def _upgraded(d: dict, schema: int, what: str) -> dict:
    while schema < SCHEMA:
        if schema not in UPGRADES:
            raise ResultSchemaError(f"{what} has result schema {schema}, and no loaded task reads it "
                                    "(import flowarena.tasks)")
        with _malformed(f"{what} is not an evaluation record of schema {schema}"):
            d, schema = UPGRADES[schema](d), schema + 1
    return d


# --- a cell's result --------------------------------------------------------------------------
@dataclass
class CellResult:
    """result.json: a finished method × seed cell (its mark of being done)."""
    method: str
    seed: int
    model: str
    epochs: int
    wall_seconds: float
    final: EvalRecord
    base: EvalRecord
    train_reward: dict
    """first (epoch 1's batch mean), first_stderr, last (mean of the last epochs), last_epochs."""
    reward: str = ""
    schema: int = SCHEMA

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(final=self.final.to_json(), base=self.base.to_json())
        return {"schema": d.pop("schema"), **d}

    @classmethod
    def from_json(cls, d: dict, what: str = "result.json") -> CellResult:
        _check_schema(d, what)
        with _malformed(f"{what} is not a cell result"):
            if not isinstance(d["train_reward"], dict):
                raise TypeError("train_reward is not an object")
            return cls(**{**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}},
                          "final": EvalRecord.from_json(d["final"], what),
                          "base": EvalRecord.from_json(d["base"], what), "schema": d.get("schema", 1)})


# --- the run's manifest -----------------------------------------------------------------------
@dataclass
class Manifest:
    command: str
    config: dict
    """methods, model, model_path, seeds, preset, resolved (the preset as run), model_options."""
    versions: dict
    status: str = "running"
    """running, stopped (interrupted or failed) or done."""
    started: str = ""
    resumed: list[str] = field(default_factory=list)
    sessions: list[dict] = field(default_factory=list)
    """One per session: its start, seconds, CPU and code version; `seconds` is their total."""
    seconds: float = 0.0
    processes: int = 1
    shards: dict[str, str] = field(default_factory=dict)
    """`--shard I/N` runs: each shard's status ("1/2": "done"); `status` is "done" once all are."""
    schema: int = SCHEMA

    def to_json(self) -> dict:
        d = asdict(self)
        for key, empty in (("resumed", []), ("processes", 1), ("shards", {})):
            if d[key] == empty:
                d.pop(key)
        return {"schema": d.pop("schema"), **d}

    @classmethod
    def from_json(cls, d: dict, what: str = "manifest.json") -> Manifest:
        _check_schema(d, what)
        if not isinstance(d.get("config"), dict):
            raise ResultSchemaError(f"{what} has no run configuration")
        return _from_fields(cls, {"command": "", "versions": {}, **d, "schema": d.get("schema", 1)})


def read_json(path: Path) -> dict:
    """A JSON object file (every result file is one), or a ResultSchemaError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ResultSchemaError(f"{path} is unreadable ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ResultSchemaError(f"{path} is not a JSON object")
    return data


# --- the names of per-step diagnostics in metrics.jsonl ---------------------------------------
_DIAG = re.compile(r"k(\d+)/(?:i(\d+)/)?([A-Za-z_]\w*)")


def diag_key(step: int, inner: int, name: str) -> str:
    """`k<step>/<name>` for the first pass over a batch, `k<step>/i<inner>/<name>` for later ones."""
    return f"k{step}/{name}" if inner == 0 else f"k{step}/i{inner}/{name}"


def parse_diag_key(key: str) -> tuple[int, int, str] | None:
    """(step, inner, name) of a per-step diagnostic key, None for any other metric."""
    m = _DIAG.fullmatch(key)
    return None if m is None else (int(m.group(1)), int(m.group(2) or 0), m.group(3))
