"""Figures of a run directory as PNG files, drawn from its result files only (never a model):
one module per family (curves, ratios, samples). `render_all` draws every figure with
matplotlib's object API (no pyplot: no global backend or figure state) and writes each PNG
atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flowarena.core.io import atomic_write
from flowarena.reports.figures.curves import frontier, learning_curves
from flowarena.reports.figures.paired import paired_intervals
from flowarena.reports.figures.ratios import (
    any_sde_steps,
    kl_per_step,
    logratio_decomposition,
    ratio_histograms,
    ratio_mean,
    trust_fractions,
)
from flowarena.reports.figures.samples import sample_grid
from flowarena.reports.run_reader import Run, load_run
from flowarena.reports.style import DPI

log = logging.getLogger(__name__)

FIGURES = [
    ("curves_epoch", lambda r, m: learning_curves(r, m, "epoch"),
     "Learning curves against epoch: the training reward of each epoch's rollouts, the held-out Soft-TIFA GM "
     "and the KL to the pretrained model at each evaluation."),
    ("curves_wall", lambda r, m: learning_curves(r, m, "wall"),
     "The same curves against training wall time (evaluation excluded). Wall time depends on the machine's "
     "other load."),
    ("curves_compute", lambda r, m: learning_curves(r, m, "compute"),
     "The same curves against training compute: the denoiser's evaluations spent training, in "
     "forward-equivalents of one image (a backward counts two), so methods are compared at equal cost."),
    ("frontier", frontier,
     "Reward-KL frontier: each evaluation's held-out GM against its KL to the pretrained model; every "
     "method starts at the base model (KL 0)."),
    ("paired", paired_intervals,
     "Each method minus the reference method, paired over seeds and evaluation prompts, with 95 % "
     "two-way bootstrap intervals (report/paired.md); a filled marker: the interval excludes 0."),
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


SDE_FIGURES = ("ratio_hist", "ratio_mean", "kl_old_new", "logratio")
"""The figures of SDE-step methods' ratios: a run of forward-process methods alone has none."""


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
                if name not in SDE_FIGURES or any_sde_steps(run, model):  # else none applies
                    run.missing.append(f"figure {model}_{name}: no data yet")
                continue
            path = out_dir / f"{model}_{name}.png"
            atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=DPI))
            done.append({"path": path, "name": f"{model}_{name}", "caption": caption})
    return done


__all__ = ["FIGURES", "Run", "load_run", "render_all"]
