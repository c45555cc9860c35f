"""MixGRPO: Flow-GRPO on a sliding window of SDE steps, ODE elsewhere (Li et al., 2025, arXiv
2507.21802; Tencent-Hunyuan/MixGRPO).

The loss is Flow-GRPO's clipped ratio (`grpo.py`); what changes is which steps are stochastic
and trained. Instead of a random window per epoch, W = `sde_window` consecutive steps start
at position p and slide: p grows by `stride` every `shift_every` epochs, and rolls back to 0
once the window would leave the last steps (the reference's `max_timesteps = steps − 2`; it
rolls back one move later, after a window with no step in it).
Early epochs train the high-noise steps, where the image's layout is decided; the window
then walks towards detail. Every other step is an ODE step, which is where the speed comes
from. MixGRPO-Flash also takes fewer, larger steps after the window (`post_compress`, 0.4 in
its script) with DPM-Solver++ 2M (the trainer's `solver = "dpm++2m"`):
`mixgrpo@post_compress=0.4@solver=dpm++2m`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

from flowarena.core.fields import Count, Range
from flowarena.methods.base import register_method
from flowarena.methods.grpo import FlowGRPO, GRPOConfig
from flowarena.models.schedule import shift_sigmas


@dataclass
class MixGRPOConfig(GRPOConfig):
    shift_every: Count = 25
    """Epochs between two moves of the window (the reference: 25 iterations)."""
    stride: Count = 1
    """Steps the window moves by each time."""
    post_compress: Annotated[float, Range(0, 1, lo_open=True)] = 1.0
    """MixGRPO-Flash: the share of the steps after the window kept (its `dpm_post_compress_ratio`
    0.4), respaced over the same span of the schedule; 1: every step."""


def sliding_window(epoch: int, steps: int, size: int, shift_every: int, stride: int) -> list[int]:
    """The window's steps at `epoch`: from p = (moves · stride), cycling over the starts
    0, stride, … that leave a step before `steps − 2`, cut at `steps − 2`."""
    last = max(1, steps - 2)  # the reference's max_timesteps: the window ends before it
    starts = (last - 1) // stride + 1  # how many starts keep a non-empty window
    p = (epoch // shift_every) % starts * stride
    return list(range(p, min(p + size, last)))


def compressed_tail(sigmas: Tensor, last: int, ratio: float, shift: float) -> Tensor:
    """The schedule with the steps after window step `last` respaced, as MixGRPO-Flash's
    `post_sigma_schedule`: int((K − last)·ratio) points (at least 2: one step) from the time of
    σ_{last+1} down to 0, evenly in unshifted time, then shifted; σ_{last+1} itself is kept."""
    steps = len(sigmas) - 1
    points = max(int((steps - last) * ratio), 2)
    t = torch.linspace(1 - (last + 1) / steps, 0, points, dtype=torch.float64)
    tail = shift_sigmas(t, shift).to(sigmas.dtype)
    tail[0] = sigmas[last + 1]  # the window's last step ends where it did (sigma_min schedules too)
    return torch.cat([sigmas[:last + 1], tail])


@register_method("mixgrpo")
class MixGRPO(FlowGRPO):
    description = "MixGRPO: Flow-GRPO on a sliding SDE window (moving 1 step every 25 epochs), ODE elsewhere"
    colour = "#8c564b"
    paper = "Li et al., 2025, MixGRPO: Unlocking Flow-based GRPO Efficiency with Mixed ODE-SDE"
    Config = MixGRPOConfig

    def window(self, rng, steps: int, sde_window: int, window_fraction: float, epoch: int) -> list[int]:
        c = self.config
        return sliding_window(epoch, steps, sde_window, c.shift_every, c.stride)

    def rollout_sigmas(self, sigmas: Tensor, window: list[int], shift: float) -> Tensor:
        if self.config.post_compress >= 1 or not window:
            return sigmas
        return compressed_tail(sigmas, window[-1], self.config.post_compress, shift)
