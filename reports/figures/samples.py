"""Sample grids: the base model above each method, on the same prompts and noise."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from flowarena.reports.run_reader import Run
from flowarena.reports.style import BASE, BASE_COLOUR, DPI


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
    base = [b.samples for b in run.bases_of(model) if b.samples is not None]
    if base:
        rows.append((BASE, BASE_COLOUR, base[0]))
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
