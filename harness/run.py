"""`bench run`: methods × seeds on one model, each trained by the common trainer and
evaluated on the same prompts, noise and metrics; results in a run directory.

    runs/<name>/
      manifest.json                       command, resolved config, versions, status
      <model>/base/seed<k>/eval.json      the pretrained model, evaluated once per seed
      <model>/<method>/seed<k>/
        config.json  metrics.jsonl  diagnostics/epoch_XXXX.safetensors
        eval/<epoch>.json  checkpoints/latest/  samples/  result.json
      report/ tables.md tables.csv

A cell with `result.json` is finished and never recomputed; an unfinished one resumes
from `checkpoints/latest`. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.evaluate import full_eval, kl_to_pretrained, subset
from harness.io import (
    _atomic,
    load_optimizer,
    load_tensors,
    optimizer_tensors,
    save_tensors,
    write_json,
    write_jsonl,
)
from harness.live import check_log_to, eval_scalars, open_live_log, scalars
from harness.prompts import load_toy_split
from methods import Method, build_method, dist, get_method
from methods.trainer import TrainConfig, Trainer, TrainingFault
from models import check_device, check_options, load_model
from reports.grid import save_grid
from rewards import build_rewards, check_rewards

EVAL_SEED = 1234  # the evaluation noise: the same for every method, seed and epoch


class RunError(ValueError):
    """A run cannot start or resume (bad preset, mismatched directory)."""


@dataclass
class EvalSettings:
    every: int = 5
    """Evaluate after every this many epochs (and at the end)."""
    limit: int | None = None
    """Prompts of the eval split (None: all 192)."""
    ood_limit: int | None = None
    """Prompts of the ood split for the preference score (None: all 96)."""
    steps: int | None = None
    """ODE steps (None: the model's default)."""
    guidance: float | None = 1.0
    """CFG scale of evaluation images (None: the model's default; 1.0 = the no-CFG setting
    the toy presets train in)."""
    kl_prompts: int = 32
    """Eval prompts whose trajectories measure the KL to the pretrained model."""
    samples: int = 8
    """Eval prompts drawn in the sample grids."""


@dataclass
class Preset:
    name: str
    description: str
    epochs: int
    train: TrainConfig
    eval: EvalSettings
    reward: str = "toy-tifa"
    reward_options: dict = field(default_factory=dict)
    methods: tuple[str, ...] = ("grpo", "dppo")
    """What `bench run --preset NAME` trains when `--methods` is not given."""
    seeds: int = 1
    """Seeds per method when `--seeds` is not given."""
    method_overrides: dict[str, dict] = field(default_factory=lambda: dict(TOY_CALIBRATION))
    """Per-method settings for the toy model (the published ones target SD3.5 latents);
    other models train with the published defaults."""


# The toy world's trust-region thresholds: on the `default` setting (I = 1, so the second
# mini-batch of each epoch is the off-policy one), each removes the gradient of about 10 %
# of the off-policy steps (toy-world.md asks for 5–30 %). Measured on runs whose trust
# region never binds, with `benchmarks/calibrate.py` (the README's "Calibration" has the
# command and the shares). The published values (SD3.5 latents: 1e-4, 2e-6, 1e-5) clip or
# mask nothing here except cps's, which makes grpo, guard and dppo the same algorithm.
TOY_CALIBRATION: dict[str, dict] = {
    "grpo": {"clip_range": 5e-6},  # removes 14.1 % of off-policy steps
    "cps": {"clip_range": 1e-5},  # 10.0 % (the published value happens to fit)
    "guard": {"clip_range": 5e-6},  # 9.3 %
    "dppo": {"delta": 1e-7},  # 7.7 %
    "dppo-cps": {"delta": 1e-7},  # 8.9 %: the CPS KL scale matches (methods/sde.py)
    "dppo-sym": {"delta": 1e-7},  # dppo's δ, both sides: 15.0 %
    "dppo-sampled-kl": {"delta": 3e-11},  # ½(log ρ)² is ~KL/D: δ giving dppo's share, 7.5 %
}

_DEFAULT_TRAIN = TrainConfig(prompts_per_epoch=8, group_size=8, minibatch_size=32, lr=1e-3,
                             window_fraction=0.3, group_noise="shared")
_DEFAULT_EVAL = EvalSettings(every=12, limit=96, ood_limit=48, steps=10, kl_prompts=16)
_MAIN = ("grpo", "cps", "guard", "dppo", "dppo-cps")


def _experiment(name: str, description: str, **kw) -> Preset:
    """A paper experiment on the toy world: the default setting, 3 seeds, its own methods."""
    base = dict(epochs=24, train=_DEFAULT_TRAIN, eval=_DEFAULT_EVAL, seeds=3,
                reward_options={"aggregate": "am"})
    return Preset(name, description, **{**base, **kw})


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        "smoke", "a first look in about a minute per method (tests use it)", epochs=2,
        train=TrainConfig(prompts_per_epoch=2, group_size=4, minibatch_size=8, steps=6, sde_window=2),
        eval=EvalSettings(every=2, limit=16, ood_limit=8, steps=6, kl_prompts=4, samples=4)),
    "sanity": Preset(
        "sanity", "an easy reward (share of pixels in the prompt's colours) that any working "
                  "method raises quickly", epochs=12,
        train=TrainConfig(prompts_per_epoch=8, group_size=8, minibatch_size=32, lr=1e-3),
        eval=EvalSettings(every=4, limit=32, ood_limit=16, steps=10, kl_prompts=8),
        reward="toy-colour"),
    "default": Preset(
        "default", "the toy comparison on the compositional reward (≈ 9 min for two methods)",
        epochs=24, train=_DEFAULT_TRAIN, eval=_DEFAULT_EVAL, reward_options={"aggregate": "am"}),
    # The paper's experiments, one command each, sized for ≤ 90 min on 2 cores.
    "main": _experiment(
        "main", "paper experiment: the main table, every method on the judge's reward, 3 seeds",
        methods=_MAIN),
    "main-multi": _experiment(
        "main-multi", "paper experiment: the main table on two rewards (judge + preference "
                      "model, each normalised per group), 3 seeds",
        methods=_MAIN, reward="toy-tifa=1,toy-pick=1", reward_options={},
        train=replace(_DEFAULT_TRAIN, reward_aggregation="normalised")),
    "stability": _experiment(
        "stability", "paper experiment: multi-epoch stability, two passes per batch (I = 2) "
                     "over twice as many epochs, 3 seeds",
        methods=("grpo", "dppo"), epochs=48, train=replace(_DEFAULT_TRAIN, inner_loops=2),
        eval=replace(_DEFAULT_EVAL, every=12)),
    "ablation": _experiment(
        "ablation", "paper experiment: what the mask is made of (symmetric mask, sampled KL, "
                    "no trust region), 3 seeds",
        methods=("dppo", "dppo-sym", "dppo-sampled-kl", "grpo-noclip")),
    "sweep": _experiment(
        "sweep", "paper experiment: DPPO's δ (a decade either side) and β, 3 seeds",
        methods=("dppo@delta=1e-8", "dppo", "dppo@delta=1e-6", "dppo@beta=0.04", "dppo@beta=1")),
    "paper": Preset(
        "paper", "the full comparison: longer, full eval splits (hours on 2 cores)", epochs=60,
        train=TrainConfig(prompts_per_epoch=16, group_size=8, minibatch_size=32, lr=1e-3,
                          inner_loops=2, window_fraction=0.3, group_noise="shared"),
        eval=EvalSettings(every=10, steps=20, kl_prompts=32), methods=_MAIN, seeds=3,
        reward_options={"aggregate": "am"}),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise RunError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def _versions() -> dict:
    import diffusers
    import peft

    return {"python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "peft": peft.__version__, "flowarena": _commit()}


def _commit() -> str | None:
    """The code's git commit (with '+dirty' for uncommitted changes), None outside a checkout."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


_TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


def method_variant(spec: str, preset: Preset, model_name: str = "toy") -> tuple[Method, TrainConfig]:
    """A method as `--methods` names it: a registered name, optionally with settings that
    differ from the preset, `name@key=value@…` (e.g. `dppo@delta=3e-6`, `dppo@beta=0.04`).
    Keys of the method's config go to the method, keys of `TrainConfig` to the trainer;
    on the toy model, the preset's calibration for the method applies first."""
    name, *items = spec.split("@")
    calibrated = preset.method_overrides.get(name, {}) if model_name == "toy" else {}
    method_kw, train_kw = dict(calibrated), {}
    method_fields = {f.name for f in fields(get_method(name).Config)}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RunError(f"{spec!r}: write settings as name@key=value, e.g. dppo@delta=3e-6")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in method_fields:
            method_kw[key] = value
        elif key in _TRAIN_FIELDS:
            train_kw[key] = value
        else:
            raise RunError(f"{spec!r}: neither {name} nor the trainer has a setting {key!r}")
    train = replace(preset.train, **train_kw)
    train.validate()
    return build_method(name, **method_kw), train


def evaluate_policy(model, preset: Preset, records_eval: list[dict], method: Method | None = None,
                    train: TrainConfig | None = None) -> dict:
    """Soft-TIFA (in-domain), preference (ood) and the KL to the pretrained model along the
    method's sampler (0 for the pretrained model itself: `method=None`)."""
    ev, tc = preset.eval, train or preset.train
    out = full_eval(model, steps=ev.steps, guidance=ev.guidance, seed=EVAL_SEED, limit=ev.limit,
                    ood_limit=ev.ood_limit)
    if method is not None:
        kl_ref = kl_to_pretrained(model, subset(records_eval, ev.kl_prompts),
                                  sampler=method.config.sampler, eta=method.config.eta,
                                  steps=tc.steps, guidance=tc.guidance, seed=EVAL_SEED)
    else:
        kl_ref = {"mean": 0.0, "stderr": 0.0, "per_step": [0.0] * tc.steps, "n": 0,
                  "unit": "per-element KL summed over steps"}
    return {**out, "kl_to_pretrained": kl_ref}


def save_checkpoint(ckpt: Path, model, optimizer, state: dict) -> None:
    """Weights and optimizer under names carrying the epoch, then state.json naming them: a
    kill at any instant leaves state.json pointing at a complete, consistent pair (the
    previous epoch's until the new state.json lands). Older pairs are removed afterwards."""
    tag = f"{state['epoch']:05d}"
    files = {"weights": f"weights_{tag}.safetensors", "optimizer": f"optimizer_{tag}.safetensors"}
    opt_t, opt_meta = optimizer_tensors(optimizer)
    save_tensors(ckpt / files["weights"], model.trainable_state_dict())
    save_tensors(ckpt / files["optimizer"], opt_t)
    write_json(ckpt / "state.json", {**state, "optimizer": opt_meta, "files": files})
    for old in ckpt.glob("*.safetensors"):
        if old.name not in files.values():
            old.unlink(missing_ok=True)


def read_checkpoint_state(ckpt: Path) -> dict:
    try:
        state = json.loads((ckpt / "state.json").read_text())
        if not isinstance(state, dict) or not {"epoch", "config", "optimizer"} <= state.keys():
            raise ValueError("missing keys")
        return state
    except (OSError, ValueError) as e:
        raise RunError(f"checkpoint {ckpt / 'state.json'} is damaged ({e}); delete "
                       f"{ckpt.parent.parent} to retrain this cell") from None


def checkpoint_files(ckpt: Path, state: dict) -> dict[str, Path]:
    """The weight files a state.json names (runs written before epoch-tagged names: the plain ones)."""
    files = state.get("files", {"weights": "weights.safetensors", "optimizer": "optimizer.safetensors"})
    return {k: ckpt / v for k, v in files.items()}


class Cell:
    """One method × seed: train with the common trainer, evaluate, checkpoint, resume."""

    def __init__(self, run: Path, model_name: str, model_path: str | None, method_name: str,
                 seed: int, preset: Preset, device: str = "cpu", log_to: str | None = None,
                 model_options: dict | None = None):
        self.run_dir, self.log_to, self.model_options = run, log_to, model_options or {}
        self.dir = run / model_name / method_name / f"seed{seed}"
        self.model_name, self.model_path, self.method_name = model_name, model_path, method_name
        self.seed, self.preset, self.device = seed, preset, device

    @property
    def done(self) -> bool:
        return (self.dir / "result.json").exists()

    def run(self, base_eval: dict, progress: bool = True) -> dict:
        p = self.preset
        model = load_model(self.model_name, self.model_path, self.device, **self.model_options)
        method, train = method_variant(self.method_name, p, self.model_name)
        reward = build_rewards(p.reward, device=self.device, **p.reward_options)
        trainer = Trainer(model, method, reward, load_toy_split("train"), train, seed=self.seed)
        config = {"method": self.method_name, "method_config": asdict(method.config),
                  "train": asdict(train), "eval": asdict(p.eval), "epochs": p.epochs,
                  "reward": p.reward, "seed": self.seed, "model": self.model_name}
        ckpt = self.dir / "checkpoints" / "latest"
        start, wall = 0, 0.0
        if (ckpt / "state.json").exists():
            state = read_checkpoint_state(ckpt)
            if state["config"] != json.loads(json.dumps(config)):
                raise RunError(f"{self.dir} holds a run with another configuration; "
                               "use a new --out or delete it")
            try:
                files = checkpoint_files(ckpt, state)
                model.load_trainable_state_dict(load_tensors(files["weights"]))
                load_optimizer(trainer.optimizer, load_tensors(files["optimizer"]), state["optimizer"])
            except Exception as e:  # noqa: BLE001 - a damaged checkpoint, whatever the library says
                raise RunError(f"checkpoint {ckpt} is damaged ({type(e).__name__}: "
                               f"{(str(e).splitlines() or [''])[0][:120]}); delete {self.dir} to "
                               "retrain this cell") from None
            start, wall = state["epoch"], state["wall_seconds"]
        main = dist.is_main()  # only rank 0 writes; every rank trains
        if main:
            write_json(self.dir / "config.json", config)
            write_json(self.dir / "eval" / "0.json", {**base_eval, "epoch": 0})
        metrics = self._read_metrics(start)
        records_eval = load_toy_split("eval")
        live = open_live_log(self.log_to, self.run_dir, self.model_name, self.method_name,
                             self.seed, config) if main else None
        try:
            wall = self._train(model, method, train, trainer, config, records_eval, start, wall,
                               metrics, live, progress)
        except TrainingFault as e:
            last = read_checkpoint_state(self.dir / "checkpoints" / "latest")["epoch"] \
                if (self.dir / "checkpoints" / "latest" / "state.json").exists() else 0
            raise RunError(f"{self.method_name} seed {self.seed}: {e}. The last checkpoint (epoch {last}) "
                           f"is intact in {self.dir / 'checkpoints' / 'latest'}") from None
        finally:
            if live is not None:
                live.close()
        result = self._finish(model, metrics, base_eval, train, wall) if main else None
        dist.barrier()
        return result

    def _train(self, model, method, train, trainer, config, records_eval, start: int, wall: float,
               metrics: list[dict], live, progress: bool) -> float:
        """Epochs `start`… with an evaluation every `eval.every` and a checkpoint after each;
        returns the training wall time."""
        p, ckpt = self.preset, self.dir / "checkpoints" / "latest"
        if live is not None and start == 0:
            live.log(eval_scalars(json.loads((self.dir / "eval" / "0.json").read_text())), 0)
        bar = tqdm(range(start, p.epochs), desc=f"{self.method_name} seed{self.seed}",
                   disable=not progress or not dist.is_main(), initial=start, total=p.epochs)
        for epoch in bar:
            t0 = time.perf_counter()
            m, samples = trainer.train_epoch(epoch)
            wall += time.perf_counter() - t0
            m["wall_seconds"] = round(wall, 2)
            metrics.append(m)
            if not dist.is_main():
                dist.barrier()  # rank 0 evaluates and checkpoints meanwhile
                continue
            save_tensors(self.dir / "diagnostics" / f"epoch_{epoch + 1:04d}.safetensors", samples)
            bar.set_postfix(reward=f"{m['reward_mean']:.3f}")
            done = epoch + 1
            if live is not None:
                live.log(scalars(m), done)
            if done % p.eval.every == 0 or done == p.epochs:
                ev = evaluate_policy(model, p, records_eval, method, train)
                write_json(self.dir / "eval" / f"{done}.json", {**ev, "epoch": done, "wall_seconds": wall})
                if live is not None:
                    live.log(eval_scalars(ev), done)
            write_jsonl(self.dir / "metrics.jsonl", metrics)
            save_checkpoint(ckpt, model, trainer.optimizer,
                            {"epoch": done, "wall_seconds": wall, "config": config})
            dist.barrier()
        return wall

    def _finish(self, model, metrics: list[dict], base_eval: dict, train: TrainConfig,
                wall: float) -> dict:
        """The final sample grid and result.json (the cell's mark of being done)."""
        p = self.preset
        final = json.loads((self.dir / "eval" / f"{p.epochs}.json").read_text())
        _sample_grid(model, p, self.dir / "samples" / "final.png")
        last = metrics[-3:]  # the training reward at the start and over the last epochs
        n_traj = train.prompts_per_epoch * train.group_size
        train_reward = {"first": metrics[0]["reward_mean"],
                        "first_stderr": metrics[0]["reward_std"] / n_traj**0.5,
                        "last": sum(m["reward_mean"] for m in last) / len(last),
                        "last_epochs": len(last)}
        result = {"method": self.method_name, "seed": self.seed, "model": self.model_name,
                  "epochs": p.epochs, "wall_seconds": round(wall, 1), "final": final,
                  "base": base_eval, "train_reward": train_reward, "reward": p.reward}
        write_json(self.dir / "result.json", result)
        return result

    def _read_metrics(self, upto: int) -> list[dict]:
        """metrics.jsonl lines of the epochs the checkpoint covers (a resumed run redoes the rest)."""
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if r["epoch"] < upto]


