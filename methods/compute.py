"""What a cell spends training, counted the same for every method: the denoiser's
evaluations, in forward-equivalents of one image at the model's resolution.

Every velocity the trainer asks for goes through `Trainer.velocity_at`, which adds its rows
here (two per image under classifier-free guidance, one per group where a group shares its
rows). A row evaluated with gradient is also back-propagated once, counted as two forwards
(three with gradient checkpointing, which recomputes the forward). The diagnostics' own
evaluations (the noise floor, the rounding in a change, the reward against the pretrained
model) are measurement, not training, and are left out (`aside`); so are evaluations, the
VAE and the rewards. So a rollout of K ODE steps costs K per image for every method, an
SDE method's update 3 per trained step and image, a forward-process method's 1 (its old
velocity) + 3 per training time and image.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from flowarena.methods import dist


class ComputeMeter:
    def __init__(self, checkpointing: bool = False):
        self.backward_cost = 2 + int(checkpointing)  # in forwards
        self.forward = self.forward_grad = 0
        self._paused = False

    def add(self, rows: int) -> None:
        if self._paused:
            return
        if torch.is_grad_enabled():
            self.forward_grad += rows
        else:
            self.forward += rows

    @contextmanager
    def aside(self):
        """Evaluations that are measurement, not training: not counted."""
        paused, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = paused

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's counts over every process (then reset): `nfe_forward` (rows without
        gradient), `nfe_grad` (with), and `compute_fe`, their cost in forward-equivalents."""
        n = dist.world()
        fwd, grad = dist.mean(self.forward) * n, dist.mean(self.forward_grad) * n
        self.forward = self.forward_grad = 0
        return {"nfe_forward": fwd, "nfe_grad": grad, "compute_fe": fwd + grad * (1 + self.backward_cost)}
