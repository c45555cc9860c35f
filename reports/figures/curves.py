"""Learning curves and the reward–KL frontier."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from flowarena.core.results import EvalRecord
from flowarena.reports.compute import compute_at
from flowarena.reports.figures.common import finite, mean_se, n_seeds, number_at, over_seeds, seed_note
from flowarena.reports.run_reader import CellData, Run
from flowarena.reports.style import BASE, BASE_COLOUR, DPI, REWARD_WINDOW


# --- 1. learning curves -------------------------------------------------------------------------
def _reward_series(cell: CellData, key: str = "reward_mean") -> dict[int, tuple[float, float]]:
    # The rollouts of epoch e come from the policy after e updates: the same x as eval/<e>.json.
    # wall_seconds is stamped after the epoch's update, so its rollouts began rollout_s + update_s
    # earlier.
    out = {}
    for r in cell.metrics:
        y, wall = number_at(r, key), number_at(r, "wall_seconds")
        if y is not None and wall is not None:
            out[r["epoch"]] = (wall - (number_at(r, "rollout_s") or 0) - (number_at(r, "update_s") or 0), y)
    return out


def running_mean(mean: np.ndarray, se: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean over up to `window` epochs (fewer at the start), with the stderr of that mean
    for independent epochs: sqrt(sum se²) / n."""
    n = np.minimum(np.arange(1, len(mean) + 1), window)
    def trailing_sum(y):
        c = np.concatenate([[0.0], np.cumsum(y)])
        return c[1:] - c[np.arange(len(y)) + 1 - n]
    return trailing_sum(mean) / n, np.sqrt(trailing_sum(se**2)) / n


def _score(ev: EvalRecord) -> float | None:
    """The held-out score a figure follows: the paired primary metric (Soft-TIFA GM)."""
    return None if ev.paired is None else finite(ev.paired.value)


def _kl(ev: EvalRecord) -> float | None:
    return finite(ev.kl)


def _ood(ev: EvalRecord):
    """The paired secondary metric (PickScore out of domain), where a benchmark reports one."""
    return next((m for m in ev.metrics if m.paired and m.role == "secondary"), None)


def _ood_score(ev: EvalRecord) -> float | None:
    return None if (m := _ood(ev)) is None else finite(m.value)


def _score_title(run: Run) -> str:
    evals = [*(b.eval for b in run.bases), *(e for c in run.cells for e in c.evals.values())]
    return next((e.paired.title for e in evals if e.paired is not None), "score")


def _eval_series(cell: CellData, value_of) -> dict[int, tuple[float, float]]:
    out = {}
    for e, ev in cell.evals.items():
        if (y := value_of(ev)) is not None:
            out[e] = (ev.wall_seconds or 0.0, y)  # eval/0.json, the base model, has no wall time
    return out


