"""Time one training update of Flow-DPPO against Flow-GRPO on the same batch (not a test).

Both trainers get the same rollout (same prompts, noise and stored actions; the two
methods share the Flow-SDE sampler), then their `update` is timed alternately so that
machine load hits both alike. Prints the median seconds per update and the ratio
dppo / grpo (goal ≤ 1.02: the exact KL costs no extra network pass).

    python benchmarks/step_time.py [--repeats 7] [--methods grpo,dppo]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flowarena.methods import build_method
from flowarena.methods.trainer import TrainConfig, Trainer
from flowarena.models import load_model
from flowarena.rewards import build_reward
from flowarena.tasks.prompts import load_toy_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--methods", default="grpo,dppo")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.methods.split(",")
    cfg = TrainConfig(prompts_per_epoch=8, group_size=8, minibatch_size=32)
    prompts, reward = load_toy_split("train"), build_reward("toy-tifa")
    trainers = {m: Trainer(load_model("toy"), build_method(m), reward, prompts, cfg, seed=0) for m in names}
    t0 = time.perf_counter()
    ro = trainers[names[0]].rollout(0)
    print(f"rollout ({len(ro.prompts)} trajectories, {cfg.steps} steps): {time.perf_counter() - t0:.2f} s")
    times: dict[str, list[float]] = {m: [] for m in names}
    for _ in range(args.repeats):
        for m in names:
            t0 = time.perf_counter()
            trainers[m].update(ro, 0)
            times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(t) for m, t in times.items()}
    for m in names:
        print(f"{m:>16}: {med[m]:.3f} s per update (median of {args.repeats}; "
              f"{cfg.sde_window} trained steps × {len(ro.prompts)} trajectories)")
    base = names[0]
    for m in names[1:]:
        print(f"ratio {m} / {base}: {med[m] / med[base]:.3f}")


if __name__ == "__main__":
    main()
