"""`bench run`: methods × seeds on one model, each trained by the common trainer and
evaluated on the same prompts, noise and metrics, into one run directory.

    runs/<name>/
      manifest.json                       command, resolved config, versions, status, sessions
      <model>/base/seed<k>/eval.json      the pretrained model, evaluated once per seed
      <model>/<method>/seed<k>/           one cell (harness/run/cell.py)
      report/                             tables, figures, index.html (reports/)

Rerunning the same command resumes: finished cells are kept, an unfinished one restarts
from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from harness.core.io import _atomic, write_json
from harness.core.prompts import load_prompts
from harness.core.results import EvalRecord, Manifest, read_json
from harness.live import check_log_to
from harness.run.cell import CellRun
from harness.run.config import Preset, RunError, method_variant, resolve, upgrade_resolved
from harness.run.evaluation import Evaluation
from methods import dist
from models import check_device, check_options, load_model
from rewards import check_rewards


def versions() -> dict:
    import diffusers
    import peft

    return {"python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "peft": peft.__version__, "flowarena": code_version()}


def code_version() -> str | None:
    """The code's git commit (with '+dirty' for uncommitted changes); outside a checkout, the
    installed package's version."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        if head:
            return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return version("flowarena")
    except PackageNotFoundError:
        return None


def base_eval(run: Path, model_name: str, model_path: str | None, seed: int, evaluation: Evaluation,
              train, device: str = "cpu", model_options: dict | None = None) -> EvalRecord:
    """The pretrained model's evaluation, one file per seed so tables pair it with that
    seed's cells. Evaluation noise does not depend on the seed, so later seeds copy seed 0.
    Distributed: rank 0 evaluates and writes, the others read its file."""
    path = run / model_name / "base" / f"seed{seed}" / "eval.json"
    if not dist.is_main():
        dist.barrier()
        return EvalRecord.from_json(read_json(path), str(path))
    try:
        if path.exists():
            return EvalRecord.from_json(read_json(path), str(path))
        first = run / model_name / "base" / "seed0"
        if seed > 0 and (first / "eval.json").exists():
            for name in ("samples.png", "prompts.json"):
                if (first / name).exists():
                    _atomic(path.parent / name, lambda tmp, n=name: shutil.copyfile(first / n, tmp))
            ev = EvalRecord.from_json(read_json(first / "eval.json"), str(first / "eval.json"))
        else:
            model = load_model(model_name, model_path, device, **(model_options or {}))
            ev = evaluation(model, None, train)
            evaluation.sample_grid(model, path.parent / "samples.png")
        write_json(path, ev.to_json())
        return ev
    finally:
        dist.barrier()


def _check_toy_words(records: list[dict], name: str) -> None:
    from harness.toyworld.grammar import tokenize_words, vocabulary

    known = set(vocabulary())
    for r in records:
        if unknown := [w for w in tokenize_words(r["prompt"]) if w not in known]:
            raise RunError(f"the toy model cannot train on {name}: {unknown[0]!r} (in {r['prompt']!r}) is "
                           "outside its vocabulary; keep the toy training prompts or use a diffusers model")


def run_experiment(out: Path, methods: list[str] | None = None, model_name: str = "toy",
                   preset: str | Path | Preset = "default", seeds: int | None = None,
                   model_path: str | None = None, progress: bool = True, command: str | None = None,
                   device: str = "cpu", log_to: str | None = None, resolution: int | None = None,
                   **overrides) -> Path:
    """Train and evaluate methods × seeds (None: the preset's) into the run directory `out`.
    `preset`: a registered name, a TOML file or a Preset; `overrides` (epochs, reward,
    reward_options, aggregation, train, eval) change it as `config.resolve` says.
    `resolution`: image side for diffusers models (default: the pipeline's)."""
    from reports.report import build_report  # now, not after hours of training: the code of the start

    check_device(device)
    dist.init(device)  # under torchrun / accelerate launch: join the process group
    device = dist.local_device(device)
    check_log_to(log_to)
    if (aggregation := overrides.pop("aggregation", None)) is not None:
        overrides["train"] = {**overrides.get("train", {}), "reward_aggregation": aggregation}
    p = resolve(preset, **overrides)
    methods = list(p.methods) if methods is None else methods
    seeds = p.seeds if seeds is None else seeds
    for m in methods:
        method_variant(m, p, model_name)  # unknown names and settings fail before any work
    check_rewards(p.reward, p.reward_options)
    records = load_prompts(p.train_prompts)  # an unknown set or a malformed file fails before any work
    if model_name == "toy":
        _check_toy_words(records, p.train_prompts)
    if seeds < 1:
        raise RunError("--seeds must be at least 1")
    evaluation = Evaluation(p.eval, device, p.reward_options)  # unknown benchmarks fail here
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
        old = Manifest.from_json(read_json(manifest_path), str(manifest_path))
        same = (upgrade_resolved(old.config.get("resolved")) == config["resolved"]
                and old.config["model"] == model_name
                and old.config.get("model_options", {}) == model_options)
        if not same:
            raise RunError(f"{out} holds a run with another configuration; use a new --out or delete it")
        config["methods"] = list(dict.fromkeys(old.config["methods"] + methods))
        config["seeds"] = max(seeds, old.config["seeds"])
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    manifest = Manifest(command or " ".join(sys.argv), config, versions(), started=now,
                        processes=dist.world())
    earlier = []  # the sessions of a resumed run, so that "seconds" is the whole run's wall time
    if old is not None:
        manifest.started, manifest.resumed = old.started or now, [*old.resumed, now]
        earlier = old.sessions
    dist.barrier()  # every rank has read the old manifest before rank 0 replaces it
    t0 = time.perf_counter()

    def save_manifest(status: str) -> None:
        if dist.is_main():
            manifest.status = status
            manifest.sessions = [*earlier, {"started": now, "seconds": round(time.perf_counter() - t0, 1)}]
            manifest.seconds = round(sum(s["seconds"] for s in manifest.sessions), 1)
            write_json(manifest_path, manifest.to_json())

    save_manifest("running")
    try:
        for seed in range(seeds):
            base = base_eval(out, model_name, model_path, seed, evaluation, p.train, device, model_options)
            for m in methods:
                cell = CellRun(out, model_name, model_path, m, seed, p, evaluation, device, log_to,
                               model_options)
                if not cell.done:
                    cell.run(base, progress)
                    save_manifest("running")  # a killed session still counts up to its last cell
        save_manifest("done")  # before the report, which shows the status
        if dist.is_main():
            build_report(out)
    except BaseException:  # an interrupted or failed session still counts towards the wall time
        with contextlib.suppress(OSError):  # but a failed write must not hide why the run stopped
            save_manifest("stopped")
        raise
    dist.barrier()
    return out
