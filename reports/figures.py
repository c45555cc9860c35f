"""Figures of a run directory as PNG files, drawn from its result files only (never a model).

`load_run` parses the run directory; every file that is absent or half-written is skipped and
named in `Run.missing`, so a running or interrupted run renders whatever exists. `render_all`
draws every figure with matplotlib's object API (no pyplot: no global backend or figure state)
and writes each PNG atomically.
"""

from __future__ import annotations

import json
import logging
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image

from harness.io import _atomic, load_tensors

log = logging.getLogger(__name__)

BASE = "base (pretrained)"
BASE_COLOUR = "#7f7f7f"
# Registered methods keep one colour in every report of every run; other entries (variants
# such as dppo@delta=3e-6) take the unused colours in name order. Grey is the base model's only.
_KNOWN = ["grpo", "dppo", "cps", "guard", "dppo-cps", "dppo-sym", "grpo-noclip", "dppo-sampled-kl"]
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
            "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd", "#e6550d"]
DIAG_KEYS = ("ratio", "kl", "adv", "noise", "step", "inner")
DPI = 110
REWARD_WINDOW = 4  # epochs in the training reward's running mean


def method_colours(methods: list[str]) -> dict[str, str]:
    """method -> colour, stable across figures and runs for the registered methods."""
    colours = {BASE: BASE_COLOUR, "base": BASE_COLOUR}
    free = [c for c in _PALETTE if c not in {_PALETTE[i] for i in range(len(_KNOWN))}]
    for m in methods:
        if m in _KNOWN:
            colours[m] = _PALETTE[_KNOWN.index(m)]
    others = sorted(m for m in methods if m not in colours)
    for i, m in enumerate(others):
        colours[m] = free[i % len(free)]
    return colours


# --- reading the run directory ----------------------------------------------------------------
@dataclass
class Cell:
    """One method x seed directory: <model>/<method>/seed<k>/."""
    model: str
    method: str
    seed: int
    path: Path
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    evals: dict[int, dict] = field(default_factory=dict)
    diagnostics: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    samples: Path | None = None


@dataclass
class Run:
    path: Path
    manifest: dict
    cells: list[Cell]
    bases: dict[tuple[str, int], dict]  # (model, seed) -> base eval.json
    base_samples: dict[tuple[str, int], Path]
    missing: list[str]

    def models(self) -> list[str]:
        return sorted({c.model for c in self.cells} | {m for m, _ in self.bases})

    def methods(self, model: str) -> list[str]:
        return sorted({c.method for c in self.cells if c.model == model})

    def cells_of(self, model: str, method: str) -> list[Cell]:
        return [c for c in self.cells if c.model == model and c.method == method]

    def colours(self) -> dict[str, str]:
        return method_colours(sorted({c.method for c in self.cells}))


def _read_json(path: Path, run: Path, missing: list[str], why_absent: str = "absent") -> dict | None:
    rel = path.relative_to(run)
    if not path.exists():
        missing.append(f"{rel}: {why_absent}")
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError covers JSON and UTF-8 decoding errors
        missing.append(f"{rel}: unreadable, skipped ({type(e).__name__})")
        return None
    if not isinstance(obj, dict):
        missing.append(f"{rel}: not a JSON object, skipped")
        return None
    return obj


def _read_metrics(path: Path, run: Path, missing: list[str]) -> list[dict]:
    """metrics.jsonl rows; a half-written line (a crash mid-write, a copy of a live run) is skipped."""
    rel = path.relative_to(run)
    if not path.exists():
        missing.append(f"{rel}: absent")
        return []
    rows = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            missing.append(f"{rel} line {i}: not valid JSON (half-written?), skipped")
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
        else:
            missing.append(f"{rel} line {i}: no epoch, skipped")
    if not rows:
        missing.append(f"{rel}: no complete row yet")
    return rows


