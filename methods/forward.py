"""The trainer's second seam: a method that trains on the forward process of the rollout's
clean samples (`ForwardMethod`: DiffusionNFT, AWM) instead of its SDE steps.

After a pure ODE rollout, `prepare` draws the epoch's training times (the method's rule) and
noise, and computes the old policy's velocity at every `x_t = (1 − t)·x0 + t·ε` with the weights
that rolled out, before any update. `term_loss` is the update's loss of one training time for a
micro-batch: the method's `forward_loss` plus β·KL_ref, where the KL to the pretrained model is
the velocity-space one, mean((v_θ − v_ref)²) (DiffusionNFT's and AWM's regulariser). Everything
else (mini-batches, micro-batches, precision, DDP, the optimizer) is the SDE seam's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowarena.methods.base import ForwardTensors
from flowarena.methods.rollout import ForwardData, Rollout, generator


def mean_sq(a: Tensor, b: Tensor) -> Tensor:
    """Per sample: the mean over elements of (a − b)², in fp32 or wider."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


@torch.no_grad()
def prepare(trainer, ro: Rollout, epoch: int) -> ForwardData:
    """The epoch's training times, noise and old velocities, a function of (seed, epoch) and the
    rollout: two methods with one seed see the same noise at the same times."""
    gen = generator(trainer.seed, epoch, 3)
    t = trainer.method.train_times(gen, ro.sigmas, len(ro.x0)).float()  # [T, B]
    noise = torch.randn((len(t), *ro.x0.shape), generator=gen)
    old = torch.empty(noise.shape, dtype=ro.x0.dtype)
    rows = torch.arange(len(ro.x0))
    for j in range(len(t)):
        for idx in rows.split(trainer.cfg.rollout_batch or len(rows)):
            x_t = noised(ro.x0[idx], t[j][idx], noise[j][idx])
            with trainer.precision():  # as the update computes v_θ: equal before the first step
                old[j][idx] = trainer.velocity_at(x_t, t[j][idx].to(x_t.device),
                                                  ro.prompt_embeds(idx)).to(old.dtype).cpu()
    return ForwardData(t=t, noise=noise, old_velocity=old)


def noised(x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """x_t = (1 − t)·x0 + t·ε, per sample."""
    t = t.to(x0.device, x0.dtype).view(-1, *[1] * (x0.dim() - 1))
    return (1 - t) * x0 + t * noise.to(x0.device, x0.dtype)


def term_loss(trainer, ro: Rollout, j: int, k: int, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The per-sample loss of training time j for the samples `idx`, with gradient, and the
    per-sample values the diagnostics summarise."""
    cfg, method, f, device = trainer.cfg, trainer.method, ro.forward, ro.x0.device
    x0, t, noise = ro.x0[idx], f.t[j][idx].to(device), f.noise[j][idx].to(device)
    x_t, embeds = noised(x0, t, noise), ro.prompt_embeds(idx)
    v = trainer.velocity_at(x_t, t, embeds, train=True)
    ref = None
    if method.needs_reference or cfg.beta > 0:
        with torch.no_grad(), trainer.model.reference():
            ref = trainer.velocity_at(x_t, t, embeds)
    ft = ForwardTensors(velocity=v, old_velocity=f.old_velocity[j][idx].to(device, v.dtype), x0=x0,
                        noise=noise.to(x0.dtype), t=t, advantages=ro.advantages[idx],
                        rewards=ro.rewards[idx].to(device), ref_velocity=ref)
    out = method.forward_loss(ft)
    loss, values = out.loss, {"adv": ft.advantages.float(), "trust": out.trust.float(),
                              "v_change": mean_sq(v.detach(), ft.old_velocity)}
    if cfg.beta > 0:
        kl_ref = mean_sq(v, ref)
        loss = loss + cfg.beta * kl_ref
        values["kl_ref"] = kl_ref.detach()
    if out.ratio is not None:
        values["ratio"] = out.ratio.detach().double()
    return loss, values
