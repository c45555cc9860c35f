"""Before/after wall time of a toy preset's `bench run` (not a test; timings never gate CI).

"Before" is the code of an older commit (`--before`, default e5ad8c1: the last commit before
issue 19's speed work), checked out in a temporary git worktree and run as one process on all
the cores (the plain `bench run`); "after" is this tree with `--jobs J` (J processes, one thread
each). Both run the same command (the preset cut to a few methods, seeds
and epochs, its evaluation settings kept) into fresh directories, alternated ABBA so that drift
in the machine's load falls on both alike. Prints each run's seconds, the median ratio
after / before, and what the host computes bf16 with (the presets use bf16 only on hardware
with bf16 units: on a CPU without them the "after" side gains only from the jobs and the
channels-last layout).

    python benchmarks/preset_time.py [--preset main] [--methods grpo,dppo] [--seeds 2]
                                     [--epochs 3] [--jobs 2] [--repeats 2] [--before REV]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowarena.models.base import native_bf16  # noqa: E402


def bench_run(tree: Path, out: Path, args, jobs: int | None) -> float:
    """Seconds of one `bench run` from `tree`'s code (its directory first on the path); `jobs`
    None: the plain run, one process on all the cores (`--jobs 1` would mean one thread)."""
    env = dict(os.environ)
    if (tree / "core").is_dir():  # the flowarena layout: a link named flowarena puts the tree first
        link = out.parent / f".{out.name}-code" / "flowarena"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(tree.resolve())
        env["PYTHONPATH"], module = str(link.parent), "flowarena.harness"
    else:  # commits before the flowarena namespace: top-level packages, run from the tree
        module = "harness.cli"
    cmd = [sys.executable, "-m", module, "run", "--preset", args.preset, "--methods", args.methods,
           "--seeds", str(args.seeds), "--epochs", str(args.epochs), "--out", str(out)]
    cmd += [] if jobs is None else ["--jobs", str(jobs)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"bench run failed in {tree}:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="main")
    ap.add_argument("--methods", default="grpo,dppo")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="ABBA pairs: 2 runs each per repeat")
    ap.add_argument("--before", default="e5ad8c1")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    times: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="preset-time-") as tmp:
        old = Path(tmp) / "before"
        added = subprocess.run(["git", "worktree", "add", "--detach", str(old), args.before], cwd=ROOT,
                               capture_output=True, text=True)
        if added.returncode != 0:
            sys.exit(f"cannot check out --before {args.before}: {added.stderr.strip().splitlines()[-1]}")
        try:
            order = ["before", "after", "after", "before"] * args.repeats
            for i, side in enumerate(order):
                tree, jobs = (old, None) if side == "before" else (ROOT, args.jobs)
                seconds = bench_run(tree, Path(tmp) / f"run{i}", args, jobs)
                times[side].append(seconds)
                how = "one process" if jobs is None else f"--jobs {jobs}"
                print(f"{side:6s} ({how}): {seconds:6.1f} s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    host = {"cpu": torch.backends.cpu.get_cpu_capability(), "bf16_units": native_bf16("cpu"),
            "threads": torch.get_num_threads()}
    print(f"\n{args.preset} cut to {args.methods} × {args.seeds} seeds × {args.epochs} epochs; host {host}")
    print(f"median before {before:.1f} s, after {after:.1f} s: after / before = {after / before:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "host": host,
                                         "seconds": times, "ratio": after / before}, indent=1))


if __name__ == "__main__":
    main()