def read_cell(cell_dir: str | Path) -> tuple[dict, dict, Path]:
    """A trained cell (`runs/<name>/<model>/<method>/seed<k>`): its config, its run's config
    (model path and options; empty without a manifest) and its last checkpoint's weights."""
    cell_dir = Path(cell_dir)
    cfg_path, ckpt = cell_dir / "config.json", cell_dir / "checkpoints" / "latest"
    if not cfg_path.is_file() or not (ckpt / "state.json").is_file():
        raise RunError(f"{cell_dir} is not a trained cell of a run (no config.json or "
                       "checkpoints/latest); give a directory like runs/default/toy/grpo/seed0")
    manifest = cell_dir.parents[2] / "manifest.json" if len(cell_dir.parents) > 2 else None
    run_config = {}
    if manifest is not None and manifest.is_file():
        run_config = json.loads(manifest.read_text()).get("config", {})
    weights = checkpoint_files(ckpt, read_checkpoint_state(ckpt))["weights"]
    return json.loads(cfg_path.read_text()), run_config, weights


def load_cell_policy(cell_dir: str | Path, device: str = "cpu"):
    """The fine-tuned policy of a cell at its last checkpoint: the model of its run, the
    adapter of its config, the trained weights."""
    config, run_config, weights = read_cell(cell_dir)
    model = load_model(config["model"], run_config.get("model_path"), device,
                       **run_config.get("model_options", {}))
    t = config["train"]
    model.setup_training(t["lora_rank"], t["lora_alpha"],
                         tuple(t["lora_targets"]) if t.get("lora_targets") else None)
    model.load_trainable_state_dict(load_tensors(weights))
    return model, config


