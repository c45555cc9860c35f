"""The optimizer's schedule and the EMA of the trained weights, beside the trainer's AdamW."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import Tensor

from flowarena.models.base import FlowModel


def lr_at(lr: float, step: int, *, schedule: str, warmup_steps: int, min_lr_ratio: float,
          total_steps: int | None) -> float:
    """The learning rate of the run's optimizer step `step` (from 0): a linear warm-up over
    `warmup_steps`, then lr, or a cosine from lr to `min_lr_ratio` × lr at the run's end
    (transformers' get_cosine_schedule_with_warmup; the warm-up's first step is not at 0)."""
    w = warmup_steps
    if step < w:
        return lr * (step + 1) / w
    if schedule == "constant":
        return lr
    progress = min(1.0, (step - w) / max(1, total_steps - w))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """flow_grpo's exponential moving average of the trained weights, kept in fp32 whatever the
    weights' precision (a 0.9 average of bf16 weights rounds away)."""

    def __init__(self, params: list[Tensor], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self, n: int) -> None:
        """The step after the run's n-th optimizer step, its decay warmed up as
        min(decay, (1 + n) / (10 + n)) so that the first averages do not cling to the base model."""
        d = min(self.decay, (1 + n) / (10 + n))
        for e, p in zip(self.shadow, self.params):
            e.mul_(d).add_(p.detach().float(), alpha=1 - d)

    @contextmanager
    def weights(self):
        """Inside, the model holds the EMA weights; the raw weights come back bit for bit."""
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.shadow):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)

    def state_dict(self, model: FlowModel) -> dict[str, Tensor]:
        """Under the names of `model.trainable_state_dict()`, so that a checkpoint's EMA file loads
        like its weights (exact where the weights are fp32, as LoRA's are)."""
        with self.weights():
            return model.trainable_state_dict()

    def load_state_dict(self, model: FlowModel, state: dict[str, Tensor]) -> None:
        with self.weights():  # the raw weights come back afterwards
            model.load_trainable_state_dict(state)
            self.shadow = [p.detach().float().clone() for p in self.params]
