"""The numbers docs/results.md quotes for the `zoo` run beside `bench report`'s tables: per
method, the epochs each cell trained within the compute budget, the compute spent, the share
of trained steps (or training times) its trust region cut, and the compute at which it first
reached grpo's final held-out GM.

    python benchmarks/zoo_claims.py runs/zoo
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from flowarena.reports.compute import compute_at, compute_to_reach
from flowarena.reports.run_reader import load_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory of `bench run --preset zoo`")
    ap.add_argument("--reference", default="grpo")
    args = ap.parse_args(argv)
    run = load_run(args.run)
    print("| method | seeds | epochs | compute per cell | trust region cut | reached "
          f"{args.reference}'s final GM at (share of its compute) |")
    print("|---|---|---|---|---|---|")
    for model in run.models():
        for method in run.methods(model):
            cells = [c for c in run.cells_of(model, method) if c.result is not None]
            if not cells:
                continue
            epochs = sorted({c.result.epochs for c in cells})
            spent = [max(compute_at(c).values()) for c in cells if compute_at(c)]
            cut = [np.mean([v for r in c.metrics for k, v in r.items() if k.endswith("/trust_frac")])
                   for c in cells]
            reach = compute_to_reach(run, model, method, args.reference) if method != args.reference else {}
            reached = ", ".join("–" if v is None else f"{v:.2f}×" for v in reach.values()) or "(reference)"
            print(f"| {method} | {len(cells)} | {'/'.join(map(str, epochs))} | "
                  f"{np.mean(spent):,.0f} | {np.nanmean(cut):.1%} | {reached} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
