"""Group-relative advantages (docs/methods.md §4): each sample's reward against its group's,
computed on the gathered rewards, so that every process holds those of one process."""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group_size: int, *, std: str = "global",
                     clip: float = 5.0) -> tuple[Tensor, Tensor]:
    """(r − mean_group) / (std + 1e-4), clipped; groups with no reward spread get 0.
    Returns the advantages and the mask of zero-spread groups (per group)."""
    r = rewards.view(-1, group_size).double()
    centred = r - r.mean(1, keepdim=True)
    scale = r.std(1, keepdim=True) if std == "group" else r.std().expand_as(r[:, :1])
    adv = (centred / (scale + 1e-4)).clamp(-clip, clip)
    flat = r.std(1) < 1e-8
    adv[flat] = 0.0
    return adv.flatten().float(), flat


def multi_reward_advantages(components: dict[str, Tensor], weights: dict[str, float],
                            group_size: int, *, std: str = "global",
                            clip: float = 5.0) -> tuple[Tensor, Tensor]:
    """Σ_j w_j·A_j with each reward normalised within its group, then clipped; a group is
    flat when every reward is."""
    advs, flats = zip(*(group_advantages(r, group_size, std=std, clip=float("inf"))
                        for r in components.values()))
    adv = sum(weights[n] * a for n, a in zip(components, advs))
    return adv.clamp(-clip, clip), torch.stack(flats).all(0)
