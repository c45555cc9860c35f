"""Replay a cell's training rollouts with the base model and the final policy (not a test).

A cell's training reward mixes two things: how good the policy is, and how hard that
epoch's prompts are. The rollout of epoch e (prompts, initial noise, SDE window and
noise) depends only on (seed, e), so it can be replayed exactly with any policy. This
script replays every epoch of a finished cell twice, with the pretrained model (the
LoRA at its zero initialisation) and with the cell's last checkpoint, and prints both
beside the reward the cell logged:

    python benchmarks/replay_rollouts.py runs/main/toy/dppo/seed0 [--every 2]

The base column at epoch 0 equals the logged one (the policy has not moved yet), which
checks the replay. Where the base column moves with the logged one, the training reward
follows the prompt mix; final − base on the same rollouts is the policy's gain on its
own training distribution (SDE sampling), with a stderr over epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from flowarena.core.io import load_tensors
from flowarena.harness.run import RunError, read_cell
from flowarena.methods import build_method
from flowarena.methods.trainer import TrainConfig, Trainer
from flowarena.models import load_model
from flowarena.rewards import build_rewards
from flowarena.tasks.prompts import load_prompts


def _trainer(cfg: dict, run_config: dict, weights: Path | None) -> Trainer:
    """The cell's trainer, rebuilt from its config.json (method, trainer and reward as run)."""
    t = cfg["train"]
    train = TrainConfig(**{**t, "adam_betas": tuple(t["adam_betas"]),
                           "lora_targets": tuple(t["lora_targets"]) if t.get("lora_targets") else None})
    method = build_method(cfg["method"].split("@")[0], **cfg["method_config"])
    reward = build_rewards(cfg["reward"], **run_config.get("resolved", {}).get("reward_options", {}))
    model = load_model(cfg["model"], run_config.get("model_path"), **run_config.get("model_options", {}))
    trainer = Trainer(model, method, reward, load_prompts(cfg.get("train_prompts", "toy-train")), train,
                      seed=cfg["seed"], epochs=cfg["epochs"])
    if weights is not None:  # the trainer added the LoRA at zero: without weights, the base model
        model.load_trainable_state_dict(load_tensors(weights))
    return trainer


def replay(cell: Path, every: int = 1, echo=print) -> dict:
    """Per replayed epoch: the base model's, the logged and the final policy's mean reward,
    and each reward component's base and final means."""
    cfg, run_config, weights = read_cell(cell)
    base, final = _trainer(cfg, run_config, None), _trainer(cfg, run_config, weights)
    logged = {m["epoch"]: m["reward_mean"]
              for m in map(json.loads, (cell / "metrics.jsonl").read_text().splitlines())}
    out = {"epoch": [], "base": [], "logged": [], "final": [], "components": {}}
    for e in range(0, cfg["epochs"], every):
        rb, rf = base.rollout(e), final.rollout(e)
        for key, v in (("epoch", e), ("base", rb.rewards.mean().item()),
                       ("logged", logged.get(e, float("nan"))), ("final", rf.rewards.mean().item())):
            out[key].append(v)
        for name, c in rb.reward_details.get("components", {}).items():
            fc = rf.reward_details["components"][name]
            out["components"].setdefault(name, []).append((c.float().mean().item(), fc.float().mean().item()))
        echo(f"epoch {e:3d}  base {out['base'][-1]:.4f}  logged {out['logged'][-1]:.4f}  "
             f"final {out['final'][-1]:.4f}")
    return out


def _mean_se(x: np.ndarray) -> str:
    return f"{x.mean():+.4f} ± {x.std(ddof=1) / np.sqrt(len(x)):.4f}" if len(x) > 1 else f"{x.mean():+.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell", type=Path, help="a finished toy cell: runs/<name>/toy/<method>/seed<k>")
    ap.add_argument("--every", type=int, default=1, help="replay every n-th epoch")
    args = ap.parse_args()
    try:
        r = replay(args.cell, args.every, echo=lambda line: print(line, flush=True))
    except RunError as e:
        sys.exit(f"error: {e}")
    a = np.array([r["base"], r["logged"], r["final"]]).T
    half = len(a) // 2
    for name, sl in (("first half", slice(0, half)), ("second half", slice(half, None))):
        print(f"{name:12s} base {a[sl, 0].mean():.4f}  logged {a[sl, 1].mean():.4f}  "
              f"final {a[sl, 2].mean():.4f}   logged − base {_mean_se(a[sl, 1] - a[sl, 0])}")
    print(f"final − base over all replayed epochs: {_mean_se(a[:, 2] - a[:, 0])}")
    for name, p in r["components"].items():
        b, f = np.array(p).T
        print(f"  {name}: base {b[0]:.4f} at epoch 0, {b[-3:].mean():.4f} over the last three replayed; "
              f"final − base {_mean_se(f - b)}")


if __name__ == "__main__":
    main()
