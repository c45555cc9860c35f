"""What bf16 autocast buys on this CPU where it cannot touch the ratio (not a test).

Two measurements on the shipped toy model, fp32 and bf16 alternated side by side so that
the machine's other load falls on both alike:

1. the evaluation of the `default` preset (96 eval / 48 ood prompts, 10 steps) of the base
   model and of any trained cells given (`--cell runs/quick/toy/dppo/seed0`): seconds, and
   every score with its stderr (`eval.precision = "bf16"` keeps a score only if it lands
   within its stderr of fp32);
2. one training epoch of the `default` preset (8 × 8 rollouts, grpo): the rollout's seconds
   with its ODE steps in fp32 and in bf16 (`train.ode_precision`), the trained steps in fp32.

    python benchmarks/bf16_speed.py [--repeats 2] [--cell DIR ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowarena.harness.run import Evaluation, get_preset, load_cell_policy  # noqa: E402
from flowarena.methods import build_method  # noqa: E402
from flowarena.methods.trainer import Trainer  # noqa: E402
from flowarena.models import load_model  # noqa: E402
from flowarena.rewards import build_rewards  # noqa: E402
from flowarena.tasks.prompts import load_prompts  # noqa: E402


def evaluate(precision: str, cell: str | None = None):
    p = get_preset("default")
    model = load_model("toy") if cell is None else load_cell_policy(cell)[0]
    t0 = time.perf_counter()
    record = Evaluation(replace(p.eval, precision=precision))(model, None, p.train)
    return time.perf_counter() - t0, {m.key: (m.value, m.stderr) for m in record.metrics
                                      if m.role in ("primary", "secondary")}


def epoch(ode: str) -> dict:
    p = get_preset("default")
    train = replace(p.train, ode_precision=ode)
    trainer = Trainer(load_model("toy"), build_method("grpo"), build_rewards(p.reward, **p.reward_options),
                      load_prompts(p.train_prompts), train, seed=0)
    metrics, _ = trainer.train_epoch(1)  # epoch 1: no noise-floor measurement in the timing
    return metrics


def report(scores: dict) -> None:
    for key, (value, se) in scores["auto"].items():
        fast = scores["bf16"][key][0]
        verdict = "within" if abs(fast - value) <= se else "OUTSIDE"
        print(f"  {key:6s} fp32 {value:7.2f} ± {se:.2f}   bf16 {fast:7.2f}   ({verdict} its stderr)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cell", action="append", default=[], help="a trained cell to check as well")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    times = {"auto": [], "bf16": []}
    scores = {}
    for _ in range(args.repeats):
        for precision in ("auto", "bf16"):
            seconds, scores[precision] = evaluate(precision)
            times[precision].append(seconds)
    print("evaluation of the base model (default preset's settings):")
    report(scores)
    a, b = statistics.median(times["auto"]), statistics.median(times["bf16"])
    print(f"  seconds: fp32 {a:.1f}, bf16 {b:.1f}: bf16 takes {b / a:.2f} of the time")
    for cell in args.cell:
        print(f"evaluation of the trained policy {cell}:")
        report({precision: evaluate(precision, cell)[1] for precision in ("auto", "bf16")})
    roll = {"auto": [], "bf16": []}
    for _ in range(args.repeats):
        for ode in ("auto", "bf16"):
            roll[ode].append(epoch(ode)["rollout_s"])
    a, b = statistics.median(roll["auto"]), statistics.median(roll["bf16"])
    print(f"rollout of one default epoch (8 x 8): ODE steps fp32 {a:.1f} s, bf16 {b:.1f} s: {b / a:.2f}")


if __name__ == "__main__":
    main()
