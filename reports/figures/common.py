"""Small helpers the figure families share."""

from __future__ import annotations

import math

import numpy as np

from flowarena.reports.run_reader import CellData


def finite(x) -> float | None:
    """x where it is a finite number, else None (a missing or NaN value draws nothing)."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def number_at(d: dict, *keys):
    """The finite number at d[k0][k1]…, or None."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return finite(d)


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan"))


def over_seeds(series: list[dict[int, tuple[float, float]]]) -> list[tuple]:
    """Per-seed {epoch: (wall s, value)} -> [(epoch, mean wall, mean, stderr, n)] over the seeds
    that reached that epoch (a running seed contributes what it has)."""
    out = []
    for e in sorted(set().union(*series)):
        pts = [s[e] for s in series if e in s]
        mean, se = mean_se([p[1] for p in pts])
        out.append((e, float(np.mean([p[0] for p in pts])), mean, se, len(pts)))
    return out


def n_seeds(cells: list[CellData]) -> int:
    return len({c.seed for c in cells})


def seed_note(n: int) -> str:
    return f"mean ± stderr over {n} seeds" if n > 1 else "one seed, no band"


def sci(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")
