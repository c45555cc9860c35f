"""The one trainer every method shares.

Per epoch:
  1. rollout — P prompts × G samples from seeded initial noise; K sampling steps of
     which a window of W (drawn within the first `window_fraction` of the trajectory)
     is stochastic with the method's sampler and stored; the rest are ODE steps.
     Old log-probabilities and old means are frozen here.
  2. rewards — through `rewards/`, then group-relative advantages
     `A = (r − mean_group) / (std + 1e-4)`, std of the group or of the whole batch,
     clipped to ±`adv_clip`.
  3. update — I inner loops over the batch in mini-batches; per mini-batch, each trained
     step's loss from `method.step_loss` plus β·KL_ref (exact KL to the pretrained
     policy: the adapter disabled), averaged over steps, one AdamW step with gradient
     clipping.
The data of epoch e (`draws`) depend only on (seed, e): two methods with one seed see the
same. Under `torchrun` each process rolls out whole groups and trains on an equal share of
every mini-batch (`dist.py`). Beside the loop: advantages.py (§4), diagnostics.py (§8, and
the reward against the pretrained model's), optim.py (lr schedule, EMA), memory.py.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor

from flowarena.methods import diagnostics as diagnose
from flowarena.methods import dist, forward
from flowarena.methods.advantages import group_advantages, multi_reward_advantages
from flowarena.methods.base import Method, StepTensors
from flowarena.methods.compute import ComputeMeter
from flowarena.methods.config import TrainConfig, TrainConfigError  # noqa: F401 - re-exported
from flowarena.methods.memory import MemoryMeter
from flowarena.methods.optim import EMA, lr_at
from flowarena.methods.rollout import Rollout, generator
from flowarena.methods.sde import SAMPLERS, gaussian_kl
from flowarena.models.base import FlowModel, PromptEmbeds
from flowarena.models.schedule import ODE_SOLVERS
from flowarena.rewards.base import Reward


class TrainingFault(RuntimeError):
    """Too many updates in a row with a non-finite loss or gradient: the run stops."""


def place_text_encoders(model: FlowModel, cfg: TrainConfig) -> None:
    """The text encoders off the device when the config says so (training and evaluation alike)."""
    if cfg.offload_text_encoders and model.prompt_cache is None:
        model.offload_text_encoders(int(cfg.prompt_cache_gb * 2**30))


class Trainer:
    """Trains one method on one model with one reward; the harness drives the epochs."""

    _weights_before_update: dict[str, Tensor] | None = None
    max_skips_in_row = 8
    """Updates in a row whose loss or gradient is not finite before the run stops (each one
    is skipped, so the weights stay as the last finite update left them)."""
    skips_in_row = 0

    def __init__(self, model: FlowModel, method: Method, reward: Reward, prompts: list[dict],
                 cfg: TrainConfig, seed: int = 0, epochs: int | None = None):
        """`epochs`: the run's length, which sets where the cosine schedule ends."""
        cfg.validate()
        self.memory = MemoryMeter()  # a cell's rows report its own memory peaks
        self.compute = ComputeMeter(cfg.gradient_checkpointing)
        self.model, self.method, self.reward, self.prompts, self.cfg, self.seed = (
            model, method, reward, prompts, cfg, seed)
        if cfg.prompts_per_epoch > len(prompts):
            raise TrainConfigError(f"{cfg.prompts_per_epoch} prompts per epoch, but the prompt set "
                                   f"has only {len(prompts)}")
        n = dist.world()
        B = cfg.prompts_per_epoch * cfg.group_size
        if n > 1 and (cfg.prompts_per_epoch % n or cfg.minibatch_size % n or B % cfg.minibatch_size):
            raise TrainConfigError(f"on {n} processes the prompts per epoch ({cfg.prompts_per_epoch}) and "
                                   f"the mini-batch ({cfg.minibatch_size}) must divide by {n}, and the "
                                   f"mini-batch must divide the batch ({B}): every rank takes whole "
                                   "groups and an equal share of every mini-batch")
        self.steps_per_epoch = cfg.steps_per_epoch
        self.total_steps = cfg.check_schedule(epochs)
        if cfg.trained_precision == "fp32" and model.weights_dtype != torch.float32:
            raise TrainConfigError(f"fp32 trained steps need the denoiser's weights in fp32 (this model "
                                   f"holds {model.weights_dtype}); bench run loads them so")
        torch.manual_seed(seed)  # peft draws the LoRA initialisation from the global RNG
        self.params = model.setup_training(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        place_text_encoders(model, cfg)
        self.ddp = dist.wrap(model, model.device)  # None in one process
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.adam_betas,
                                           weight_decay=cfg.weight_decay)
        self.ema = None if cfg.ema_decay is None else EMA(self.params, cfg.ema_decay)
        method.check_train(cfg)
        sampler, self._eta = method.kl_sampler  # a forward method rolls out no SDE step
        self._step_fn = SAMPLERS[sampler]
        self._surrogate = getattr(method.config, "log_prob", "exact") == "cps-surrogate"
        # the seam: what an update trains on, the SDE steps or the forward process
        self._term_loss, self._prepare = ((Trainer._step_loss, None) if method.trains_on == "sde" else
                                          (forward.term_loss, forward.prepare))

    def precision(self, trained: bool = True):
        """The precision of a step: fp32 for the trained steps, bf16 for the rollout's ODE
        steps, where the config says so; else the model's."""
        if trained and self.cfg.trained_precision == "fp32":
            return self.model.precision(torch.float32)
        if not trained:
            return self.model.precision_of(self.cfg.ode_precision)
        return nullcontext()

    # --- one stochastic step, shared by rollout and update --------------------------------
    def _step(self, x: Tensor, v: Tensor, k: int, sigmas: Tensor, **kw):
        return self._step_fn(x, v, float(sigmas[k]), float(sigmas[k + 1]), eta=self._eta, **kw)

    def log_prob(self, r) -> Tensor:
        return r.surrogate_log_prob if self._surrogate else r.log_prob

    def velocity(self, x: Tensor, k: int, sigmas: Tensor, embeds: PromptEmbeds) -> Tensor:
        return self.velocity_at(x, torch.full((x.shape[0],), float(sigmas[k]), device=x.device), embeds)

    def velocity_at(self, x: Tensor, s: Tensor, embeds: PromptEmbeds, train: bool = False) -> Tensor:
        """The velocity at noise levels `s` [B]; `train`: the one whose gradient trains the
        policy (through DDP when distributed)."""
        self.compute.add(len(x) * (2 if embeds.uncond is not None and self.cfg.guidance != 1 else 1))
        if train and self.ddp is not None:
            return self.ddp(x, s, embeds, self.cfg.guidance)
        return self.model.velocity(x, s, embeds, self.cfg.guidance)

    def draws(self, epoch: int) -> dict:
        """Everything random in epoch `epoch`'s rollout, a function of (seed, epoch) alone: the
        prompts picked, the SDE window, the initial noise and the SDE steps' noise (drawn for the
        whole batch; `own` are this process's rows, whole groups)."""
        cfg, G = self.cfg, self.cfg.group_size
        rng = np.random.default_rng([self.seed, epoch, 0])
        picks = rng.choice(len(self.prompts), cfg.prompts_per_epoch, replace=False)
        window = self.method.window(rng, cfg.steps, cfg.sde_window, cfg.window_fraction, epoch)
        gen = generator(self.seed, epoch, 1)
        if cfg.group_noise == "shared":
            x_init = self.model.initial_noise(cfg.prompts_per_epoch, gen).repeat_interleave(G, 0)
        else:
            x_init = self.model.initial_noise(cfg.prompts_per_epoch * G, gen)
        B, n, rank = len(x_init), dist.world(), dist.rank()
        own = torch.arange(rank * B // n, (rank + 1) * B // n)
        noises = [torch.randn(x_init.shape, generator=gen)[own] for _ in window]
        return {"picks": picks, "window": window, "x_init": x_init, "own": own, "noises": noises,
                "records": [self.prompts[i] for i in picks for _ in range(G)]}

    @torch.no_grad()
    def rollout(self, epoch: int) -> Rollout:
        cfg, G = self.cfg, self.cfg.group_size
        d = self.draws(epoch)
        window, x_init, own, noises, records = d["window"], d["x_init"], d["own"], d["noises"], d["records"]
        prompts = [r["prompt"] for r in records]
        picked = [self.prompts[i]["prompt"] for i in d["picks"]]
        embeds = self.model.embed(picked, cfg.guidance)  # one row a prompt, not G copies (FLUX.2: 12 GB)
        sig = self.method.rollout_sigmas(self.model.sigmas(cfg.steps), window, self.model.shift)
        with self.memory.phase("rollout"):
            chunks = [self.trajectories(x_init[part], embeds.select(part // G),
                                         [z[part - own[0]] for z in noises], window, sig,
                                         part // G if cfg.group_noise == "shared" else None)
                      for part in own.split(cfg.rollout_batch or len(own))]
        # per window step, the batches joined: the Rollout's x, x_next, old_mean, std, old_log_prob
        steps = {name: [torch.cat(ts) for ts in zip(*(c[0][name] for c in chunks))] for name in chunks[0][0]}
        x0, images = torch.cat([c[1] for c in chunks]), torch.cat([c[2] for c in chunks])
        del chunks  # the batches' own copies: the reward phase would hold them beside the concatenation
        with self.memory.phase("reward"):
            out = self.reward(images, [prompts[i] for i in own], [records[i] for i in own])
        # complete groups everywhere: the rewards and trajectories of every rank
        scores = dist.gather(out.scores.float())
        components = {name: dist.gather(c.float()) for name, c in out.details.get("components", {}).items()}
        if components and cfg.reward_aggregation == "normalised":
            adv, flat = multi_reward_advantages(components, self.reward.weights, G, std=cfg.adv_std,
                                                clip=cfg.adv_clip)
        else:
            adv, flat = group_advantages(scores, G, std=cfg.adv_std, clip=cfg.adv_clip)
        details = {**out.details, "zero_spread_groups": int(flat.sum())}
        if components:
            details["components"] = components
        steps = {name: [dist.gather(t) for t in ts] for name, ts in steps.items()}
        ro = Rollout(prompts=prompts, records=records, embeds=embeds, window=window, sigmas=sig, **steps,
                     noise=x_init, x0=dist.gather(x0), images=images, rewards=scores,
                     advantages=adv.to(self.model.device), reward_details=details,
                     group_size=G if cfg.group_noise == "shared" else None)
        if self._prepare is not None:  # with the weights that rolled out: the old policy
            with self.memory.phase("rollout"):
                ro.forward = self._prepare(self, ro, epoch)
        return ro

    def trajectories(self, x: Tensor, embeds: PromptEmbeds, noises: list[Tensor], window: list[int],
                     sig: Tensor, groups: Tensor | None = None) -> tuple[dict, Tensor, Tensor]:
        """One rollout batch from its initial noise: ODE steps outside the window, the method's
        SDE step (with the given noise) inside; per window step x_k, x_{k+1}, mean, std and
        log-prob (under the Rollout's names), the final latents and the decoded images.
        `groups`: each row's group when a group shares its initial noise; until the first SDE
        step its rows are one computation."""
        x = x.to(self.model.device)
        steps: dict[str, list[Tensor]] = {name: [] for name in ("x", "x_next", "old_mean", "std",
                                                                 "old_log_prob")}
        solver = ODE_SOLVERS[self.cfg.solver]()
        for k in range(len(sig) - 1):
            with self.precision(k in window):
                if groups is not None and window and k <= window[0]:
                    v = self._shared_velocity(x, k, sig, embeds, groups, self.velocity)
                else:
                    v = self.velocity(x, k, sig, embeds)
            if k in window:
                r = self._step(x, v, k, sig, noise=noises[window.index(k)].to(x.device))
                for name, t in zip(steps, (x, r.next_sample, r.mean, r.std, self.log_prob(r))):
                    steps[name].append(t)
                solver.seen(x, v, float(sig[k]))
                x = r.next_sample
            else:
                x = solver.step(x, v, float(sig[k]), float(sig[k + 1]))
        with self.memory.phase("decode"):
            return steps, x, self.model.decode(x).float().cpu()

    def update(self, ro: Rollout, epoch: int) -> tuple[dict, dict[str, Tensor]]:
        """I inner loops of mini-batch steps; returns (metrics, per-step samples)."""
        cfg, B = self.cfg, len(ro.prompts)
        gen = generator(self.seed, epoch, 2)
        diag = diagnose.EpochDiagnostics(self.method.trust_threshold)
        losses, grad_norms, skipped, rounding = [], [], 0, {}
        n, rank = dist.world(), dist.rank()
        before = self._weights_before_update
        # the run's optimizer step, a function of the epoch: a resumed run continues the schedule
        step = epoch * self.steps_per_epoch - 1
        for inner in range(cfg.inner_loops):
            order = torch.randperm(B, generator=gen)
            for batch in order.split(cfg.minibatch_size):
                step += 1
                mb = batch[rank::n]  # this process's equal share of the global mini-batch
                if before is not None and losses:  # the first off-policy mini-batch
                    with self.compute.aside():
                        rounding, before = diagnose.rounding_in_a_change(self, ro, mb, before), None
                self.optimizer.zero_grad(set_to_none=True)
                parts = mb.split(cfg.micro_batch or len(mb))  # gradients accumulate over them
                total = 0.0
                for j, k in enumerate(ro.terms):
                    values = []  # per micro-batch: what the diagnostics summarise
                    for i, part in enumerate(parts):
                        # DDP averages the gradients once, at the last backward of the mini-batch
                        last = j == len(ro.terms) - 1 and i == len(parts) - 1
                        with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext(), \
                                self.precision():
                            loss, part_values = self._term_loss(self, ro, j, k, part)
                            # the part's share of the mini-batch mean (a factor of exactly 1 when whole)
                            loss = loss.mean() * (len(part) / len(mb)) / len(ro.terms)
                            loss.backward()
                        total += loss.item()
                        values.append(part_values)
                    diag.record(values, k, inner)
                total = dist.mean(total)
                norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                if dist.any_true(not (math.isfinite(total) and torch.isfinite(norm))):
                    # a non-finite loss, ratio, reward or gradient never reaches the weights
                    skipped += 1
                    self.skips_in_row += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.skips_in_row >= self.max_skips_in_row:
                        raise TrainingFault(f"{self.skips_in_row} updates in a row had a non-finite "
                                            f"loss or gradient (epoch {epoch}); check the reward, or "
                                            "lower the learning rate")
                    continue
                self.skips_in_row = 0
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_at(step)
                self.optimizer.step()
                # finite gradients can still step to non-finite weights (an lr of inf, an
                # overflowing bf16 weight): unlike a skipped update this cannot be undone, as the
                # weights and the optimizer's moments are already changed, so the run stops here,
                # before the EMA or a checkpoint takes them in
                if dist.any_true(not self._weights_finite()):
                    # epochs counted from 1 here, as the checkpoint the message continues with
                    raise TrainingFault(f"the weights became non-finite in an update of epoch {epoch + 1} "
                                        f"(learning rate {self.lr_at(step):g}); lower the learning rate")
                if self.ema is not None and (step + 1) % cfg.ema_every == 0:
                    self.ema.update(step + 1)
                losses.append(total)
                grad_norms.append(norm.item())
        self._weights_before_update = None
        metrics = {"loss": float(np.mean(losses)) if losses else float("nan"),
                   "grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
                   "skipped_updates": skipped, **rounding}
        if cfg.lr_schedule != "constant" or cfg.warmup_steps:
            metrics["lr"] = self.lr_at(step)  # the epoch's last step's
        metrics.update(diag.metrics())
        return metrics, diag.samples()

    @torch.no_grad()
    def _weights_finite(self) -> bool:
        """Whether every trained weight is finite: the trainable ones only (a LoRA's are a small
        share of the model), one device sync for all."""
        return bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all())

    def lr_at(self, step: int) -> float:
        """The learning rate of the run's optimizer step `step` (from 0): `optim.lr_at`."""
        cfg = self.cfg
        return lr_at(cfg.lr, step, schedule=cfg.lr_schedule, warmup_steps=cfg.warmup_steps,
                     min_lr_ratio=cfg.min_lr_ratio, total_steps=self.total_steps)

    def ema_weights(self):
        """Inside, the model holds the EMA weights (where the config keeps an EMA): what is
        evaluated and exported. The raw weights come back bit for bit and training goes on."""
        return nullcontext() if self.ema is None else self.ema.weights()

    def ema_state_dict(self) -> dict[str, Tensor] | None:
        return None if self.ema is None else self.ema.state_dict(self.model)

    def load_ema_state_dict(self, state: dict[str, Tensor]) -> None:
        self.ema.load_state_dict(self.model, state)

    def _step_loss(self, ro: Rollout, j: int, k: int, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The per-sample loss of window step j (timestep k) for the trajectories `idx`, with
        gradient, and the per-sample values the diagnostics summarise."""
        cfg = self.cfg
        x, std, old_mean, x_next = ro.x[j][idx], ro.std[j][idx], ro.old_mean[j][idx], ro.x_next[j][idx]
        r, kl = self.recompute(ro, j, k, idx, self._train_velocity)
        st = StepTensors(self.log_prob(r), ro.old_log_prob[j][idx], kl, ro.advantages[idx], r.mean,
                         old_mean, std, float(ro.sigmas[k + 1] - ro.sigmas[k]),
                         (x_next - old_mean) / std.clamp(min=1e-12), k)
        out = self.method.step_loss(st)
        loss, kl_ref = out.loss, None
        if cfg.beta > 0:
            with torch.no_grad(), self.model.reference():
                ref_mean = self._step(x, self.velocity(x, k, ro.sigmas, ro.prompt_embeds(idx)), k,
                                      ro.sigmas, next_sample=x_next).mean
            kl_ref = gaussian_kl(r.mean, ref_mean, std)
            loss = loss + cfg.beta * kl_ref
        return loss, diagnose.per_sample(st, out, kl_ref)

    def recompute(self, ro: Rollout, j: int, k: int, idx: Tensor, velocity):
        """Window step j (timestep k) of the trajectories `idx` under the current weights: the
        step's distribution at the stored x_k (evaluated at the stored x_{k+1}) and KL(old ‖ new)."""
        x, embeds = ro.x[j][idx], ro.prompt_embeds(idx)
        if j == 0 and ro.group_size:  # x_k is the group's until its first SDE step
            v = self._shared_velocity(x, k, ro.sigmas, embeds, idx // ro.group_size, velocity)
        else:
            v = velocity(x, k, ro.sigmas, embeds)
        r = self._step(x, v, k, ro.sigmas, next_sample=ro.x_next[j][idx])
        return r, gaussian_kl(ro.old_mean[j][idx], r.mean, ro.std[j][idx])

    @staticmethod
    def _shared_velocity(x: Tensor, k: int, sigmas: Tensor, embeds: PromptEmbeds, groups: Tensor,
                         velocity) -> Tensor:
        """The velocity of rows whose group shares x_k and the prompt: computed on one row per
        group and handed to the others (autograd sums their gradients into it)."""
        unique, inverse = torch.unique(groups, return_inverse=True)
        rows = torch.arange(len(groups))
        first = torch.full((len(unique),), len(groups)).scatter_reduce(0, inverse, rows, "amin")
        return velocity(x[first], k, sigmas, embeds.select(first))[inverse.to(x.device)]

    def _train_velocity(self, x: Tensor, k: int, sigmas: Tensor, embeds: PromptEmbeds) -> Tensor:
        """The velocity whose gradient trains the policy: through DDP when distributed."""
        return self.velocity_at(x, torch.full((x.shape[0],), float(sigmas[k]), device=x.device), embeds,
                                train=True)

    def train_epoch(self, epoch: int) -> tuple[dict, dict[str, Tensor]]:
        t0 = time.perf_counter()
        ro = self.rollout(epoch)
        with self.compute.aside():  # measurement, not training; once per cell, before the first update
            floor = diagnose.noise_floor(self, ro) if epoch == 0 else {}
        t_base = time.perf_counter()
        if self.cfg.baseline_groups:  # the curve's baseline: these rollouts, the pretrained model
            with self.memory.phase("rollout"), self.compute.aside():
                floor.update(diagnose.reward_vs_base(self, ro, epoch))
            floor["baseline_s"] = round(time.perf_counter() - t_base, 2)
        off_policy = self.cfg.inner_loops > 1 or self.cfg.minibatch_size < len(ro.prompts)
        if epoch == 0 and off_policy:  # kept for the rounding in a change, measured once per cell
            self._weights_before_update = self.model.trainable_state_dict()
        t1 = time.perf_counter()
        with self.memory.phase("update"):
            metrics, samples = self.update(ro, epoch)
        r = ro.rewards
        metrics.update({
            "epoch": epoch, "reward_mean": r.mean().item(), "reward_std": r.std().item(),
            "zero_spread_groups": ro.reward_details["zero_spread_groups"] / self.cfg.prompts_per_epoch,
            "adv_abs_mean": ro.advantages.abs().mean().item(), "window": ro.window,
            "rollout_s": round(t1 - t0, 2), "update_s": round(time.perf_counter() - t1, 2),
        })
        for name, scores in ro.reward_details.get("components", {}).items():
            metrics[f"reward/{name}"] = scores.mean().item()
        metrics.update(floor)
        metrics.update(self.compute.epoch_metrics())
        metrics.update(self.memory.metrics())
        return metrics, samples
