"""The ratio-distribution diagnostics: ρ per timestep, the trust region's cuts, KL(old ‖ new)
against δ, and log ρ split into its signal and its noise."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from flowarena.core.results import parse_diag_key
from flowarena.reports.figures.common import mean_se, number_at, sci
from flowarena.reports.run_reader import DIAG_KEYS, CellData, Run
from flowarena.reports.style import DPI


def _pooled(cells: list[CellData]) -> dict[str, np.ndarray] | None:
    """Every epoch's and seed's trained SDE steps of one method, concatenated (None for a
    forward-process method, which has none)."""
    parts = [d for c in cells for _, d in sorted(c.diagnostics.items()) if all(k in d for k in DIAG_KEYS)]
    if not parts:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in DIAG_KEYS}


def any_sde_steps(run: Run, model: str) -> bool:
    """Whether any method of `model` in the run trains on SDE steps (has ratio diagnostics)."""
    return any(_pooled(run.cells_of(model, m)) is not None for m in run.methods(model))


def _passes(d: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    out = [("first inner loop", d["inner"] == 0)]
    if (d["inner"] > 0).any():
        out.append(("later inner loops", d["inner"] > 0))
    return out


def _pass_groups(diag: dict) -> list[str]:
    """The panels of a per-pass figure: the first inner loop, and later ones where any exist."""
    later = any(len(_passes(d)) > 1 for d in diag.values())
    return ["first inner loop"] + (["later inner loops"] if later else [])


def _moved(d: dict[str, np.ndarray]) -> np.ndarray:
    # The first mini-batch of the first pass sees the policy that sampled it: KL(old || new) = 0 and
    # ρ = 1 exactly. Those steps say nothing about the ratio's distribution and would be a spike.
    return d["kl"] > 0


def _diag_methods(run: Run, model: str) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for m in run.methods(model):
        if (d := _pooled(run.cells_of(model, m))) is not None:
            out[m] = d
    return out


def _trust(run: Run, model: str, method: str, key: str) -> float | None:
    """The method's `ratio_clip` (ε) or `kl_threshold` (δ), from its cells' config.json."""
    for c in run.cells_of(model, method):
        if (v := number_at(c.config, "trust_region", key)) is not None:
            return float(v)
    return None


def _steps(diag: dict[str, dict[str, np.ndarray]]) -> list[int]:
    return sorted({int(k) for d in diag.values() for k in np.unique(d["step"])})


def _pow10(values: np.ndarray) -> int:
    big = np.nanmax(np.abs(values)) if values.size else 0.0
    return int(math.floor(math.log10(big))) if big > 0 else 0


def ratio_histograms(run: Run, model: str) -> Figure | None:
    diag = _diag_methods(run, model)
    if not diag:
        return None
    colours, steps, methods = run.colours(), _steps(diag), list(diag)
    moved_all = np.concatenate([d["ratio"][_moved(d)] - 1 for d in diag.values()])
    p = _pow10(np.percentile(moved_all, [1, 99])) if moved_all.size else 0
    scale = 10.0 ** p
    fig = Figure(figsize=(max(2.7 * len(steps) + 0.6, 10), 2.2 * len(methods) + 1.6), layout="constrained",
                 dpi=DPI)
    axes = np.atleast_2d(fig.subplots(len(methods), len(steps), squeeze=False))
    on_policy = []
    for i, m in enumerate(methods):
        d = diag[m]
        moved = _moved(d)
        on_policy.append(f"{m} {100 * (1 - moved.mean()):.0f} %")
        eps = _trust(run, model, m, "ratio_clip")
        for j, k in enumerate(steps):
            ax = axes[i, j]
            sel = [(name, (d["ratio"][mask & moved & (d["step"] == k)] - 1) / scale)
                   for name, mask in _passes(d)]
            values = np.concatenate([v for _, v in sel])
            ax.set_title(f"{m}, k = {k}", fontsize=9, color=colours[m])
            if values.size == 0:
                ax.text(0.5, 0.5, "not trained", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                ax.set_yticks([])
                continue
            # the central 99 %: pooled epochs have long tails that would squeeze the bulk into a few bins
            lo, hi = np.percentile(values, [0.5, 99.5])
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            for (_, v), style in zip(sel, ({"color": colours[m], "alpha": 0.6},
                                           {"histtype": "step", "color": "black", "lw": 1.2})):
                if v.size:
                    ax.hist(v, bins=np.linspace(lo, hi, 31), weights=np.full(v.size, 100 / v.size), **style)
            ax.axvline(0, color="black", lw=0.8, alpha=0.5)
            ax.axvline(sel[0][1].mean() if sel[0][1].size else 0, color=colours[m], ls="--", lw=1.2)
            if eps is not None:
                if eps / scale <= max(abs(lo), abs(hi)):
                    for s in (-1, 1):
                        ax.axvline(s * eps / scale, color="black", ls=":", lw=1.2)
                else:
                    ax.text(0.02, 0.97, f"clip ±ε = ±{sci(eps)}\noff scale", transform=ax.transAxes,
                            fontsize=7, va="top")
            ax.tick_params(labelsize=8)
            if i == len(methods) - 1:
                ax.set_xlabel(f"ρ − 1 (×1e{p})", fontsize=9)
            if j == 0:
                ax.set_ylabel("% of the pass's steps", fontsize=9)
    handles = [Patch(color=colours[m], alpha=0.6, label=f"{m}: first inner loop") for m in methods]
    if any(len(_passes(d)) > 1 for d in diag.values()):
        handles.append(Patch(fill=False, edgecolor="black", label="later inner loops"))
    handles.append(Line2D([], [], color="grey", ls="--", label="mean (first inner loop)"))
    if any(_trust(run, model, m, "ratio_clip") is not None for m in methods):
        handles.append(Line2D([], [], color="black", ls=":", label="clip 1 ± ε"))
    ncol = min(len(handles), 6 if len(steps) > 3 else 3)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False, fontsize=9)
    fig.suptitle("Distribution of the ratio ρ per trained timestep k (0 = the noisiest step)\nall epochs and "
                 "seeds pooled, the central 99 % of each panel; not shown: the on-policy first mini-batch "
                 "(ρ = 1 exactly),\n" + ", ".join(on_policy) + " of steps", fontsize=10)
    return fig


def ratio_mean(run: Run, model: str) -> Figure | None:
    """Mean ρ − 1 per timestep, next to −KL, the shift a pure-signal ratio would have."""
    diag = _diag_methods(run, model)
    if not diag:
        return None
    colours, steps = run.colours(), _steps(diag)
    groups = _pass_groups(diag)
    vals = np.concatenate([d["ratio"][_moved(d)] - 1 for d in diag.values()] + [np.zeros(1)])
    p = _pow10(np.array([np.std(vals)]))
    scale = 10.0 ** p
    fig = Figure(figsize=(max(6.5 * len(groups), 10), 5.2), layout="constrained", dpi=DPI)
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    width = 0.5 / max(len(diag), 1)
    for ax, group in zip(axes, groups):
        for i, (m, d) in enumerate(diag.items()):
            mask = dict(_passes(d)).get(group)
            if mask is None:
                continue
            mask = mask & _moved(d)
            rows = [(k, *mean_se(d["ratio"][sel] - 1), -d["kl"][sel].mean())
                    for k in steps if (sel := mask & (d["step"] == k)).sum() > 1]
            if not rows:
                continue
            k, mean, se, neg_kl = map(np.array, zip(*rows))
            off = (i - (len(diag) - 1) / 2) * width  # side by side, so the error bars do not overlap
            ax.errorbar(k + off, mean / scale, yerr=se / scale, fmt="o-", capsize=3, color=colours[m])
            ax.plot(k + off, neg_kl / scale, "x:", color=colours[m], ms=7)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(steps)
        ax.set_xlabel("timestep index k (0 = the noisiest step)")
        ax.set_ylabel(f"mean ρ − 1 (×1e{p})")
        ax.set_title(group)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[m], marker="o", label=f"{m}: mean ρ − 1 ± stderr") for m in diag]
    handles.append(Line2D([], [], color="grey", marker="x", ls=":",
                          label="−KL(old ‖ new): the signal's shift"))
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle("Mean of the ratio per timestep: below 0 is the shift of ρ below 1\n"
                 "(off-policy steps, all epochs and seeds pooled)")
    return fig


def _trust_frac(cells: list[CellData], k: int, later: bool, sign: str) -> float | None:
    vals = [v for c in cells for r in c.metrics for key, v in r.items()
            if (d := parse_diag_key(key)) is not None and d[0] == k and (d[1] > 0) == later
            and d[2] == f"trust_frac_{sign}_adv" and isinstance(v, (int, float))]
    return 100 * float(np.mean(vals)) if vals else None


def trust_fractions(run: Run, model: str) -> Figure | None:
    """Share of steps whose gradient the clip or the KL mask removed, per timestep and advantage sign."""
    methods = [m for m in run.methods(model) if any(c.metrics for c in run.cells_of(model, m))]
    if not methods:
        return None
    colours = run.colours()
    keys = {key for m in methods for c in run.cells_of(model, m) for r in c.metrics for key in r}
    trust = [d for key in keys if (d := parse_diag_key(key)) is not None and d[2].startswith("trust_frac")]
    steps = sorted({k for k, _, _ in trust})
    if not steps:
        return None
    groups = [("first inner loop", False)]
    if any(inner > 0 for _, inner, _ in trust):
        groups.append(("later inner loops", True))
    fig = Figure(figsize=(max(6.5 * len(groups), 10), 5.2), layout="constrained", dpi=DPI)
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    width = 0.8 / (2 * len(methods))
    for ax, (group, later) in zip(axes, groups):
        top = 0.0
        for i, m in enumerate(methods):
            cells = run.cells_of(model, m)
            for s, (sign, hatch) in enumerate((("pos", None), ("neg", "///"))):
                xs, ys = [], []
                for k in steps:
                    if (v := _trust_frac(cells, k, later, sign)) is not None:
                        xs.append(k + (2 * i + s - len(methods) + 0.5) * width)
                        ys.append(v)
                ax.bar(xs, ys, width, color=colours[m] if hatch is None else "white", edgecolor=colours[m],
                       hatch=hatch, lw=1)
                top = max([top, *ys])
        if top == 0:
            ax.text(0.5, 0.5, "no step was clipped or masked", ha="center", transform=ax.transAxes)
        ax.set_ylim(0, max(top * 1.15, 1.0))
        ax.set_xticks(steps)
        ax.set_xlabel("timestep index k (0 = the noisiest step)")
        ax.set_ylabel("% of trained steps of that sign")
        ax.set_title(group)
        ax.grid(alpha=0.3, axis="y")
    # The legend fills column by column: one column per method, A > 0 above A < 0.
    handles = [h for m in methods for h in (
        Patch(color=colours[m], label=f"{m}: A > 0"),
        Patch(facecolor="white", edgecolor=colours[m], hatch="///", label=f"{m}: A < 0"))]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(methods), frameon=False)
    fig.suptitle("Steps whose gradient the trust region removed (clipped or masked), by advantage sign\n"
                 "(mean over epochs and seeds; A > 0 is cut only where ρ rose, A < 0 where it fell, "
                 "except for symmetric masks)")
    return fig


def kl_per_step(run: Run, model: str) -> Figure | None:
    """KL(old ‖ new) per timestep, with the trust-region threshold δ of the methods that have one."""
    diag = _diag_methods(run, model)
    if not diag:
        return None
    colours, steps = run.colours(), _steps(diag)
    groups = _pass_groups(diag)
    deltas = {m: _trust(run, model, m, "kl_threshold") for m in diag}
    fig = Figure(figsize=(max(6.5 * len(groups), 10), 5.2), layout="constrained", dpi=DPI)
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    for ax, group in zip(axes, groups):
        for m, d in diag.items():
            mask = dict(_passes(d)).get(group)
            if mask is None:
                continue
            rows = [(k, d["kl"][sel].mean(), *np.percentile(d["kl"][sel], [10, 90]))
                    for k in steps if (sel := mask & _moved(d) & (d["step"] == k)).any()]
            if not rows:
                continue
            k, mean, p10, p90 = map(np.array, zip(*rows))
            label = m
            if deltas[m] is not None:
                above = 100 * (d["kl"][mask] >= deltas[m]).mean()
                label += f" ({above:.1f} % of steps ≥ δ)"
            ax.plot(k, mean, "o-", color=colours[m], label=label)
            ax.fill_between(k, p10, p90, color=colours[m], alpha=0.15, lw=0)
        for m, delta in deltas.items():
            if delta is not None:
                ax.axhline(delta, color=colours[m], ls=":", lw=1.5, label=f"δ = {sci(delta)} ({m})")
        ax.set_yscale("log")
        ax.set_xticks(steps)
        ax.set_xlabel("timestep index k (0 = the noisiest step)")
        ax.set_ylabel("KL(π_old ‖ π_θ) (nats per element)")
        ax.set_title(group)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        else:  # one mini-batch per epoch and one pass: every step was on-policy
            ax.text(0.5, 0.5, "no off-policy steps", transform=ax.transAxes, ha="center", color="grey")
    fig.suptitle("KL between the sampling and the updated policy per trained step, against δ\n"
                 "(line: mean, band: 10-90 % of steps; off-policy steps, all epochs and seeds pooled)")
    return fig


def logratio_decomposition(run: Run, model: str) -> Figure | None:
    """log ρ = −KL (signal) + mean(ε·Δμ/s) (zero-mean noise): their sizes per timestep and their ratio."""
    diag = _diag_methods(run, model)
    if not diag:
        return None
    colours, steps = run.colours(), _steps(diag)
    groups = _pass_groups(diag)
    fig = Figure(figsize=(13, 4.4 * len(groups) + 0.8), layout="constrained", dpi=DPI)
    axes = np.atleast_2d(fig.subplots(len(groups), 2, squeeze=False))
    for (ax_mag, ax_ratio), group in zip(axes, groups):
        for m, d in diag.items():
            mask = dict(_passes(d)).get(group)
            if mask is None:
                continue
            rows = [(k, d["kl"][sel].mean(), d["noise"][sel].std())
                    for k in steps if (sel := mask & _moved(d) & (d["step"] == k)).sum() > 1]
            if not rows:
                continue
            k, signal, noise = map(np.array, zip(*rows))
            ax_mag.plot(k, signal, "o-", color=colours[m])
            ax_mag.plot(k, noise, "s--", color=colours[m])
            ax_ratio.plot(k, noise / np.where(signal > 0, signal, np.nan), "o-", color=colours[m], label=m)
        ax_ratio.axhline(1, color="black", lw=1, ls=":", label="noise = signal")
        for ax in (ax_mag, ax_ratio):
            ax.set_yscale("log")
            ax.set_xticks(steps)
            ax.set_xlabel("timestep index k (0 = the noisiest step)")
            ax.grid(alpha=0.3, which="both")
        ax_mag.set_ylabel("nats per element")
        ax_mag.set_title(f"{group}: the two parts of log ρ")
        ax_ratio.set_ylabel("noise std / |signal| (ratio)")
        ax_ratio.set_title(f"{group}: noise-to-signal ratio")
        ax_ratio.legend(fontsize=8)
        parts = [Line2D([], [], color="black", marker="o", label="|signal| = mean KL(old ‖ new)"),
                 Line2D([], [], color="black", marker="s", ls="--", label="std of the noise ε·Δμ/s")]
        ax_mag.legend(handles=parts + [Patch(color=colours[m], label=m) for m in diag], fontsize=8)
    fig.suptitle("log ρ = −KL (signal) + mean(ε·Δμ/s) (zero-mean noise) per trained timestep "
                 "(off-policy steps, all epochs and seeds pooled)")
    return fig