def _read_diagnostics(cell: Cell, run: Path, missing: list[str]) -> None:
    files = sorted((cell.path / "diagnostics").glob("epoch_*.safetensors"))
    if not files:
        missing.append(f"{(cell.path / 'diagnostics').relative_to(run)}: no epoch files")
    for path in files:
        m = re.fullmatch(r"epoch_(\d+)\.safetensors", path.name)
        if not m:
            continue
        try:
            t = load_tensors(path)
        except Exception as e:  # safetensors raises its own error types for a truncated file
            missing.append(f"{path.relative_to(run)}: unreadable, skipped ({type(e).__name__})")
            continue
        lacking = [k for k in DIAG_KEYS if k not in t]
        if lacking:
            missing.append(f"{path.relative_to(run)}: lacks {', '.join(lacking)}, skipped")
            continue
        arrays = {k: t[k].double().numpy().ravel() for k in DIAG_KEYS}
        if len({len(a) for a in arrays.values()}) != 1:
            missing.append(f"{path.relative_to(run)}: tensors of unequal length, skipped")
            continue
        cell.diagnostics[int(m.group(1))] = arrays


def load_run(run_dir: str | Path) -> Run:
    run = Path(run_dir)
    missing: list[str] = []
    manifest = _read_json(run / "manifest.json", run, missing) or {}
    bases, base_samples = {}, {}
    for d in sorted(run.glob("*/base/seed*")):
        seed = int(d.name[4:]) if d.name[4:].isdigit() else None
        if seed is None:
            continue
        ev = _read_json(d / "eval.json", run, missing)
        if ev is not None:
            bases[(d.parts[-3], seed)] = ev
        if (d / "samples.png").exists():
            base_samples[(d.parts[-3], seed)] = d / "samples.png"
        else:
            missing.append(f"{(d / 'samples.png').relative_to(run)}: absent")
    cells = []
    for d in sorted(run.glob("*/*/seed*")):
        model, method = d.parts[-3], d.parts[-2]
        if method == "base" or model == "report" or not d.is_dir() or not d.name[4:].isdigit():
            continue
        cell = Cell(model, method, int(d.name[4:]), d)
        cell.config = _read_json(d / "config.json", run, missing) or {}
        cell.metrics = _read_metrics(d / "metrics.jsonl", run, missing)
        for p in sorted((d / "eval").glob("*.json")):
            if p.stem.isdigit() and (ev := _read_json(p, run, missing)) is not None:
                cell.evals[int(p.stem)] = ev
        _read_diagnostics(cell, run, missing)
        final = d / "samples" / "final.png"
        if final.exists():
            cell.samples = final
        else:
            missing.append(f"{final.relative_to(run)}: absent")
        # figures do not need result.json, but the table does: say why a cell is not in it
        _read_json(d / "result.json", run, missing, "absent (the cell has not finished; not in the table)")
        cells.append(cell)
    return Run(run, manifest, cells, bases, base_samples, missing)


# --- small helpers ------------------------------------------------------------------------------
def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, (int, float)) and math.isfinite(d) else None


def _mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan"))


def _over_seeds(series: list[dict[int, tuple[float, float]]]) -> list[tuple]:
    """Per-seed {epoch: (wall s, value)} -> [(epoch, mean wall, mean, stderr, n)] over the seeds
    that reached that epoch (a running seed contributes what it has)."""
    out = []
    for e in sorted(set().union(*series)):
        pts = [s[e] for s in series if e in s]
        mean, se = _mean_se([p[1] for p in pts])
        out.append((e, float(np.mean([p[0] for p in pts])), mean, se, len(pts)))
    return out


def _n_seeds(cells: list[Cell]) -> int:
    return len({c.seed for c in cells})


def _seed_note(n: int) -> str:
    return f"mean ± stderr over {n} seeds" if n > 1 else "one seed, no band"


