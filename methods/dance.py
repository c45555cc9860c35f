"""DanceGRPO (Xue et al., 2025, arXiv 2505.07818; XueZeyue/DanceGRPO).

Flow-GRPO's clipped ratio on DanceGRPO's own SDE step (`sde.dance_step`: Euler plus a score
correction, std η·sqrt(−dt), η = 0.3), trained on a random `timestep_fraction` (60 %) of the
steps but the last. The reference makes every step stochastic and draws the trained subset
per sample; here the subset is drawn per epoch for the whole batch and the steps outside it
are ODE steps, as for every method on this trainer. Its recipe shares the initial noise
within a group (`group_noise = "shared"`, a training setting).
"""

from __future__ import annotations

from dataclasses import dataclass

from flowarena.core.fields import Fraction
from flowarena.methods.base import Eta, Sampler, register_method
from flowarena.methods.grpo import FlowGRPO, GRPOConfig


@dataclass
class DanceConfig(GRPOConfig):
    sampler: Sampler = "dance"
    eta: Eta = 0.3
    timestep_fraction: Fraction = 0.6
    """Share of the steps (the last left out) trained each epoch, drawn at random."""


@register_method("dance")
class DanceGRPO(FlowGRPO):
    description = "DanceGRPO: Flow-GRPO's clip on DanceGRPO's SDE (η 0.3), a random 60 % of the steps trained"
    colour = "#e377c2"
    paper = "Xue et al., 2025, DanceGRPO: Unleashing GRPO on Visual Generation"
    Config = DanceConfig

    def window(self, rng, steps: int, sde_window: int, window_fraction: float, epoch: int) -> list[int]:
        n = max(1, int((steps - 1) * self.config.timestep_fraction))
        return sorted(int(k) for k in rng.choice(max(1, steps - 1), n, replace=False))
