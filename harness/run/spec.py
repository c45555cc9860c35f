"""A `bench run` resolved before any work: `RunSpec`.

`plan` turns what a user gives (a preset name or file, the command line's overrides, methods,
seeds, a model and its weights, devices) into one object: the preset as it will run and how
to run it. `run_experiment` takes it; the processes that `--jobs` and `--nproc` start read it
back from the file their parent wrote (`harness/launch.py`), so every worker runs exactly
what was resolved once, not a command line edited for it.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flowarena.core.io import write_json
from flowarena.core.results import read_json
from flowarena.harness.run.config import (
    Preset,
    RunError,
    build,
    check_methods,
    check_model,
    check_preset,
    resolve,
)
from flowarena.models import MODELS

SCHEMA = 1


@dataclass
class RunSpec:
    """What runs (the resolved preset, its methods and seeds), on which model and weights, where
    (the run directory, devices) and what the report pairs against."""
    out: Path
    preset: Preset
    model: str
    methods: list[str]
    """Method specs as `--methods` gives them (`dppo@delta=1e-6`)."""
    seeds: int
    model_path: str | None = None
    device: str = "cpu"
    reward_device: str | None = None
    """Where the rewards and the benchmarks' scorers run (None: `device`)."""
    log_to: str | None = None
    reference: str | None = None
    """The method the report pairs the others against (None: grpo where it runs)."""
    command: str = field(default_factory=lambda: " ".join(["bench", *sys.argv[1:]]))

    def to_json(self) -> dict:
        data = asdict(self)
        return {"schema": SCHEMA, **data, "out": str(self.out), "preset": self.preset.to_data()}

    @classmethod
    def from_json(cls, data: dict, where: str = "run spec") -> RunSpec:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise RunError(f"{where} is not a run specification of schema {SCHEMA}")
        data = {k: v for k, v in data.items() if k != "schema"}
        preset = check_preset(build(Preset, data.pop("preset"), where))
        return cls(**{**data, "out": Path(data["out"]), "preset": preset})

    def write(self, path: Path) -> Path:
        write_json(path, self.to_json())
        return path

    @classmethod
    def read(cls, path: Path) -> RunSpec:
        return cls.from_json(read_json(path), str(path))


def recipe(model_name: str | None, preset: str | Path | Preset | None, **overrides) -> tuple[str, Preset]:
    """The model and the resolved preset a run trains: without a preset, the model's own recipe
    (`default_preset`: `default` for the toy, the published one for sd35 / FLUX); without a
    model, the one the preset is written for. A recipe for another model is a RunError."""
    if preset is None:
        preset = MODELS.get(model_name or Preset.model).default_preset
    p = resolve(preset, **overrides)
    model_name = model_name or p.model
    MODELS.get(model_name)  # an unknown model is one line
    check_model(p, model_name)
    return model_name, p


def plan(out: str | Path | None = None, methods: list[str] | None = None, model: str | None = None,
         preset: str | Path | Preset | None = None, seeds: int | None = None, model_path: str | None = None,
         *, device: str = "cpu", reward_device: str | None = None, log_to: str | None = None,
         reference: str | None = None, command: str | None = None, **overrides) -> RunSpec:
    """The run of `methods` × `seeds` (None: the preset's) into `out` (None: runs/<preset>).
    `model` / `preset`: as `recipe` says; `overrides` (epochs, reward, reward_options,
    train_prompts, resolution, train, eval) change the preset as `config.resolve` says."""
    model, p = recipe(model, preset, **overrides)
    methods = list(p.methods if methods is None else methods)
    seeds = p.seeds if seeds is None else seeds
    check_methods(methods, p)  # none, twice, unknown names and settings: before any work
    if seeds < 1:
        raise RunError("--seeds must be at least 1")
    if reference is not None and reference not in methods:
        raise RunError(f"--reference {reference} is not among the methods run ({', '.join(methods)})")
    spec = RunSpec(Path(out) if out is not None else Path("runs") / p.name, p, model, methods, seeds,
                   model_path, device, reward_device, log_to, reference)
    if command is not None:
        spec.command = command
    return spec