def learning_curves(run: Run, model: str, x: str = "epoch") -> Figure | None:
    """Training reward, the held-out score (Soft-TIFA GM), the out-of-domain one where a benchmark
    reports it (PickScore), and KL to the pretrained model against epoch or wall time."""
    methods = run.methods(model)
    if not methods:
        return None
    colours = run.colours()
    reward = next((c.config.get("reward") for c in run.cells if c.config.get("reward")), "reward")
    score = _score_title(run)
    # The raw batch mean rises and falls with the epoch's prompts as much as with the policy; the
    # same rollouts sampled by the pretrained model take the prompts out (reward_vs_base; runs of
    # older code have the raw mean only). A running mean shows the trend either way.
    relative = any("reward_vs_base" in r for c in run.cells for r in c.metrics)
    key = "reward_vs_base" if relative else "reward_mean"
    what = "− the pretrained model’s on the same rollouts" if relative else "(batch mean)"
    panels = [(f"Training reward {what}\n(running mean of {REWARD_WINDOW} epochs)",
               f"train reward{' gain' if relative else ''}: {reward} (reward units)",
               lambda c: _reward_series(c, key)),
              (f"Held-out {score}", score, lambda c: _eval_series(c, _score)),
              ("KL to the pretrained model", "KL (nats per element, summed over steps)",
               lambda c: _eval_series(c, _kl))]
    evals = [e for c in run.cells for e in c.evals.values()]
    if ood := next((m.title for e in evals if (m := _ood(e)) is not None), None):
        panels.insert(2, (f"Held-out {ood}", ood, lambda c: _eval_series(c, _ood_score)))
    n = max(n_seeds(run.cells_of(model, m)) for m in methods)
    fig = Figure(figsize=(4.5 * len(panels), 4.6), layout="constrained", dpi=DPI)
    axes = fig.subplots(1, len(panels))
    for ax, (title, ylabel, series_of) in zip(axes, panels):
        for m in methods:
            pts = over_seeds([series_of(c) for c in run.cells_of(model, m)])
            if not pts:
                continue
            e, wall, mean, se, _ = map(np.array, zip(*pts))
            if x == "compute":  # the same for every seed of a method: its counts follow the config
                spent = next((s for c in run.cells_of(model, m) if (s := compute_at(c))), {})
                xs = np.array([spent.get(int(k), np.nan) for k in e]) / 1e3
            else:
                xs = e if x == "epoch" else wall / 60
            if title.startswith("Training reward"):
                mean, se = running_mean(mean, se, REWARD_WINDOW)
            ax.plot(xs, mean, "o-", ms=3, color=colours[m], label=m)
            if np.isfinite(se).any():
                ax.fill_between(xs, mean - se, mean + se, color=colours[m], alpha=0.2, lw=0)
        if title.startswith("Training reward") and relative:
            ax.axhline(0, color=BASE_COLOUR, ls="--", lw=1.2)  # the pretrained model, by construction
        if title.startswith("Held-out"):
            of = _score if title == f"Held-out {score}" else _ood_score
            gms = [of(b.eval) for b in run.bases_of(model)]
            if gms := [g for g in gms if g is not None]:
                ax.axhline(np.mean(gms), color=BASE_COLOUR, ls="--", lw=1.2, label=BASE)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel({"epoch": "training epochs completed",
                       "wall": "training wall time (min, evaluation excluded)",
                       "compute": "training compute (thousand forward-equivalents per cell)"}[x])
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[m], marker="o", ms=3, label=m) for m in methods]
    handles.append(Line2D([], [], color=BASE_COLOUR, ls="--", label=BASE))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Learning curves, model {model} ({seed_note(n)}); "
                 f"against {dict(epoch='epoch', compute='compute').get(x, 'wall time, averaged over seeds')}")
    return fig


# --- 2. reward-KL frontier ----------------------------------------------------------------------
def frontier(run: Run, model: str) -> Figure | None:
    """Held-out GM against KL to the pretrained model, one line per method through its evaluations."""
    methods = run.methods(model)
    if not methods:
        return None
    colours = run.colours()
    fig = Figure(figsize=(8.5, 5.8), layout="constrained", dpi=DPI)
    ax = fig.subplots()
    gms = [g for b in run.bases_of(model) if (g := _score(b.eval)) is not None]
    if gms:
        mean, se = mean_se(gms)
        ax.errorbar([0], [mean], yerr=np.nan_to_num([se]), fmt="D", ms=9, capsize=3, color=BASE_COLOUR,
                    label=BASE, zorder=5)
    n = 1
    for m in methods:
        cells = run.cells_of(model, m)
        n = max(n, n_seeds(cells))
        gm = over_seeds([_eval_series(c, _score) for c in cells])
        kl = {e: (mean, se) for e, _, mean, se, _ in over_seeds([_eval_series(c, _kl) for c in cells])}
        pts = [(kl[e][0], g, kl[e][1], se, e) for e, _, g, se, _ in gm if e in kl]
        if not pts:
            continue
        kx, gy, kse, gse, ep = map(np.array, zip(*pts))
        gse = np.where(ep == 0, 0, np.nan_to_num(gse))  # epoch 0 is the base model, drawn once in grey
        ax.errorbar(kx, gy, xerr=np.nan_to_num(kse), yerr=gse, fmt="o-", ms=5, capsize=3,
                    color=colours[m], label=m)
        for xi, yi, e in zip(kx, gy, ep):
            if e > 0:
                ax.annotate(f"epoch {e}", (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=8,
                            color=colours[m])
    ax.set_xlabel("KL to the pretrained model (nats per element, summed over sampling steps)")
    ax.set_ylabel(f"held-out {_score_title(run)}")
    ax.set_xlim(left=-0.03 * max(ax.get_xlim()[1], 1e-12))  # the base model's marker sits on x = 0
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"Reward-KL frontier, model {model}: every evaluation during training\n"
                 f"(up and left is better; {seed_note(n).replace('band', 'error bars')})")
    return fig