def base_eval(run: Path, model_name: str, model_path: str | None, seed: int, preset: Preset,
              device: str = "cpu", model_options: dict | None = None) -> dict:
    """The pretrained model's evaluation, one file per seed so tables pair it with that
    seed's cells. Evaluation noise does not depend on the seed, so later seeds copy seed 0.
    Distributed: rank 0 evaluates and writes, the others read its file."""
    path = run / model_name / "base" / f"seed{seed}" / "eval.json"
    if not dist.is_main():
        dist.barrier()
        return json.loads(path.read_text())
    try:
        return _base_eval(path, run, model_name, model_path, preset, device, model_options)
    finally:
        dist.barrier()


def _base_eval(path: Path, run: Path, model_name: str, model_path: str | None, preset: Preset,
               device: str, model_options: dict | None) -> dict:
    seed = int(path.parent.name.removeprefix("seed"))
    if path.exists():
        return json.loads(path.read_text())
    first = run / model_name / "base" / "seed0"
    if seed > 0 and (first / "eval.json").exists():
        for name in ("samples.png", "prompts.json"):
            if (first / name).exists():
                _atomic(path.parent / name, lambda tmp, n=name: shutil.copyfile(first / n, tmp))
        ev = json.loads((first / "eval.json").read_text())
        write_json(path, ev)
        return ev
    model = load_model(model_name, model_path, device, **(model_options or {}))
    ev = evaluate_policy(model, preset, load_toy_split("eval"))
    _sample_grid(model, preset, path.parent / "samples.png")
    write_json(path, ev)
    return ev