def _sci(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


# --- 1. learning curves -------------------------------------------------------------------------
def _reward_series(cell: Cell) -> dict[int, tuple[float, float]]:
    # The rollouts of epoch e come from the policy after e updates: the same x as eval/<e>.json.
    # wall_seconds is stamped after the epoch's update, so its rollouts began rollout_s + update_s
    # earlier.
    out = {}
    for r in cell.metrics:
        y, wall = _get(r, "reward_mean"), _get(r, "wall_seconds")
        if y is not None and wall is not None:
            out[r["epoch"]] = (wall - (_get(r, "rollout_s") or 0) - (_get(r, "update_s") or 0), y)
    return out


def _running_mean(mean: np.ndarray, se: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean over up to `window` epochs (fewer at the start), with the stderr of that mean
    for independent epochs: sqrt(sum se²) / n."""
    n = np.minimum(np.arange(1, len(mean) + 1), window)
    def trailing_sum(y):
        c = np.concatenate([[0.0], np.cumsum(y)])
        return c[1:] - c[np.arange(len(y)) + 1 - n]
    return trailing_sum(mean) / n, np.sqrt(trailing_sum(se**2)) / n


def _eval_series(cell: Cell, *keys: str) -> dict[int, tuple[float, float]]:
    out = {}
    for e, ev in cell.evals.items():
        if (y := _get(ev, *keys)) is not None:
            out[e] = (_get(ev, "wall_seconds") or 0.0, y)  # eval/0.json, the base model, has no wall time
    return out


def learning_curves(run: Run, model: str, x: str = "epoch") -> Figure | None:
    """Training reward, held-out Soft-TIFA GM and KL to the pretrained model against epoch or wall time."""
    methods = run.methods(model)
    if not methods:
        return None
    colours = run.colours()
    reward = next((c.config.get("reward") for c in run.cells if c.config.get("reward")), "reward")
    # Every method sees the same prompts in an epoch, so the raw batch means rise and fall together
    # with the prompts' difficulty; a running mean shows the trend under that shared noise.
    panels = [(f"Training reward (batch mean, running mean of {REWARD_WINDOW} epochs)",
               f"train reward: {reward} (reward units)", _reward_series),
              ("Held-out Soft-TIFA GM", "Soft-TIFA GM (0-100)", lambda c: _eval_series(c, "soft_tifa", "gm")),
              ("KL to the pretrained model", "KL (nats per element, summed over steps)",
               lambda c: _eval_series(c, "kl_to_pretrained", "mean"))]
    n = max(_n_seeds(run.cells_of(model, m)) for m in methods)
    fig = Figure(figsize=(13.5, 4.6), layout="constrained", dpi=DPI)
    axes = fig.subplots(1, 3)
    for ax, (title, ylabel, series_of) in zip(axes, panels):
        for m in methods:
            pts = _over_seeds([series_of(c) for c in run.cells_of(model, m)])
            if not pts:
                continue
            e, wall, mean, se, _ = map(np.array, zip(*pts))
            xs = e if x == "epoch" else wall / 60
            if series_of is _reward_series:
                mean, se = _running_mean(mean, se, REWARD_WINDOW)
            ax.plot(xs, mean, "o-", ms=3, color=colours[m], label=m)
            if np.isfinite(se).any():
                ax.fill_between(xs, mean - se, mean + se, color=colours[m], alpha=0.2, lw=0)
        if "GM" in title:
            gms = [_get(b, "soft_tifa", "gm") for (mm, _), b in run.bases.items() if mm == model]
            if gms := [g for g in gms if g is not None]:
                ax.axhline(np.mean(gms), color=BASE_COLOUR, ls="--", lw=1.2, label=BASE)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("training epochs completed" if x == "epoch"
                      else "training wall time (min, evaluation excluded)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[m], marker="o", ms=3, label=m) for m in methods]
    handles.append(Line2D([], [], color=BASE_COLOUR, ls="--", label=BASE))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Learning curves, model {model} ({_seed_note(n)}); "
                 f"against {'epoch' if x == 'epoch' else 'wall time, averaged over seeds'}")
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
    gms = [g for (mm, _), b in run.bases.items()
           if mm == model and (g := _get(b, "soft_tifa", "gm")) is not None]
    if gms:
        mean, se = _mean_se(gms)
        ax.errorbar([0], [mean], yerr=np.nan_to_num([se]), fmt="D", ms=9, capsize=3, color=BASE_COLOUR,
                    label=BASE, zorder=5)
    n = 1
    for m in methods:
        cells = run.cells_of(model, m)
        n = max(n, _n_seeds(cells))
        gm = _over_seeds([_eval_series(c, "soft_tifa", "gm") for c in cells])
        kl = {e: (mean, se) for e, _, mean, se, _ in
              _over_seeds([_eval_series(c, "kl_to_pretrained", "mean") for c in cells])}
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
    ax.set_ylabel("held-out Soft-TIFA GM (0-100)")
    ax.set_xlim(left=-0.03 * max(ax.get_xlim()[1], 1e-12))  # the base model's marker sits on x = 0
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"Reward-KL frontier, model {model}: every evaluation during training\n"
                 f"(up and left is better; {_seed_note(n).replace('band', 'error bars')})")
    return fig


# --- 3. ratio-distribution diagnostics ----------------------------------------------------------
def _pooled(cells: list[Cell]) -> dict[str, np.ndarray] | None:
    """Every epoch's and seed's trained steps of one method, concatenated."""
    parts = [d for c in cells for _, d in sorted(c.diagnostics.items())]
    if not parts:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in DIAG_KEYS}


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


def _method_setting(run: Run, model: str, method: str, key: str) -> float | None:
    for c in run.cells_of(model, method):
        if (v := _get(c.config, "method_config", key)) is not None:
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
        eps = _method_setting(run, model, m, "clip_range")
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
                    ax.text(0.02, 0.97, f"clip ±ε = ±{_sci(eps)}\noff scale", transform=ax.transAxes,
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
    if any(_method_setting(run, model, m, "clip_range") is not None for m in methods):
        handles.append(Line2D([], [], color="black", ls=":", label="clip 1 ± ε"))
    ncol = min(len(handles), 6 if len(steps) > 3 else 3)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False, fontsize=9)
    fig.suptitle("Distribution of the ratio ρ per trained timestep k (0 = the noisiest step)\nall epochs and "
                 "seeds pooled, the central 99 % of each panel; not shown: the on-policy first mini-batch "
                 "(ρ = 1 exactly),\n" + ", ".join(on_policy) + " of steps", fontsize=10)
    return fig


def _per_step(d, mask, k, fn):
    sel = mask & (d["step"] == k)
    return fn(d, sel) if sel.any() else None


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
            rows = [(k, *_mean_se(d["ratio"][sel] - 1), -d["kl"][sel].mean())
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


def _trust_frac(cells: list[Cell], k: int, later: bool, sign: str) -> float | None:
    pat = re.compile(rf"k{k}/i\d+/trust_frac_{sign}_adv" if later else rf"k{k}/trust_frac_{sign}_adv")
    vals = [v for c in cells for r in c.metrics for key, v in r.items()
            if pat.fullmatch(key) and isinstance(v, (int, float))]
    return 100 * float(np.mean(vals)) if vals else None


def trust_fractions(run: Run, model: str) -> Figure | None:
    """Share of steps whose gradient the clip or the KL mask removed, per timestep and advantage sign."""
    methods = [m for m in run.methods(model) if any(c.metrics for c in run.cells_of(model, m))]
    if not methods:
        return None
    colours = run.colours()
    keys = {key for m in methods for c in run.cells_of(model, m) for r in c.metrics for key in r}
    steps = sorted({int(mt.group(1)) for key in keys if (mt := re.match(r"k(\d+)/trust_frac", key))})
    if not steps:
        return None
    groups = [("first inner loop", False)]
    if any(re.match(r"k\d+/i\d+/trust_frac", key) for key in keys):
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
    deltas = {m: _method_setting(run, model, m, "delta") for m in diag}
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
                ax.axhline(delta, color=colours[m], ls=":", lw=1.5, label=f"δ = {_sci(delta)} ({m})")
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


# --- 4. sample grids ----------------------------------------------------------------------------
def _sample_prompts(pngs: list[Path]) -> list[str]:
    """The prompts of a sample grid's columns (prompts.json beside the PNG), or [] if unknown."""
    for png in pngs:
        try:
            prompts = json.loads((png.parent / "prompts.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(prompts, list) and all(isinstance(p, str) for p in prompts):
            return prompts
    return []


def sample_grid(run: Run, model: str) -> Figure | None:
    """The base model's samples above each method's final samples: the same prompts and initial noise."""
    colours = run.colours()
    rows: list[tuple[str, str, Path]] = []
    base = sorted((s, p) for (mm, s), p in run.base_samples.items() if mm == model)
    if base:
        rows.append((BASE, BASE_COLOUR, base[0][1]))
    for m in run.methods(model):
        cells = [c for c in sorted(run.cells_of(model, m), key=lambda c: c.seed) if c.samples]
        if cells:
            rows.append((f"{m}\n(seed {cells[0].seed}, final)", colours[m], cells[0].samples))
    images = []
    for label, colour, path in rows:
        try:
            with Image.open(path) as im:
                images.append((label, colour, np.asarray(im.convert("RGB"))))
        except OSError as e:
            run.missing.append(f"{path.relative_to(run.path)}: unreadable, skipped ({type(e).__name__})")
    if not images:
        return None
    prompts = _sample_prompts([path for _, _, path in rows])
    h, w = images[0][2].shape[:2]
    width = 11.0
    fig = Figure(figsize=(width + 1.6, len(images) * width * h / w * 1.08 + 0.9 + 0.6 * bool(prompts)),
                 layout="constrained", dpi=DPI)
    axes = np.atleast_1d(fig.subplots(len(images), 1))
    for ax, (label, colour, img) in zip(axes, images):
        ax.imshow(img, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", color=colour, fontsize=10)
    if prompts:  # one column per prompt: name the columns above the first row, where a reader starts
        n = len(prompts)
        axes[0].xaxis.tick_top()
        axes[0].set_xticks([(i + 0.5) * w / n for i in range(n)],
                           [textwrap.fill(p, 16) for p in prompts], fontsize=7, va="bottom")
        axes[0].tick_params(length=0)
    fig.suptitle(f"Samples, model {model}: one eval prompt per column, the same initial noise in every row "
                 "(ODE sampling)")
    return fig


# --- all of them ----------------------------------------------------------------------------------
FIGURES = [
    ("curves_epoch", lambda r, m: learning_curves(r, m, "epoch"),
     "Learning curves against epoch: the training reward of each epoch's rollouts, the held-out Soft-TIFA GM "
     "and the KL to the pretrained model at each evaluation."),
    ("curves_wall", lambda r, m: learning_curves(r, m, "wall"),
     "The same curves against training wall time (evaluation excluded). Wall time depends on the machine's "
     "other load."),
    ("frontier", frontier,
     "Reward-KL frontier: each evaluation's held-out GM against its KL to the pretrained model; every "
     "method starts at the base model (KL 0)."),
    ("ratio_hist", ratio_histograms,
     "Distribution of ρ − 1 per trained timestep, first inner loop against later ones, with the clip range "
     "where the method has one."),
    ("ratio_mean", ratio_mean,
     "Mean ρ − 1 per timestep with its stderr, next to −KL(old ‖ new), the shift below 1 that the "
     "signal part of log ρ predicts."),
    ("trust_fraction", trust_fractions,
     "Share of steps the trust region cut (clipped or masked), per timestep, split by advantage sign: the "
     "asymmetry of the trust region."),
    ("kl_old_new", kl_per_step,
     "KL(π_old ‖ π_θ) per timestep against the threshold δ of the KL-masked methods."),
    ("logratio", logratio_decomposition,
     "log ρ split into its signal (−KL) and its zero-mean noise (ε·Δμ/s): sizes and noise-to-signal ratio "
     "per timestep."),
    ("samples", sample_grid,
     "Samples of the base model and of each method after training, on the same prompts and initial noise."),
]


def render_all(run: Run, out_dir: str | Path) -> list[dict]:
    """Every figure of every model as out_dir/<model>_<name>.png; returns [{path, name, caption}].
    A figure without data, or one that fails on odd data, is named in run.missing instead."""
    out_dir = Path(out_dir)
    done = []
    for model in run.models():
        for name, draw, caption in FIGURES:
            try:
                fig = draw(run, model)
            except Exception as e:  # one odd file must not cost the rest of the report
                log.exception("figure %s (%s) failed", name, model)
                run.missing.append(f"figure {model}_{name}: failed ({type(e).__name__}: {e})")
                continue
            if fig is None:
                run.missing.append(f"figure {model}_{name}: no data yet")
                continue
            path = out_dir / f"{model}_{name}.png"
            _atomic(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=DPI))
            done.append({"path": path, "name": f"{model}_{name}", "caption": caption})
    return done
