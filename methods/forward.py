"""The trainer's second seam: a method that trains on the forward process of the rollout's
clean samples (`ForwardMethod`: DiffusionNFT, AWM, DGPO) instead of its SDE steps.

After a pure ODE rollout, `prepare` draws the epoch's training times (the method's rule) and
noise, and computes the old policy's velocity at every `x_t = (1 − t)·x0 + t·ε` with the weights
that rolled out, before any update, and the method's `batch_context` over whole groups (DGPO's
group weights, from the pretrained model's velocities where it asks). `term_loss` is the
update's loss of one training time for a micro-batch: the method's `forward_loss` plus
β·KL_ref, where the KL to the pretrained model is the velocity-space one, mean((v_θ − v_ref)²)
(DiffusionNFT's, AWM's and DGPO's regulariser). Everything else (mini-batches, micro-batches,
precision, DDP, the optimizer) is the SDE seam's.
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
    """The epoch's training times, noise and old velocities (and the method's batch context),
    a function of (seed, epoch) and the rollout: two methods with one seed see the same noise."""
    method, B, G = trainer.method, len(ro.x0), trainer.cfg.group_size
    gen = generator(trainer.seed, epoch, 3)
    t = method.train_times(gen, ro.sigmas, B).float()  # [T, B]
    if method.shared_noise:  # one ε per group and time
        noise = torch.randn((len(t), B // G, *ro.x0.shape[1:]), generator=gen).repeat_interleave(G, 1)
    else:
        noise = torch.randn((len(t), *ro.x0.shape), generator=gen)
    old = torch.empty(noise.shape, dtype=ro.x0.dtype)
    context = None
    rows = torch.arange(B)
    for j in range(len(t)):
        refs = []
        for idx in rows.split(trainer.cfg.rollout_batch or B):
            x_t, embeds = noised(ro.x0[idx], t[j][idx], noise[j][idx]), ro.prompt_embeds(idx)
            s = t[j][idx].to(x_t.device)
            with trainer.precision():  # as the update computes v_θ: equal before the first step
                old[j][idx] = trainer.velocity_at(x_t, s, embeds).to(old.dtype).cpu()
                if method.needs_reference:
                    with trainer.model.reference():
                        refs.append(trainer.velocity_at(x_t, s, embeds).cpu())
        whole = _tensors(ro, rows, t[j], noise[j], old[j], torch.cat(refs) if refs else None, G)
        c = method.batch_context(whole)
        if c is not None:
            context = torch.zeros(t.shape) if context is None else context
            context[j] = c.detach().float().cpu()
    return ForwardData(t=t, noise=noise, old_velocity=old, context=context)


def _tensors(ro: Rollout, idx: Tensor, t: Tensor, noise: Tensor, old: Tensor, ref: Tensor | None, G: int,
             velocity: Tensor | None = None, context: Tensor | None = None) -> ForwardTensors:
    """The method's view of samples `idx` at one training time (their rows of t, ε, v_old), in
    fp32 whatever the network computes in: the losses subtract nearby velocities."""
    device = ro.x0.device

    def rows(x: Tensor) -> Tensor:
        return x[idx].to(device, torch.float32)

    old = rows(old)
    return ForwardTensors(velocity=old if velocity is None else velocity.float(), old_velocity=old,
                          x0=rows(ro.x0), noise=rows(noise), t=rows(t), advantages=ro.advantages[idx],
                          rewards=ro.rewards[idx].to(device), groups=(idx // G).to(device),
                          ref_velocity=None if ref is None else rows(ref),
                          context=None if context is None else rows(context))


def noised(x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """x_t = (1 − t)·x0 + t·ε, per sample."""
    t = t.to(x0.device, x0.dtype).view(-1, *[1] * (x0.dim() - 1))
    return (1 - t) * x0 + t * noise.to(x0.device, x0.dtype)


def term_loss(trainer, ro: Rollout, j: int, k: int, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The per-sample loss of training time j for the samples `idx`, with gradient, and the
    per-sample values the diagnostics summarise."""
    cfg, method, f = trainer.cfg, trainer.method, ro.forward
    x_t = noised(ro.x0[idx], f.t[j][idx], f.noise[j][idx])
    s, embeds = f.t[j][idx].to(x_t.device), ro.prompt_embeds(idx)
    v = trainer.velocity_at(x_t, s, embeds, train=True)
    ft = _tensors(ro, idx, f.t[j], f.noise[j], f.old_velocity[j], None, cfg.group_size, v,
                  None if f.context is None else f.context[j])
    out = method.forward_loss(ft)
    loss, values = out.loss, {"adv": ft.advantages.float(), "trust": out.trust.float(),
                              "v_change": mean_sq(v.detach(), ft.old_velocity)}
    if cfg.beta > 0:
        with torch.no_grad(), trainer.model.reference():
            ref = trainer.velocity_at(x_t, s, embeds)
        kl_ref = mean_sq(v, ref)
        loss = loss + cfg.beta * kl_ref
        values["kl_ref"] = kl_ref.detach()
    if out.ratio is not None:
        values["ratio"] = out.ratio.detach().double()
    return loss, values
