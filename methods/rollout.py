"""What a rollout hands the update: the trajectories' trained SDE steps, or a forward-process
method's clean samples with its training times, noise and old velocities."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from flowarena.models.base import PromptEmbeds


def generator(*key: int) -> torch.Generator:
    """A torch generator seeded from a key such as (seed, epoch, stream): independent streams."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


@dataclass
class ForwardData:
    """A forward-process method's epoch: T training times per clean sample, the noise drawn
    at each, and the old policy's velocity there (computed before the update)."""
    t: Tensor  # [T, B]
    noise: Tensor  # [T, B, ...]
    old_velocity: Tensor  # [T, B, ...]
    context: Tensor | None = None  # [T, B] the method's `batch_context`, where it has one


@dataclass
class Rollout:
    prompts: list[str]  # B = P·G, grouped
    records: list[dict]
    embeds: PromptEmbeds  # one row per prompt (P), not per trajectory: `prompt_embeds`
    window: list[int]  # trained step indices k
    sigmas: Tensor
    x: list[Tensor]  # per window step: x_k [B, ...]
    x_next: list[Tensor]  # x_{k+1}
    old_mean: list[Tensor]
    std: list[Tensor]
    old_log_prob: list[Tensor]
    noise: Tensor  # the initial noise [B, ...]
    x0: Tensor  # the clean samples (final latents) [B, ...]
    images: Tensor  # decoded images of this process's samples (all of them in one process)
    rewards: Tensor  # [B]
    advantages: Tensor  # [B]
    reward_details: dict = field(default_factory=dict)
    group_size: int | None = None
    """Set when a group shares its initial noise: then its G samples share x_k up to the first
    window step, and their velocity there is computed once per group (same maths, G× fewer rows)."""
    forward: ForwardData | None = None
    """A forward-process method's training times, noise and old velocities (`forward.prepare`)."""

    @property
    def terms(self) -> list[int]:
        """What an update trains on, in turn: the SDE window's steps k, or the forward process's
        training times (by index)."""
        return self.window if self.forward is None else list(range(len(self.forward.t)))

    def prompt_embeds(self, idx: Tensor) -> PromptEmbeds:
        """The prompt embeddings of trajectories `idx` (rows of the grouped batch)."""
        return self.embeds.select(idx // (len(self.prompts) // len(self.embeds)))