def _sample_grid(model, preset: Preset, png: Path) -> None:
    """The eval prompts of the sample grids, drawn from the evaluation noise, with the prompts
    beside them (prompts.json) so the report can label the columns."""
    prompts = [r["prompt"] for r in subset(load_toy_split("eval"), preset.eval.samples)]
    noise = model.initial_noise(len(prompts), torch.Generator().manual_seed(EVAL_SEED))
    imgs = model.generate(prompts, steps=preset.eval.steps, guidance=preset.eval.guidance, noise=noise)
    save_grid(imgs, png, nrow=len(prompts))
    write_json(png.parent / "prompts.json", prompts)


def run_benchmark(out: Path, methods: list[str] | None = None, model_name: str = "toy",
                  preset: str | Preset = "default", seeds: int | None = None,
                  model_path: str | None = None, progress: bool = True,
                  command: str | None = None, reward: str | None = None,
                  aggregation: str | None = None, epochs: int | None = None,
                  device: str = "cpu", log_to: str | None = None,
                  resolution: int | None = None, reward_options: dict | None = None) -> Path:
    """Train and evaluate methods × seeds (None: the preset's) into the run directory `out`.
    `resolution`: image side for diffusers models (default: the pipeline's). `reward_options`:
    added to the preset's (e.g. `judge`, the VQA judge of geneval2)."""
    from reports.report import build_report  # now, not after hours of training: the code of the start

    check_device(device)
    dist.init(device)  # under torchrun / accelerate launch: join the process group
    device = dist.local_device(device)
    check_log_to(log_to)
    p = get_preset(preset) if isinstance(preset, str) else preset
    if epochs is not None:
        if epochs < 1:
            raise RunError("--epochs must be at least 1")
        p = replace(p, epochs=epochs)
    methods = list(p.methods) if methods is None else methods
    seeds = p.seeds if seeds is None else seeds
    if reward is not None:
        p = replace(p, reward=reward, reward_options={})
    if reward_options:
        p = replace(p, reward_options={**p.reward_options, **reward_options})
    if aggregation is not None:
        p = replace(p, train=replace(p.train, reward_aggregation=aggregation))
    p.train.validate()
    for m in methods:
        method_variant(m, p, model_name)  # unknown names and settings fail before any work
    check_rewards(p.reward, p.reward_options)
    if seeds < 1:
        raise RunError("--seeds must be at least 1")
    out = Path(out)
    model_options = {"resolution": resolution} if resolution is not None else {}
    check_options(model_name, model_options)
    config = {"methods": methods, "model": model_name, "model_path": model_path, "seeds": seeds,
              "preset": p.name, "resolved": json.loads(json.dumps(asdict(p), default=str))}
    if model_options:  # absent otherwise, so that runs written before the option still resume
        config["model_options"] = model_options
    manifest_path = out / "manifest.json"
    old = None
    if manifest_path.exists() and any(out.glob("*/*/seed*/*")):  # a run without results can start over
        old = json.loads(manifest_path.read_text())
        same = (old.get("config", {}).get("resolved") == config["resolved"]
                and old["config"]["model"] == model_name
                and old["config"].get("model_options", {}) == model_options)
        if not same:
            raise RunError(f"{out} holds a run with another configuration; use a new --out or delete it")
        config["methods"] = list(dict.fromkeys(old["config"]["methods"] + methods))
        config["seeds"] = max(seeds, old["config"]["seeds"])
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    manifest = {"command": command or " ".join(sys.argv), "config": config, "versions": _versions(),
                "status": "running", "started": now}
    earlier = []  # the sessions of a resumed run, so that "seconds" is the whole run's wall time
    if old is not None:
        manifest.update(started=old.get("started", now), resumed=[*old.get("resumed", []), now])
        earlier = old.get("sessions", [])
    if dist.world() > 1:
        manifest["processes"] = dist.world()
    dist.barrier()  # every rank has read the old manifest before rank 0 replaces it
    t0 = time.perf_counter()

    def save_manifest(status: str) -> None:
        if dist.is_main():
            sessions = [*earlier, {"started": now, "seconds": round(time.perf_counter() - t0, 1)}]
            manifest.update(status=status, sessions=sessions,
                            seconds=round(sum(s["seconds"] for s in sessions), 1))
            write_json(manifest_path, manifest)

    save_manifest("running")
    try:
        for seed in range(seeds):
            base = base_eval(out, model_name, model_path, seed, p, device, model_options)
            for m in methods:
                cell = Cell(out, model_name, model_path, m, seed, p, device, log_to, model_options)
                if not cell.done:
                    cell.run(base, progress)
                    save_manifest("running")  # a killed session still counts up to its last cell
        if dist.is_main():
            build_report(out)
        save_manifest("done")
    except BaseException:  # an interrupted or failed session still counts towards the wall time
        with contextlib.suppress(OSError):  # but a failed write must not hide why the run stopped
            save_manifest("stopped")
        raise
    dist.barrier()
    return out

