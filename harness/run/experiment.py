"""`bench run`: methods × seeds on one model, each trained by the common trainer and
evaluated on the same prompts, noise and metrics, into one run directory.

    runs/<name>/
      manifest.json                       command, resolved config, versions, status, sessions
      <model>/base/seed<k>/eval.json      the pretrained model, evaluated once per seed (and
                                          final.json: its scores on the benchmarks' test sets)
      <model>/<method>/seed<k>/           one cell (harness/run/cell.py)
      report/                             tables, figures, index.html (reports/)

Rerunning the same command resumes: finished cells are kept, an unfinished one restarts
from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flowarena.core.identity import base_changed, same_base
from flowarena.core.io import atomic_write, write_json
from flowarena.core.locks import LockError, describe, holder, release, try_lock, wait_lock
from flowarena.core.results import EvalRecord, Manifest, read_json
from flowarena.core.rundir import BasePaths, RunDir
from flowarena.harness.live import check_log_to
from flowarena.harness.run.cell import CellRun
from flowarena.harness.run.config import (
    RunError,
    check_methods,
    upgrade_resolved,
)
from flowarena.harness.run.evaluation import Evaluation
from flowarena.harness.run.spec import RunSpec
from flowarena.methods import dist
from flowarena.methods.trainer import place_text_encoders
from flowarena.models import MODELS, base_identity, check_device, check_options, load_model
from flowarena.models.base import native_bf16
from flowarena.rewards import check_rewards
from flowarena.tasks.prompts import load_prompts


def versions() -> dict:
    import diffusers
    import peft

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability(),  # AVX2 / AVX512: what bf16 costs there
            "diffusers": diffusers.__version__, "peft": peft.__version__, "flowarena": code_version()}


def emulated_bf16(p, device) -> list[str]:
    """A line for each setting of preset `p` that asks for bf16 on a device without bf16
    units, where torch emulates it (the toy UNet 20–24x slower than in fp32)."""
    return [f"{key} = 'bf16' on {device} without bf16 units: emulated, many times slower than fp32 "
            f"('bf16-native' uses bf16 only where the hardware has it)"
            for key, setting in (("eval.precision", p.eval.precision),
                                 ("train.ode_precision", p.train.ode_precision))
            if setting == "bf16" and not native_bf16(device)]


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
              train, device: str = "cpu", model_options: dict | None = None) -> tuple[EvalRecord, EvalRecord]:
    """The pretrained model's evaluation (val prompts, eval.json) and its final scores (the test
    sets, final.json, when a benchmark has one; else the same record), one directory per seed
    so tables pair them with that seed's cells. Evaluation noise does not depend on the seed,
    so later seeds copy seed 0. Distributed: rank 0 decides and writes; when the model must be
    evaluated, every rank scores its share of the prompts, else the others read."""
    here, first = RunDir(run).base(model_name, seed), RunDir(run).base(model_name, 0)
    tests = evaluation.has_test_sets

    def read(d: BasePaths) -> tuple[EvalRecord, EvalRecord]:
        ev = [EvalRecord.from_json(read_json(f), str(f)) for f in d.scores(tests)]
        return ev[0], ev[-1]

    main = dist.is_main()
    if main:
        # another shard evaluating this seed: wait for it, then read; no timeout, since a large
        # model takes long and a dead holder's lock turns stale (core/locks.py)
        wait_lock(here.lock, f"another process's evaluation of {model_name} (seed {seed})")
    try:
        todo = main and not all(f.exists() for f in here.scores(tests))
        if todo and seed > 0 and all(f.exists() for f in first.scores(tests)):
            for src, dst in zip([first.samples, first.prompts, *first.scores(tests)],
                                [here.samples, here.prompts, *here.scores(tests)]):
                if src.exists():
                    atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
            todo = False
        if not dist.any_true(todo):  # (after rank 0's copy: the others read it)
            return read(here)
        model = load_model(model_name, model_path, device, **(model_options or {}))
        place_text_encoders(model, train)
        ev = evaluation(model, None, train)
        final = evaluation.final(model, ev)
        if main:
            evaluation.sample_grid(model, here.samples)
            if final is not ev:
                write_json(here.final, final.to_json())
            write_json(here.eval, ev.to_json())
        dist.barrier()
        return ev, final
    finally:
        if main:
            release(here.lock)


def _check_reward_prompts(spec: str, records: list[dict], name: str) -> None:
    """Rewards that ask questions need prompt records that carry them (GenEval2 or GenEval
    format); a plain prompt list trains PickScore-like rewards only."""
    from flowarena.rewards import REWARDS, parse_reward_spec

    for reward, _ in parse_reward_spec(spec):
        key = getattr(REWARDS.get(reward), "record_field", None)
        if key and not all(key in r for r in records):
            raise RunError(f"the {reward} reward needs prompt records with their questions ({key!r}), "
                           f"which {name} lacks: a plain prompt list trains pickscore; give GenEval2-format "
                           "prompts (--train-prompts geneval2-train) for geneval2")


def run_experiment(spec: RunSpec, shard: tuple[int, int] = (1, 1), progress: bool = True) -> Path:
    """Train and evaluate the spec's methods × seeds into its run directory (`spec.plan` builds
    one). `shard` (I, N): only every N-th cell from the I-th, so that N processes, on one machine
    or many sharing the directory, run one experiment (`bench run --shard I/N`); a lock per cell
    keeps two from training one."""
    from flowarena.reports.report import (
        build_report,  # now, not after hours of training: the code of the start
    )

    out, model_name, p, methods, seeds = Path(spec.out), spec.model, spec.preset, spec.methods, spec.seeds
    model_path, device, reward_device = spec.model_path, spec.device, spec.reward_device
    check_device(device)
    if reward_device is not None:
        check_device(reward_device)
    dist.init(device)  # under torchrun / accelerate launch: join the process group
    device = dist.local_device(device)
    scorer_device = device if reward_device is None else dist.local_device(reward_device)
    check_log_to(spec.log_to)
    check_methods(methods, p)  # none, twice, unknown names and settings: before any work
    records = load_prompts(p.train_prompts)  # an unknown set or a malformed file fails before any work
    if unknown := MODELS.get(model_name).unknown_words([r["prompt"] for r in records]):
        raise RunError(f"the {model_name} model cannot train on {p.train_prompts}: {unknown[0]!r} is outside "
                       "its vocabulary; keep its own training prompts or use a diffusers model")
    evaluation = Evaluation(p.eval, scorer_device, p.reward_options)  # unknown benchmarks fail here
    check_rewards(p.reward, p.reward_options, evaluation.options)
    _check_reward_prompts(p.reward, records, p.train_prompts)
    for warning in emulated_bf16(p, device):
        print(f"warning: {warning}", file=sys.stderr)
    model_options = {"resolution": p.resolution} if p.resolution is not None else {}
    if p.train.trained_precision == "fp32" and MODELS.get(model_name).casts_weights:
        model_options["dtype"] = "float32"  # computing in bf16 still, but for the trained steps
    check_options(model_name, model_options)
    config = {"methods": methods, "model": model_name, "model_path": model_path, "seeds": seeds,
              "preset": p.name, "resolved": json.loads(json.dumps(asdict(p), default=str))}
    if model_options:  # absent otherwise, so that runs written before the option still resume
        config["model_options"] = model_options
    config["base"] = identity = base_identity(model_name, model_path, model_options)
    rundir = RunDir(out)
    manifest_path = rundir.manifest
    old = None
    if manifest_path.exists() and rundir.has_results():  # a run without results can start over
        old = Manifest.from_json(read_json(manifest_path), str(manifest_path))
        same = (upgrade_resolved(old.config.get("resolved"), old.config.get("model_options"))
                == config["resolved"]
                and old.config["model"] == model_name
                and old.config.get("model_options", {}) == model_options)
        if not same:
            raise RunError(f"{out} holds a run with another configuration; use a new --out or delete it")
        # a run of older code recorded its model path alone: the same path matches
        was = (old.config.get("base")
               or base_identity(model_name, old.config.get("model_path"), content=False))
        if not same_base(was, identity):
            raise RunError(base_changed(str(out), was, identity))
        config["methods"] = list(dict.fromkeys(old.config["methods"] + methods))
        config["seeds"] = max(seeds, old.config["seeds"])
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    manifest = Manifest(spec.command, config, versions(), started=now,
                        processes=dist.world())
    if old is not None:
        manifest.started, manifest.resumed = old.started or now, [*old.resumed, now]
    # the sessions of earlier and of concurrent (sharded) processes, so that "seconds" is the whole
    # run's wall time; a run that starts over forgets the aborted one's
    keep_sessions = old is not None or shard[1] > 1
    # each session's host and code too: a run resumed elsewhere (another CPU, a later commit)
    # keeps the record of where its earlier cells ran; `versions` holds the last session's
    session = {"id": f"{socket.gethostname()}:{os.getpid()}:{now}", "started": now,
               "cpu": manifest.versions["cpu"], "flowarena": manifest.versions["flowarena"]}
    label = f"{shard[0]}/{shard[1]}"
    dist.barrier()  # every rank has read the old manifest before rank 0 replaces it
    t0 = time.perf_counter()

    def save_manifest(status: str, wait: float = 60) -> None:
        if not dist.is_main():
            return
        # shards rewrite one file; its writers hold it for a moment, so a long wait means trouble
        wait_lock(rundir.manifest_lock, f"the manifest of {out}", timeout=wait, poll=0.2)
        try:
            disk = _read_manifest(manifest_path) if keep_sessions else None
            others = [s for s in (disk.sessions if disk else []) if s.get("id") != session["id"]]
            manifest.sessions = [*others, {**session, "seconds": round(time.perf_counter() - t0, 1)}]
            manifest.seconds = round(sum(s["seconds"] for s in manifest.sessions), 1)
            if shard[1] > 1:
                manifest.shards = {**(disk.shards if disk else {}), label: status}
                states = [manifest.shards.get(f"{i}/{shard[1]}") for i in range(1, shard[1] + 1)]
                status = ("done" if all(s == "done" for s in states)  # not started counts as running
                          else "stopped" if "stopped" in states else "running")
            manifest.status = status
            write_json(manifest_path, manifest.to_json())
        finally:
            release(rundir.manifest_lock)

    cells = [(seed, m) for seed in range(seeds) for m in methods]
    mine = cells[shard[0] - 1::shard[1]]
    trained, spent, skipped = 0, 0.0, 0  # this session's cells, for the time left
    run_lock, refused = None, None
    try:  # before the first write; rank 0 takes it and every rank learns the answer
        run_lock = _take_run_lock(out, shard) if dist.is_main() else None
    except LockError as e:
        refused = e
    if dist.any_true(refused is not None):
        raise refused or LockError(f"{out} is in use by another bench run (rank 0 says why)")
    try:
        save_manifest("running")
        for seed in sorted({s for s, _ in mine}):
            base = base_eval(out, model_name, model_path, seed, evaluation, p.train, device, model_options)
            for m in [m for s, m in mine if s == seed]:
                i = cells.index((seed, m)) + 1
                cell = CellRun(out, model_name, model_path, m, seed, p, evaluation, device, spec.log_to,
                               model_options, identity)
                lock = cell.paths.lock
                busy = dist.any_true(not cell.done and not try_lock(lock) if dist.is_main() else False)
                if busy:  # another process of this run (a shard, a second machine) trains it
                    if dist.is_main():
                        tqdm.write(f"cell {i}/{len(cells)} ({m} seed {seed}) is being trained by "
                                   f"{describe(holder(lock) or {}, lock)}: skipped", file=sys.stderr)
                    skipped += 1
                    continue
                try:
                    if not cell.done:
                        cell.label = f"[{i}/{len(cells)}] "
                        t_cell = time.perf_counter()
                        cell.run(*base, progress=progress)
                        save_manifest("running")  # a killed session still counts up to its last cell
                        trained, spent = trained + 1, spent + time.perf_counter() - t_cell
                        if progress and dist.is_main():
                            left = len(mine) - mine.index((seed, m)) - 1
                            tqdm.write(f"cell {i}/{len(cells)} done ({m} seed {seed}); "
                                       f"{time_left(time.perf_counter() - t0, trained, left, spent)}",
                                       file=sys.stderr)
                finally:
                    if dist.is_main():
                        release(lock)
        save_manifest("running" if skipped else "done")  # before the report, which shows the status
        if dist.is_main():
            build_report(out, spec.reference)
    except BaseException:  # an interrupted or failed session still counts towards the wall time
        with contextlib.suppress(OSError, LockError):  # but a failed write must not hide why it stopped
            save_manifest("stopped", wait=5)
        raise
    finally:
        if run_lock is not None:
            release(run_lock)
    dist.barrier()
    return out


def time_left(elapsed: float, finished: int, remaining: int, spent: float | None = None) -> str:
    """"3.1 min elapsed, about 6 min left": `remaining` cells at the mean time of the `finished`
    ones (`spent` seconds on them; default: all of `elapsed`)."""
    per_cell = (elapsed if spent is None else spent) / max(finished, 1)
    return f"{elapsed / 60:.1f} min elapsed, about {per_cell * remaining / 60:.0f} min left"


def _take_run_lock(out: Path, shard: tuple[int, int]) -> Path:
    """The run's lock, or its shard's: a second `bench run` on a directory in use is one line.
    Shards of one run may share it; an unsharded run and a shard may not."""
    rundir = RunDir(out)
    whole = rundir.run_lock
    mine = whole if shard[1] == 1 else rundir.shard_lock(*shard)
    others = [whole] if shard[1] > 1 else rundir.shard_locks()
    for other in others:
        if (info := holder(other)) is not None:
            raise LockError(f"{out} is in use by a bench run on {describe(info, other)}")
    if not try_lock(mine):
        raise LockError(f"{out} is in use by a bench run on {describe(holder(mine) or {}, mine)}")
    return mine


def _read_manifest(path: Path) -> Manifest | None:
    try:
        return Manifest.from_json(read_json(path), str(path))
    except (OSError, ValueError):
        return None
