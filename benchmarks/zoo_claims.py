"""The numbers docs/results.md quotes for the `zoo` run beside `bench report`'s tables: per
method, the epochs each cell trained within the compute budget, the compute spent, the share
of trained steps (or training times) its trust region cut, and the compute at which it first
reached grpo's final held-out GM.

    python benchmarks/zoo_claims.py runs/zoo

`--add RUN` joins the cells of another run of the same setting (the same seeds, base model
and evaluation prompts: checked on the pretrained model's evaluations; a method both ran is
named after that run's directory), e.g. a method trained on a larger budget (`--methods nft
--compute-budget 43776 --out runs/nft3x`). `--budgets 1,2,3` then reads each method at its
last evaluation within k × the reference's compute and pairs its held-out GM with the
reference's final one: does the method reach it with k× the compute?

    python benchmarks/zoo_claims.py runs/zoo --add runs/nft3x --budgets 1,2,3
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from flowarena.core.rundir import RunDir
from flowarena.reports.compute import compute_at, compute_to_reach, matched_compute
from flowarena.reports.run_reader import Run, load_run


def _joined(run: Run, other: Run) -> None:
    """`other`'s cells into `run`, once the pretrained model's evaluations agree per seed."""
    mine = {(b.model, b.seed): b.final for b in run.bases}
    for b in other.bases:
        here = mine.get((b.model, b.seed))
        if here is not None and here.metric("gm").per_prompt != b.final.metric("gm").per_prompt:
            sys.exit(f"{other.path}: its pretrained model's evaluation of seed {b.seed} differs from "
                     f"{run.path}'s: another setting, not joinable")
    ours = {(c.model, c.method) for c in run.cells}
    for c in other.cells:  # a method both ran is named after its run directory: nft [nft3x]
        if (c.model, c.method) in ours:
            c.method = f"{c.method} [{other.path.name}]"
            if c.result is not None:
                c.result.method = c.method
        run.cells.append(c)


def _multiples(text: str) -> list[float]:
    try:
        values = [float(k) for k in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"positive numbers separated by commas, e.g. 1,2,3, not {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory of `bench run --preset zoo`")
    ap.add_argument("--reference", default="grpo")
    ap.add_argument("--add", action="append", default=[], help="another run of the same setting")
    ap.add_argument("--budgets", type=_multiples, default=[],
                    help="multiples of the reference's compute, e.g. 1,2,3")
    args = ap.parse_args(argv)
    for path in (args.run, *args.add):
        if not RunDir(path).manifest.is_file():
            ap.error(f"{path} is not a run directory (no manifest.json)")
    run = load_run(args.run)
    for other in args.add:
        _joined(run, load_run(other))
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
    if args.budgets:
        _at_budgets(run, args.reference, args.budgets)
    return 0


def _at_budgets(run: Run, reference: str, multiples: list[float]) -> None:
    """Each method at its last evaluation within k × the reference's compute, against the
    reference's final evaluation (within any k ≥ 1), paired over seeds and prompts."""
    print(f"\n| method | × {reference}'s compute | epochs read | ΔGM vs {reference}'s final [95 % CI] |")
    print("|---|---|---|---|")
    for model in run.models():
        ref_cells = [c for c in run.cells_of(model, reference) if compute_at(c)]
        if not ref_cells:
            continue
        total = max(max(compute_at(c).values()) for c in ref_cells)
        for k in multiples:
            for m in matched_compute(run, reference, budget=k * total * (1 + 1e-9)):
                for d in (d for d in m.paired if d.key == "gm" and d.model == model):
                    epochs = "/".join(str(e) for e in sorted({e for _, e, _ in m.picks[d.method]}))
                    print(f"| {d.method} | {k:g} | {epochs} | {d.text()} |")


if __name__ == "__main__":
    sys.exit(main())
