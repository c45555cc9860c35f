"""The look shared by every figure: one colour per method in every report of every run."""

from __future__ import annotations

from flowarena.methods import METHODS

BASE = "base (pretrained)"
BASE_COLOUR = "#7f7f7f"
# A registered method keeps the colour its file declares (`Method.colour`) in every report of every
# run; other entries (variants such as dppo@delta=3e-6) take the unused colours in name order.
# Grey is the base model's only.
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
            "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd", "#e6550d"]
DPI = 110
REWARD_WINDOW = 4  # epochs in the training reward's running mean


def method_colours(methods: list[str]) -> dict[str, str]:
    """method -> colour, stable across figures and runs for the registered methods."""
    declared = {name: cls.colour for name, cls in METHODS.items() if cls.colour}
    colours = {BASE: BASE_COLOUR, "base": BASE_COLOUR}
    free = [c for c in _PALETTE if c not in declared.values()]
    for m in methods:
        if m in declared:
            colours[m] = declared[m]
    others = sorted(m for m in methods if m not in colours)
    for i, m in enumerate(others):
        colours[m] = free[i % len(free)]
    return colours
