"""The look shared by every figure: one colour per method in every report of every run."""

from __future__ import annotations

BASE = "base (pretrained)"
BASE_COLOUR = "#7f7f7f"
# Registered methods keep one colour in every report of every run; other entries (variants
# such as dppo@delta=3e-6) take the unused colours in name order. Grey is the base model's only.
_KNOWN = ["grpo", "dppo", "cps", "guard", "dppo-cps", "dppo-sym", "grpo-noclip", "dppo-sampled-kl"]
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
            "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd", "#e6550d"]
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
