"""What a run trains and measures: presets as data, method variants.

A preset is a small TOML file (`harness/run/presets/<name>.toml`, or a user's own through
`bench run --config FILE`): top-level fields of `Preset`, a `[train]` table of `TrainConfig`
fields, an `[eval]` table of `EvalSettings` fields, and `[method_overrides.<method>]` tables
over the model's own calibration (`FlowModel.calibration`). `base = "default"` starts from
another preset; tables merge key by key, and a preset (or `--reward`) that names a reward starts
its `reward_options` afresh, since options belong to the reward. Command-line options override a
preset through the same merge.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from flowarena.core.errors import FlowArenaError
from flowarena.core.fields import Count, Limit, NonNegative, Positive, Steps, coerce, hints, parse
from flowarena.core.registry import Registry
from flowarena.methods import Method, build_method, get_method, method_names
from flowarena.methods.trainer import TrainConfig
from flowarena.models import MODELS
from flowarena.models.base import Precision

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "presets"


class RunError(FlowArenaError, ValueError):
    """A run cannot start or resume (bad preset, mismatched directory)."""


@dataclass
class EvalSettings:
    benchmarks: tuple[str, ...] = ("toy",)
    """What is measured between epochs and at the end (`bench benchmarks`); the first one's
    prompts also draw the sample grids and the KL to the pretrained model."""
    every: Count = 5
    """Evaluate after every this many epochs (and at the end)."""
    limit: Limit | None = None
    """Prompts of the in-domain set between epochs, spread evenly over it and so over atom
    counts (None: all; the toy eval split has 192, GenEval2's val split 800)."""
    ood_limit: Limit | None = None
    """Prompts of the out-of-domain set between epochs: the toy's ood split (96) for the toy
    preference score, the PickScore prompts for pickscore (None: all)."""
    final_limit: Limit | None = None
    """Prompts of the final evaluation of a benchmark with a test set of its own (geneval2:
    the official 800; pickscore: the parti-test prompts), spread evenly (None: all). The toy
    benchmark has none: its evaluation after the last epoch is the final one."""
    ood_prompts: str | None = None
    """PickScore's prompts instead of the shipped parti-test: a file, one prompt per line."""
    steps: Steps | None = None
    """ODE steps (None: the model's default)."""
    guidance: NonNegative | None = 1.0
    """CFG scale of evaluation images (None: the model's default; 1.0 = the no-CFG setting
    the toy presets train in)."""
    kl_prompts: Limit = 32
    """Prompts whose trajectories measure the KL to the pretrained model."""
    samples: Count = 8
    """Prompts drawn in the sample grids."""
    precision: Precision = "auto"
    """The evaluation images: "auto" as the model computes, "bf16" under bf16 autocast,
    "bf16-native" bf16 only on hardware with bf16 units (a CUDA card, a CPU with AVX-512-BF16 or
    AMX; elsewhere bf16 is emulated and far slower). The KL to the pretrained model stays in the
    model's precision; each benchmark's result records the precision it was computed in."""


@dataclass
class Preset:
    name: str
    description: str
    epochs: Count
    """Training epochs: each samples P·G trajectories and trains on them `inner_loops` times."""
    train: TrainConfig
    eval: EvalSettings
    reward: str = "toy-tifa"
    """Training reward: a name (`bench rewards`) or weights, e.g. toy-tifa=1,toy-pick=0.5."""
    train_prompts: str = "toy-train"
    """The training prompts: a shipped set (toy-train, geneval2-train, geneval2-val, …) or a
    file (GenEval2-format JSONL, GenEval metadata, or one prompt per line)."""
    reward_options: dict = field(default_factory=dict)
    model: str = "toy"
    """The model the recipe is for (`bench models`); a real model's recipe never runs on the
    toy model, nor the reverse."""
    resolution: Count | None = None
    """Image side in pixels of a diffusers model (None: the pipeline's default)."""
    methods: tuple[str, ...] = ("grpo", "dppo")
    """What `bench run --preset NAME` trains when `--methods` is not given."""
    seeds: Count = 1
    """Seeds per method when `--seeds` is not given."""
    compute_budget: Positive | None = None
    """Training compute per cell in forward-equivalents (a metrics row's `compute_fe`): each
    method trains while its next epoch fits, `epochs` at most, so methods get equal compute
    instead of equal epochs (None: every method trains `epochs`)."""
    method_overrides: dict[str, dict] = field(
        default_factory=lambda: {**MODELS.get(Preset.model).calibration})
    """Per-method settings of the method's config or of `[train]`, over the model's calibration:
    the toy's trust-region thresholds (the published ones target SD3.5 latents); on a real
    model, the recipe's exceptions to the published defaults (e.g. GRPO-Guard's lr)."""

    def to_data(self) -> dict:
        """The preset as plain data (what --dump-config writes and --config reads back)."""
        return json.loads(json.dumps(asdict(self)))


_TABLES = {"train": TrainConfig, "eval": EvalSettings}


# --- reading presets --------------------------------------------------------------------------
def build(cls, data: dict, where: str):
    """A dataclass from plain data: unknown fields and wrong types are one RunError line."""
    if not isinstance(data, dict):
        raise RunError(f"{where} must be a table")
    types = hints(cls)
    allowed = [f.name for f in fields(cls)]
    kw = {}
    for key, value in data.items():
        if key not in allowed:
            raise RunError(f"{where}: unknown field {key!r} (allowed: {', '.join(allowed)})")
        if key in _TABLES and cls is Preset:
            kw[key] = build(_TABLES[key], value, f"{where} [{key}]")
        else:
            kw[key] = coerce(value, types[key], f"{where}: field {key!r}", RunError)
    try:
        return cls(**kw)
    except TypeError:  # a required field is absent
        missing = [f.name for f in fields(cls) if f.name not in kw]
        raise RunError(f"{where}: missing field {missing[0]!r}") from None


def merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`: tables merge key by key, except `reward_options`, which a new
    `reward` replaces (options belong to the reward)."""
    out = dict(base)
    if "reward" in over and "reward_options" not in over:
        out["reward_options"] = {}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "reward_options":
            out[key] = merge(out[key], value) if key != "method_overrides" else {**out[key], **value}
        else:
            out[key] = value
    return out


def _defaults(model: str) -> dict:
    """Every field's default, so a preset file need only name what differs, and what the model
    declares a recipe for it starts from (its calibration, its LoRA defaults)."""
    cls = MODELS.get(model)
    return {"train": {**asdict(TrainConfig()), **cls.train_defaults}, "eval": asdict(EvalSettings()),
            "method_overrides": json.loads(json.dumps(cls.calibration)), "model": model}


def read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"config file {path} not found") from None
    except OSError as e:
        raise RunError(f"config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        # Windows editors save "UTF-8 with BOM", which TOML forbids: say so, not "invalid statement"
        bom = Path(path).read_bytes().startswith(b"\xef\xbb\xbf")
        hint = "the file starts with a byte-order mark; save it as UTF-8 without BOM" if bom else e
        raise RunError(f"config file {path} is not valid TOML ({hint})") from None


def preset_data(path: Path, seen: tuple[str, ...] = ()) -> dict:
    """A preset file's fields merged onto its base preset's (or the defaults)."""
    data = read_toml(path)
    base = data.pop("base", None)
    if base is None:
        start = _defaults(data["model"] if isinstance(data.get("model"), str) else Preset.model)
    elif not isinstance(base, str):
        raise RunError(f"{path}: field 'base' must name a preset (bench presets lists them)")
    elif base in seen:
        raise RunError(f"{path}: presets name each other as base in a circle ({' -> '.join(seen + (base,))})")
    elif not (PRESET_DIR / f"{base}.toml").is_file():
        raise RunError(f"{path}: base preset {base!r} does not exist (known: {', '.join(PRESETS.names())})")
    else:
        start = preset_data(PRESET_DIR / f"{base}.toml", seen + (base,))
        was, now = start["model"], data.get("model", start["model"])
        if MODELS.get(was).calibration != MODELS.get(now).calibration:  # calibrations stay with their model
            raise RunError(f"{path}: a recipe for {now} cannot start from {base!r}, a recipe for {was} "
                           f"(bench presets lists each model's)")
    return merge(start, data)


def load_preset(path: str | Path, name: str | None = None) -> Preset:
    """A preset from a TOML file (its name: the file's stem unless the file says)."""
    path = Path(path)
    data = preset_data(path)
    data.setdefault("name", name or path.stem)
    data.setdefault("description", f"the recipe in {path.name}")
    return check_preset(build(Preset, data, str(path)))


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)


def check_model(preset: Preset, model_name: str) -> None:
    """A recipe runs on the model it is written for (its thresholds, sizes and prompts are)."""
    if preset.model not in (model_name, MODELS.get(model_name).recipes_of):
        mine = [n for n, p in PRESETS.items() if p.model == model_name]
        hint = f"; recipes for {model_name}: {', '.join(mine)}" if mine else ""
        raise RunError(f"preset {preset.name} is a recipe for the {preset.model} model, not "
                       f"{model_name}{hint}")


def resolve(preset: str | Path | Preset, **overrides) -> Preset:
    """The preset as it will run: a registered name, a TOML file or a Preset, with the
    command line's overrides (`epochs`, `reward`, `reward_options` (added to the preset's),
    `train` / `eval` tables) merged on top the way a preset merges on its base."""
    if isinstance(preset, Preset):
        p = preset
    elif isinstance(preset, Path) or str(preset).endswith(".toml"):
        p = load_preset(Path(preset))
    else:
        p = get_preset(str(preset))
    over = {k: v for k, v in overrides.items() if v is not None and v != {}}
    if not over:
        return p
    if "reward_options" in over and "reward" not in over:
        over["reward_options"] = {**p.reward_options, **over["reward_options"]}
    data = merge(p.to_data(), over)
    return check_preset(build(Preset, data, f"preset {p.name}"))


# --- methods as --methods names them ------------------------------------------------------------
def split_methods(text: str) -> list[str]:
    """`--methods grpo,dppo@adam_betas=[0.9,0.99]` as its specs: commas inside brackets stay."""
    specs, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth <= 0:
            specs.append(text[start:i].strip())
            start = i + 1
    return [s for s in specs if s]


def _settings(name: str, given: dict, where: str, typed: bool) -> tuple[dict, dict]:
    """A method's settings split into its config's and the trainer's, each read as its field's
    type (`typed`: TOML values; else text from the command line) and checked against its range."""
    method_types, train_types = hints(get_method(name).Config), hints(TrainConfig)
    method_kw, train_kw = {}, {}
    for key, value in given.items():
        if key not in method_types and key not in train_types:
            raise RunError(f"{where}: neither {name} nor the trainer has a setting {key!r}")
        types, out = (method_types, method_kw) if key in method_types else (train_types, train_kw)
        out[key] = (coerce if typed else parse)(value, types[key], f"{where}: {key}", RunError)
    return method_kw, train_kw


def method_variant(spec: str, preset: Preset) -> tuple[Method, TrainConfig]:
    """A method as `--methods` names it: a registered name, optionally with settings that
    differ from the preset, `name@key=value@…` (e.g. `dppo@delta=3e-6`, `dppo@beta=0.04`).
    Keys of the method's config go to the method, keys of `TrainConfig` to the trainer;
    the preset's `method_overrides` for the method (the toy calibration) apply first."""
    name, *items = spec.split("@")
    method_kw, train_kw = _settings(name, preset.method_overrides.get(name, {}),
                                    f"preset {preset.name}: [method_overrides.{name}]", typed=True)
    given: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RunError(f"{spec!r}: write settings as name@key=value, e.g. dppo@delta=3e-6")
        if key in given:
            raise RunError(f"{spec!r}: {key!r} is set twice")
        given[key] = raw
    more_method, more_train = _settings(name, given, repr(spec), typed=False)
    train = replace(preset.train, **{**train_kw, **more_train})
    train.validate()
    return build_method(name, **{**method_kw, **more_method}), train


def check_methods(specs, preset: Preset, schedule: bool = True) -> list[str]:
    """The methods a run trains, checked before any work: at least one, none twice, each a
    registered method whose settings are valid (and fit the run's schedule: a preset's epochs
    may still change on the command line)."""
    specs = list(specs)
    if not specs:
        raise RunError("no methods to run: name at least one (bench methods lists them)")
    for i, spec in enumerate(specs):
        if spec in specs[:i]:
            raise RunError(f"method {spec!r} is named twice; for more runs of one method use --seeds")
        method, train = method_variant(spec, preset)
        method.check_train(train)  # e.g. a forward-process method and a group's shared noise
        if schedule:
            train.check_schedule(preset.epochs)
    return specs


def check_preset(preset: Preset) -> Preset:
    """A preset whose every part is valid: the trainer's settings, each `[method_overrides]`
    table (a registered method, its settings typed and in range, even for a method this run
    leaves out: a typo must not wait for the day it is run) and its methods."""
    preset.train.validate()
    for name, settings in preset.method_overrides.items():
        where = f"preset {preset.name}: [method_overrides.{name}]"
        if not isinstance(settings, dict):
            raise RunError(f"{where} must be a table of settings")
        if name not in method_names():
            raise RunError(f"{where}: unknown method {name!r} (bench methods lists them)")
        method_kw, train_kw = _settings(name, settings, where, typed=True)
        build_method(name, **method_kw)
        replace(preset.train, **train_kw).validate()
    check_methods(preset.methods, preset, schedule=False)
    return preset


def upgrade_cell_config(saved: dict, current: dict) -> dict:
    """A cell's config as recorded by older code, with what was added since: the fields of
    `upgrade_resolved`, `trust_region`, derived from the method's config, and `base`."""
    saved = upgrade_resolved(saved)
    # `base`: the run's base weights were checked against its manifest (its model path alone,
    # where older code recorded no more) before any cell resumes
    for key, value in (("trust_region", current.get("trust_region")), ("train_prompts", "toy-train"),
                       ("base", current.get("base"))):
        if key not in saved and key in current:
            saved = {**saved, key: value}
    method_config = saved.get("method_config")
    if isinstance(method_config, dict) and "reweight_dt" in method_config and "bias" not in method_config:
        # GRPO-Guard's RatioNorm b was per sample before it became a setting
        saved = {**saved, "method_config": {**method_config, "bias": "sample"}}
    return saved


def upgrade_resolved(resolved: dict, model_options: dict | None = None) -> dict:
    """A resolved preset as recorded by older code, with the fields added since at the values
    that code used (so an interrupted run of an older version resumes). A cell's config
    has the same `eval` table."""
    if isinstance(resolved, dict) and isinstance(resolved.get("eval"), dict):
        added = {"benchmarks": ["toy"], "final_limit": None, "ood_prompts": None, "precision": "auto"}
        resolved = {**resolved, "eval": {**added, **resolved["eval"]}}
        if isinstance(resolved.get("train"), dict):  # the memory knobs: whole batches before them
            resolved["train"] = {"micro_batch": None, "rollout_batch": None, "gradient_checkpointing": False,
                                 "offload_text_encoders": False, "prompt_cache_gb": 8.0,
                                 "trained_precision": "auto", "ode_precision": "auto", "solver": "euler",
                                 # the schedule and EMA: a constant lr and none before them
                                 "lr_schedule": "constant", "warmup_steps": 0, "min_lr_ratio": 0.0,
                                 "ema_decay": None, "ema_every": 8,  # and a measurement, taken up:
                                 "baseline_groups": TrainConfig.baseline_groups, **resolved["train"]}
        if "method_overrides" in resolved:  # a whole preset, not a cell's config
            resolved.setdefault("train_prompts", "toy-train")  # before the option: the toy split
            resolved.setdefault("model", "toy")
            resolved.setdefault("resolution", (model_options or {}).get("resolution"))
    return resolved


# --- the shipped presets -----------------------------------------------------------------------
def size(p: Preset) -> int:
    """Denoiser steps of all rollouts: `bench presets` lists each model's, small to large."""
    t = p.train
    return p.epochs * t.prompts_per_epoch * t.group_size * t.steps * p.seeds * len(p.methods)


PRESETS: Registry[Preset] = Registry("preset", RunError)  # a preset is one file in presets/
_shipped = {f.stem: load_preset(f) for f in PRESET_DIR.glob("*.toml")}
_least = {m: min(size(p) for p in _shipped.values() if p.model == m)
          for m in {p.model for p in _shipped.values()}}
for _n, _p in sorted(_shipped.items(),
                     key=lambda n_p: (_least[n_p[1].model], n_p[1].model, size(n_p[1]), n_p[0])):
    PRESETS.add(_n, _p)
