"""Compute as an axis: what each cell spent training (`methods/compute.py`, forward-equivalents
of the denoiser per image at the model's resolution), and the paired comparison at a matched
budget.

Methods differ in what an epoch costs (a forward-process method evaluates the network at
every training time and its old policy once more; an SDE method only at its window's
steps), so equal epochs are not equal compute. At a budget C every method is read at its last
evaluation whose cumulative training compute is within C, and the paired differences are
taken there. The default C is the largest budget every cell reached: the smallest total.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from flowarena.reports.paired import PairedDiff, paired_differences
from flowarena.reports.run_reader import CellData, Run


def compute_at(cell: CellData) -> dict[int, float]:
    """{epochs done: cumulative training compute} from metrics.jsonl (0 → 0); {} for a cell
    written before compute was counted, or with an epoch missing."""
    rows = sorted(cell.metrics, key=lambda r: r["epoch"])
    if not rows or any("compute_fe" not in r for r in rows) or \
            [r["epoch"] for r in rows] != list(range(len(rows))):
        return {}
    out, total = {0: 0.0}, 0.0
    for r in rows:
        total += float(r["compute_fe"])
        out[r["epoch"] + 1] = total
    return out


def matched_budget(run: Run, model: str) -> float | None:
    """The largest budget every finished cell of `model` reached (None: a cell without counts)."""
    cells = [c for c in run.cells if c.model == model and c.result is not None]
    totals = [compute_at(c) for c in cells]
    if not cells or not all(totals):
        return None
    return min(max(t.values()) for t in totals)


def evaluation_within(cell: CellData, budget: float) -> int | None:
    """The last evaluated epoch whose cumulative compute is within `budget` (0: the pretrained
    model's evaluation, which every cell holds as its epoch 0)."""
    spent = compute_at(cell)
    within = [e for e in cell.evals if e in spent and spent[e] <= budget * (1 + 1e-9)]
    return max(within) if within else None


@dataclass
class MatchedCompute:
    model: str
    budget: float
    picks: dict[str, list[tuple[int, int, float]]]
    """method → [(seed, epoch used, compute at that epoch)]."""
    paired: list[PairedDiff]


def matched_compute(run: Run, reference: str, budget: float | None = None) -> list[MatchedCompute]:
    """Per model, every method against `reference` at one compute budget (default: the
    matched one), paired over seeds and prompts as at equal epochs."""
    out = []
    for model in run.models():
        b = matched_budget(run, model) if budget is None else budget
        if b is None:
            continue
        picks: dict[str, list[tuple[int, int, float]]] = {}
        results: dict[tuple[str, str], list] = {}
        for cell in sorted(run.cells, key=lambda c: (c.method, c.seed)):
            if cell.model != model or cell.result is None or (e := evaluation_within(cell, b)) is None:
                continue
            picks.setdefault(cell.method, []).append((cell.seed, e, compute_at(cell)[e]))
            results.setdefault((model, cell.method), []).append(SimpleNamespace(seed=cell.seed,
                                                                                 final=cell.evals[e]))
        if reference in picks:
            out.append(MatchedCompute(model, b, picks, paired_differences(results, reference)))
    return out


def compute_to_reach(run: Run, model: str, method: str, reference: str) -> dict[int, float | None]:
    """Per seed both finished: the training compute at `method`'s first evaluation whose
    paired headline (GM) reaches `reference`'s final one on that seed, as a share of the
    reference's total compute (None: not within the run). An efficiency claim ("reaches
    Flow-GRPO's score with k× less compute") read off the curves, one number per seed."""
    refs = {c.seed: c for c in run.cells_of(model, reference) if c.result is not None}
    out = {}
    for cell in sorted(run.cells_of(model, method), key=lambda c: c.seed):
        ref = refs.get(cell.seed)
        spent, ref_spent = compute_at(cell), compute_at(ref) if ref else {}
        if not (ref and cell.result and spent and ref_spent) or ref.result.final.paired is None:
            continue
        target = ref.result.final.paired.value
        reached = [e for e in sorted(cell.evals) if e in spent and e > 0 and cell.evals[e].paired is not None
                   and cell.evals[e].paired.value >= target]
        out[cell.seed] = spent[reached[0]] / max(ref_spent.values()) if reached else None
    return out


def budget_text(m: MatchedCompute) -> str:
    """Which evaluation each method is read at, in one paragraph."""
    parts = []
    for method, picks in sorted(m.picks.items()):
        epochs = sorted({e for _, e, _ in picks})
        spent = max(c for _, _, c in picks)
        parts.append(f"{method} epoch {'/'.join(map(str, epochs))} ({spent / m.budget:.0%})")
    return (f"At matched compute ({m.model}): a budget of {m.budget:,.0f} forward-equivalents per cell, "
            f"the largest every cell reached; each method at its last evaluation within it: "
            + ", ".join(parts) + ".")


def reach_text(run: Run, model: str, reference: str) -> str:
    """One line per method: the compute at which it first reached the reference's final score."""
    lines = []
    for method in run.methods(model):
        if method == reference or not (per := compute_to_reach(run, model, method, reference)):
            continue
        shares = ", ".join("not reached" if v is None else f"{v:.2f}×" for v in per.values())
        lines.append(f"- {method}: {shares} (seeds {', '.join(map(str, per))})")
    if not lines:
        return ""
    return (f"\nTraining compute at which each method's held-out score first reached {reference}'s "
            f"final score on the same seed, as a share of {reference}'s total (first evaluation at or "
            "above it):\n\n"
            + "\n".join(lines) + "\n")
