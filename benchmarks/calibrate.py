"""Calibrate the trust-region thresholds on the toy world (not a test).

The published ε and δ are tuned for SD3.5 latents; on the toy model the policy moves
less per update, and they never bind. This script reads the per-step diagnostics of a
`bench run` (ρ, the exact KL(old ‖ new) and the advantage of every trained step) and
prints, for each threshold on a log grid, the share of off-policy steps whose gradient
it would remove:

    clip ε   (ρ > 1 + ε and A > 0) or (ρ < 1 − ε and A < 0)        grpo, cps, guard
    mask δ   KL ≥ δ and the step moves away from the old policy   dppo, dppo-cps
    sym δ    KL ≥ δ                                                dppo-sym
    ½log²ρ δ ½(log ρ)² ≥ δ and moving away                         dppo-sampled-kl

then the grid value closest to the target share. Calibrate on runs whose trust region
does not bind (`clip_range=1`, or the published thresholds), so the shares describe
the unconstrained policy's drift:

    bench run --preset default --methods grpo@clip_range=1,cps@clip_range=1,guard@clip_range=1 \\
        --out runs/calibrate
    python benchmarks/calibrate.py runs/calibrate [--target 0.1]

Each cell's recorded ρ is its own method's ratio (cps: the surrogate, guard: RatioNorm's
ρ̃), so read a method's ε from its own cell; the KL-based rows of a cps cell are on the
CPS std (dppo-cps). Off-policy steps are those with KL > 0: the first mini-batch of an
epoch is evaluated before any update and has ρ = 1, KL = 0 exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

GRID = np.array([m * 10.0**e for e in range(-13, -2) for m in (1, 2, 3, 5)])


def load_steps(cell: Path) -> dict[str, np.ndarray]:
    files = sorted((cell / "diagnostics").glob("epoch_*.safetensors"))
    parts = [load_file(f) for f in files]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("ratio", "kl", "adv")}


def shares(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Share of off-policy steps each rule removes, at every threshold of GRID."""
    off = s["kl"] > 0
    rho, kl, adv = s["ratio"][off], s["kl"][off], s["adv"][off]
    log_rho = np.log(rho)
    away = ((log_rho > 0) & (adv > 0)) | ((log_rho < 0) & (adv < 0))
    half_sq = 0.5 * log_rho**2
    rules = {
        "clip ε": lambda t: ((rho > 1 + t) & (adv > 0)) | ((rho < 1 - t) & (adv < 0)),
        "mask δ": lambda t: (kl >= t) & away,
        "sym δ": lambda t: kl >= t,
        "½log²ρ δ": lambda t: (half_sq >= t) & away,
    }
    return {name: np.array([rule(t).mean() for t in GRID]) for name, rule in rules.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--target", type=float, default=0.1, help="share of off-policy steps to remove")
    args = ap.parse_args()
    cells = sorted(p for p in args.run_dir.glob("*/*/seed*") if (p / "diagnostics").is_dir())
    if not cells:
        raise SystemExit(f"error: no cells with diagnostics under {args.run_dir}")
    for cell in cells:
        s = load_steps(cell)
        n_off = int((s["kl"] > 0).sum())
        print(f"\n{cell.relative_to(args.run_dir)}: {n_off} off-policy of {len(s['kl'])} trained steps")
        print(f"  median KL(old‖new) {np.median(s['kl'][s['kl'] > 0]):.2e}, "
              f"median |ρ−1| {np.median(np.abs(s['ratio'][s['kl'] > 0] - 1)):.2e}")
        for name, share in shares(s).items():
            best = int(np.argmin(np.abs(share - args.target)))
            near = ", ".join(f"{GRID[i]:.0e}: {100 * share[i]:.1f}%"
                             for i in range(max(best - 2, 0), min(best + 3, len(GRID))))
            print(f"  {name:9s} → {GRID[best]:.0e} removes {100 * share[best]:.1f}%   ({near})")


if __name__ == "__main__":
    main()
