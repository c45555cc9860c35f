"""One method × seed of a run: train with the common trainer, evaluate at fixed intervals,
checkpoint after every epoch, resume from the last checkpoint.

    <run>/<model>/<method>/seed<k>/
      config.json  metrics.jsonl  diagnostics/epoch_XXXX.safetensors
      eval/<epoch>.json  eval/final.json (the test sets)  checkpoints/latest/
      samples/{final.png,prompts.json}  result.json

config.json holds the cell's settings and, under `base`, the weights it trains from
(models.base_identity). A cell with `result.json` is finished and never recomputed. Every
file is written atomically.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from tqdm.auto import tqdm

from flowarena.core.identity import base_changed, same_base
from flowarena.core.io import (
    load_optimizer,
    load_tensors,
    optimizer_tensors,
    save_tensors,
    write_json,
    write_jsonl,
)
from flowarena.core.results import CellResult, EvalRecord, read_json
from flowarena.core.rundir import RunDir
from flowarena.harness.live import eval_scalars, open_live_log, scalars
from flowarena.harness.run.config import Preset, RunError, method_variant, upgrade_cell_config
from flowarena.harness.run.evaluation import Evaluation
from flowarena.methods import dist
from flowarena.methods.diagnostics import floor_warning
from flowarena.methods.trainer import TrainConfig, Trainer, TrainingFault
from flowarena.models import base_identity, load_model
from flowarena.rewards import build_rewards
from flowarena.tasks.prompts import load_prompts


def save_checkpoint(ckpt: Path, model, optimizer, state: dict, ema: dict | None = None) -> None:
    """Weights and optimizer (and the weights' EMA, where kept) under names carrying the epoch,
    then state.json naming them: a kill at any instant leaves state.json pointing at a complete,
    consistent set (the previous epoch's until the new state.json lands). Older sets are
    removed afterwards."""
    tag = f"{state['epoch']:05d}"
    files = {"weights": f"weights_{tag}.safetensors", "optimizer": f"optimizer_{tag}.safetensors"}
    if ema is not None:
        files["ema"] = f"ema_{tag}.safetensors"
        save_tensors(ckpt / files["ema"], ema)
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


class CellRun:
    """Trains and evaluates one method × seed of a run directory."""

    def __init__(self, run: Path, model_name: str, model_path: str | None, method_name: str,
                 seed: int, preset: Preset, evaluation: Evaluation, device: str = "cpu",
                 log_to: str | None = None, model_options: dict | None = None, base: dict | None = None):
        """`base`: the weights' record (models.base_identity; default: made here)."""
        self.run_dir, self.log_to, self.model_options = run, log_to, model_options or {}
        self.base = base
        self.paths = RunDir(run).cell(model_name, method_name, seed)
        self.dir = self.paths.root
        self.model_name, self.model_path, self.method_name = model_name, model_path, method_name
        self.seed, self.preset, self.device, self.evaluation = seed, preset, device, evaluation

    label = ""
    """Where the cell stands in its run, e.g. "[2/6] ", before its progress bar's name."""

    @property
    def done(self) -> bool:
        return self.paths.done

    def run(self, base_eval: EvalRecord, base_final: EvalRecord | None = None,
            progress: bool = True) -> dict | None:
        """Train (or resume), evaluate, finish. `base_eval`: the pretrained model's evaluation
        (the curves' epoch 0); `base_final`: its final scores (default: the same record)."""
        p = self.preset
        model = load_model(self.model_name, self.model_path, self.device, **self.model_options)
        method, train = method_variant(self.method_name, p)
        reward = build_rewards(p.reward, self.evaluation.device, self.evaluation.options, **p.reward_options)
        trainer = Trainer(model, method, reward, load_prompts(p.train_prompts), train, seed=self.seed,
                          epochs=p.epochs)
        config = {"method": self.method_name, "method_config": asdict(method.config),
                  "train": asdict(train), "eval": asdict(p.eval), "epochs": p.epochs,
                  "reward": p.reward, "seed": self.seed, "model": self.model_name,
                  "trust_region": method.trust_region, "train_prompts": p.train_prompts,
                  "base": self._base_record(),
                  **({"compute_budget": p.compute_budget} if p.compute_budget else {})}
        ckpt = self.paths.checkpoint
        start, wall = 0, 0.0
        if (ckpt / "state.json").exists():
            state = read_checkpoint_state(ckpt)
            saved, now = upgrade_cell_config(state["config"], config), json.loads(json.dumps(config))
            if not same_base(saved["base"], now["base"]):
                raise RunError(base_changed(str(self.dir), saved["base"], now["base"]))
            # the base's path may differ (same weights moved) and its preset name (same settings)
            if {**saved, "base": None} != {**now, "base": None}:
                raise RunError(f"{self.dir} holds a run with another configuration; "
                               "use a new --out or delete it")
            try:
                files = checkpoint_files(ckpt, state)
                model.load_trainable_state_dict(load_tensors(files["weights"]))
                load_optimizer(trainer.optimizer, load_tensors(files["optimizer"]), state["optimizer"])
                if trainer.ema is not None:  # the config kept one, so the checkpoint names its file
                    trainer.load_ema_state_dict(load_tensors(files["ema"]))
            except Exception as e:  # noqa: BLE001 - a damaged checkpoint, whatever the library says
                raise RunError(f"checkpoint {ckpt} is damaged ({type(e).__name__}: "
                               f"{(str(e).splitlines() or [''])[0][:120]}); delete {self.dir} to "
                               "retrain this cell") from None
            start, wall = state["epoch"], state["wall_seconds"]
        main = dist.is_main()  # only rank 0 writes; every rank trains
        if main:
            write_json(self.paths.config, config)
            write_json(self.paths.eval(0), replace(base_eval, epoch=0).to_json())
        metrics = self._read_metrics(start)
        live = open_live_log(self.log_to, self.run_dir, self.model_name, self.method_name,
                             self.seed, config) if main else None
        try:
            if live is not None and start == 0:
                live.log(eval_scalars(base_eval), 0)
            wall, done = self._train(model, method, train, trainer, config, start, wall, metrics, live,
                                     progress)
        except TrainingFault as e:
            kept = (f"The last checkpoint (epoch {read_checkpoint_state(ckpt)['epoch']}) is intact in {ckpt}"
                    if (ckpt / "state.json").exists() else "No checkpoint was written")
            raise RunError(f"{self.method_name} seed {self.seed}: {e}. {kept}") from None
        finally:
            if live is not None:
                live.close()
        with trainer.ema_weights():  # what is measured and drawn: the EMA where one is kept
            # None but on rank 0
            result = self._finish(model, metrics, base_final or base_eval, train, wall, done)
        dist.barrier()
        return result

    def _base_record(self) -> dict:
        """What the cell trains from, with the recipe's name and image size (not part of the
        identity that resuming and reports compare)."""
        base = self.base or base_identity(self.model_name, self.model_path, self.model_options)
        resolution = self.model_options.get("resolution")
        return {**base, "preset": self.preset.name, **({"resolution": resolution} if resolution else {})}

    def _train(self, model, method, train, trainer, config, start: int, wall: float,
               metrics: list[dict], live, progress: bool) -> tuple[float, int]:
        """Epochs `start`… with an evaluation every `eval.every` and a checkpoint after each,
        until `epochs` or the compute budget; returns the training wall time and epochs done."""
        p, ckpt = self.preset, self.paths.checkpoint
        bar = tqdm(range(start, p.epochs), desc=f"{self.label}{self.method_name} seed{self.seed}",
                   disable=not progress or not dist.is_main(), initial=start, total=p.epochs)
        done = start
        for epoch in bar:
            if over_budget(metrics, p.compute_budget):
                break
            t0 = time.perf_counter()
            m, samples = trainer.train_epoch(epoch)
            wall += time.perf_counter() - t0
            m["wall_seconds"] = round(wall, 2)
            metrics.append(m)
            main, done = dist.is_main(), epoch + 1
            if main:
                if epoch == 0 and (warning := floor_warning(m, method.trust_region)):
                    tqdm.write(f"warning: {self.method_name} seed {self.seed}: {warning}", file=sys.stderr)
                save_tensors(self.paths.diagnostics(done), samples)
                shown = {"vs_base": f"{m['reward_vs_base']:+.3f}"} if "reward_vs_base" in m else {}
                bar.set_postfix(reward=f"{m['reward_mean']:.3f}", **shown)
                if live is not None:
                    live.log(scalars(m), done)
            last = done == p.epochs or over_budget(metrics, p.compute_budget)
            if done % p.eval.every == 0 or last:  # every rank scores its share of the prompts
                # evaluated with the EMA, trained on with the raw weights; its peak memory in the next row
                with trainer.ema_weights(), trainer.memory.phase("evaluation"):
                    ev = replace(self.evaluation(model, method, train), epoch=done, wall_seconds=wall)
                if main:
                    write_json(self.paths.eval(done), ev.to_json())
                    if live is not None:
                        live.log(eval_scalars(ev), done)
            if main:
                write_jsonl(self.paths.metrics, metrics)
                save_checkpoint(ckpt, model, trainer.optimizer, {"epoch": done, "wall_seconds": wall,
                                                                 "config": config}, trainer.ema_state_dict())
            dist.barrier()  # the other ranks wait out rank 0's checkpoint
        return wall, done

    def _finish(self, model, metrics: list[dict], base_eval: EvalRecord, train: TrainConfig,
                wall: float, epochs: int) -> dict | None:
        """The final scores (the test sets, eval/final.json, when a benchmark has one), the final
        sample grid and result.json (the cell's mark of being done). Every rank scores its share
        of the test sets; rank 0 alone goes on and returns the result."""
        p = self.preset
        path = self.paths.eval(epochs)
        final = self.evaluation.final(model, EvalRecord.from_json(read_json(path), str(path)))
        if not dist.is_main():
            return None
        if self.evaluation.has_test_sets:
            write_json(self.paths.final_eval, final.to_json())
        self.evaluation.sample_grid(model, self.paths.samples)
        last = metrics[-3:]  # the training reward at the start and over the last epochs
        n_traj = train.prompts_per_epoch * train.group_size
        train_reward = {"first": metrics[0]["reward_mean"],
                        "first_stderr": metrics[0]["reward_std"] / n_traj**0.5,
                        "last": sum(m["reward_mean"] for m in last) / len(last),
                        "last_epochs": len(last)}
        result = CellResult(self.method_name, self.seed, self.model_name, epochs, round(wall, 1), final,
                            base_eval, train_reward, p.reward).to_json()
        write_json(self.paths.result, result)
        return result

    def _read_metrics(self, upto: int) -> list[dict]:
        """metrics.jsonl lines of the epochs the checkpoint covers (a resumed run redoes the rest)."""
        path = self.paths.metrics
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if r["epoch"] < upto]


def over_budget(metrics: list[dict], budget: float | None) -> bool:
    """Whether the next epoch would take the cell's training compute past `budget`: what the
    epochs so far spent plus the last one's cost (an epoch of one method costs the same each
    time; the first always runs)."""
    if budget is None or not metrics:
        return False
    return sum(m["compute_fe"] for m in metrics) + metrics[-1]["compute_fe"] > budget
