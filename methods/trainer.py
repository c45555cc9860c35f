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
The prompts, initial noise, SDE noise, window and mini-batch order of epoch e depend
only on (seed, e): two methods with one seed see exactly the same data. Under `torchrun`
each process rolls out whole groups and trains on an equal share of every mini-batch,
with the same data and advantages as one process (`methods/dist.py`).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import torch
from torch import Tensor

from flowarena.core.errors import FlowArenaError
from flowarena.core.fields import (
    Count,
    Decay,
    Fraction,
    NonNegative,
    Positive,
    Range,
    Steps,
    Whole,
    check_fields,
)
from flowarena.core.results import diag_key
from flowarena.methods import dist
from flowarena.methods.base import Method, StepTensors
from flowarena.methods.memory import memory_phase, peak_metrics, reset_peaks
from flowarena.methods.sde import cps_step, flow_sde_step, gaussian_kl, ode_step
from flowarena.models.base import FlowModel, Precision, PromptEmbeds
from flowarena.rewards.base import Reward


class TrainConfigError(FlowArenaError, ValueError):
    """Impossible training settings."""


class TrainingFault(RuntimeError):
    """Too many updates in a row with a non-finite loss or gradient: the run stops."""


def place_text_encoders(model: FlowModel, cfg: TrainConfig) -> None:
    """The text encoders off the device when the config says so (training and evaluation alike)."""
    if cfg.offload_text_encoders and model.prompt_cache is None:
        model.offload_text_encoders(int(cfg.prompt_cache_gb * 2**30))


@dataclass
class TrainConfig:
    prompts_per_epoch: Count = 8
    """P: prompt groups per epoch."""
    group_size: Annotated[int, Range(2)] = 8
    """G: samples per prompt (the group of the group-relative advantage)."""
    steps: Steps = 10
    """K: sampling steps of a rollout."""
    sde_window: Count = 3
    """W: stochastic, trained steps per trajectory (the rest are ODE steps)."""
    window_fraction: Annotated[float, Range(0, 1, lo_open=True)] = 0.5
    """The W steps are drawn within the first fraction of the trajectory."""
    guidance: NonNegative = 1.0
    """CFG scale during rollouts and training (1.0: the no-CFG recipe)."""
    inner_loops: Count = 1
    """I: passes over each batch (later passes are off-policy: the trust region acts there)."""
    minibatch_size: Count = 32
    """Trajectories per optimizer step."""
    micro_batch: Count | None = None
    """Trajectories per forward / backward pass of the update (None: the whole mini-batch);
    gradients accumulate over a mini-batch's micro-batches, so the update is the same."""
    rollout_batch: Count | None = None
    """Trajectories sampled and decoded together in a rollout (None: all of the process's)."""
    gradient_checkpointing: bool = False
    """Recompute the denoiser's activations in the backward pass instead of keeping them:
    less memory for the update, about one more forward pass of time; the same gradients."""
    offload_text_encoders: bool = False
    """Keep the text encoders in host memory and the prompts' embeddings in a cache there; the
    encoders visit the device only to encode prompts the cache lacks (SD3.5: ≈ 9.5 GB freed)."""
    trained_precision: Literal["auto", "fp32"] = "auto"
    """"auto": the model's precision everywhere (bf16 on a GPU, fp32 on the CPU); "fp32": the
    trained steps (the rollout's SDE window and the update) in fp32 with fp32 weights, bf16
    elsewhere, so that ρ and the KL are not set by bf16 rounding (docs/methods.md §8)."""
    ode_precision: Precision = "auto"
    """The rollout's ODE steps (outside the SDE window, never in ρ): "auto" as the model computes,
    "bf16" under bf16 autocast, "bf16-native" bf16 only on hardware with bf16 units (there the
    toy UNet runs ≈ 1.8× faster; elsewhere bf16 is emulated and far slower)."""
    prompt_cache_gb: NonNegative = 8.0
    """Host memory for that cache, least recently used prompts out first (SD3.5 at 256 text
    tokens: ≈ 2.7 MB a prompt, so 8 GB hold ≈ 3,000 prompts; 0: encode every time)."""
    lr: Positive = 3e-4
    """AdamW's learning rate (the peak, with a warm-up or a cosine schedule)."""
    adam_betas: tuple[Decay, Decay] = (0.9, 0.999)
    """AdamW's (β1, β2)."""
    weight_decay: NonNegative = 1e-4
    """AdamW's decoupled weight decay."""
    grad_clip: Annotated[float, Range(0, lo_open=True, finite=False)] = 1.0
    """Largest gradient norm of an optimizer step (inf: no clipping)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """"constant" or "cosine" (after the warm-up, decay to `min_lr_ratio` × lr at the end of the
    run: the Flow-DPPO paper's schedule). Counted in optimizer steps: epochs × inner_loops ×
    ⌈P·G / minibatch_size⌉ in a run; a skipped non-finite update still takes its step's place."""
    warmup_steps: Whole = 0
    """Optimizer steps of linear warm-up to lr (the n-th at n / warmup_steps × lr); 0: none."""
    min_lr_ratio: Fraction = 0.0
    """Where the cosine ends, as a fraction of lr (0: to zero, as transformers' cosine schedule)."""
    ema_decay: Decay | None = None
    """An exponential moving average of the trained weights (None: none). When on, every
    evaluation, the sample grid and `bench export` use the EMA weights while training goes on
    with the raw ones (flow_grpo: 0.9, its decay warmed up as min(decay, (1 + n) / (10 + n)))."""
    ema_every: Count = 8
    """Optimizer steps between EMA updates (flow_grpo: 8)."""
    beta: NonNegative = 0.0
    """β of the β·KL_ref term (exact per-element KL to the pretrained policy)."""
    adv_std: Literal["group", "global"] = "global"
    """"group" or "global" (the whole batch; the FlowDPPO recipe) standard deviation."""
    adv_clip: Annotated[float, Range(0, lo_open=True, finite=False)] = 5.0
    """Advantages are clipped to [-adv_clip, adv_clip] (flow_grpo's 5; inf: no clipping)."""
    reward_aggregation: Literal["sum", "normalised"] = "sum"
    """With several rewards: "sum" normalises their weighted sum (flow_grpo); "normalised"
    normalises each within its group and sums the weighted advantages (GDPO / MixGRPO)."""
    group_noise: Literal["independent", "shared"] = "independent"
    """Initial noise of a group's G samples: "independent" (flow_grpo) or "shared" (DanceGRPO):
    shared noise leaves the SDE steps, the trained actions, as the group's only variation."""
    lora_rank: Whole | None = 16
    """LoRA rank; 0 = full fine-tuning of the denoiser; None = the model adapter's default
    (`bench models`: 32 for sd35, 64 for FLUX)."""
    lora_alpha: Positive | None = 32.0
    """LoRA α (None: 2 × rank, every peer's choice)."""
    lora_targets: tuple[str, ...] | None = None
    """Module names LoRA adapts (default: the model adapter's attention projections)."""

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps an epoch: I passes over ⌈P·G / mini-batch⌉ mini-batches."""
        return self.inner_loops * math.ceil(self.prompts_per_epoch * self.group_size / self.minibatch_size)

    def check_schedule(self, epochs: int | None) -> int | None:
        """The run's optimizer steps (None without its length), checked against the schedule:
        a cosine needs the length, a warm-up must end before the run does. `bench run` asks
        before any work; the trainer again."""
        total = epochs * self.steps_per_epoch if epochs else None
        if self.lr_schedule == "cosine" and total is None:
            raise TrainConfigError("the cosine schedule needs the run's length (Trainer(..., epochs=N))")
        if self.warmup_steps and total is not None and self.warmup_steps >= total:
            raise TrainConfigError(f"the warm-up ({self.warmup_steps} optimizer steps) must be shorter than "
                                   f"the run ({total}: {epochs} epochs x {self.steps_per_epoch})")
        return total

    def validate(self) -> None:
        """Each field as its type and range allow (`flowarena.core.fields`), then what the fields
        must satisfy together."""
        check_fields(self, TrainConfigError, "train.")
        if self.sde_window > self.steps:
            raise TrainConfigError(f"the SDE window ({self.sde_window}) must be at most the steps "
                                   f"({self.steps})")
        if self.sde_window > max(1, int(self.steps * self.window_fraction)):
            raise TrainConfigError(f"the SDE window ({self.sde_window}) does not fit in the first "
                                   f"{self.window_fraction:g} of {self.steps} steps")


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
    noise: Tensor  # the initial noise x_0 [B, ...]
    images: Tensor  # decoded images of this process's samples (all of them in one process)
    rewards: Tensor  # [B]
    advantages: Tensor  # [B]
    reward_details: dict = field(default_factory=dict)
    group_size: int | None = None
    """Set when a group shares its initial noise: then its G samples share x_k up to the first
    window step, and their velocity there is computed once per group (same maths, G× fewer rows)."""

    def prompt_embeds(self, idx: Tensor) -> PromptEmbeds:
        """The prompt embeddings of trajectories `idx` (rows of the grouped batch)."""
        return self.embeds.select(idx // (len(self.prompts) // len(self.embeds)))


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


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def floor_warning(floor: dict, trust_region: dict) -> str | None:
    """One line when a part of the ratio's noise floor reaches 10 % of the method's ε (on
    |log ρ| ≈ |ρ − 1|) or δ (on the KL): the same-weights floor, or the rounding in a change
    (run precision against fp32). The trust region would then act on rounding rather than on
    policy change."""
    parts = [("floor", "with unchanged weights"), ("rounding", "added by rounding to a change")]
    checks = [("ratio_clip", "logratio_abs_mean", "|log ρ|", "ε"),
              ("kl_threshold", "kl_mean", "KL(old ‖ new)", "δ")]
    found = []
    for part, how in parts:
        for region, key, what, sym in checks:
            limit, value = trust_region.get(region), floor.get(f"{part}_{key}")
            if limit and value is not None and value >= 0.1 * limit:
                found.append(f"{what} {value:.2g} {how} is {value / limit:.0%} of {sym} = {limit:g}")
    if not found:
        return None
    return (f"the ratio's noise floor ({'; '.join(found)}): the trust region acts on rounding, not only on "
            "policy change (train.trained_precision = \"fp32\" computes the trained steps in fp32)")


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
        reset_peaks()  # a cell's rows report its own memory peaks
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
        # the EMA in fp32 whatever the weights' precision: a 0.9 average of bf16 weights rounds away
        self.ema = None if cfg.ema_decay is None else [p.detach().float().clone() for p in self.params]
        mc = method.config
        self._step_fn = flow_sde_step if mc.sampler == "sde" else cps_step
        self._eta = mc.eta
        self._surrogate = mc.log_prob == "cps-surrogate"

    def _precision(self, trained: bool = True):
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

    def _log_prob(self, r) -> Tensor:
        return r.surrogate_log_prob if self._surrogate else r.log_prob

    def _velocity(self, x: Tensor, k: int, sigmas: Tensor, embeds: PromptEmbeds) -> Tensor:
        s = torch.full((x.shape[0],), float(sigmas[k]), device=x.device)
        return self.model.velocity(x, s, embeds, self.cfg.guidance)

    @torch.no_grad()
    def rollout(self, epoch: int) -> Rollout:
        cfg, G = self.cfg, self.cfg.group_size
        rng = np.random.default_rng([self.seed, epoch, 0])
        picks = rng.choice(len(self.prompts), cfg.prompts_per_epoch, replace=False)
        window = sorted(int(k) for k in rng.choice(max(1, int(cfg.steps * cfg.window_fraction)),
                                                    cfg.sde_window, replace=False))
        records = [self.prompts[i] for i in picks for _ in range(G)]
        prompts = [r["prompt"] for r in records]
        gen = _generator(self.seed, epoch, 1)
        if cfg.group_noise == "shared":
            x_init = self.model.initial_noise(cfg.prompts_per_epoch, gen).repeat_interleave(G, 0)
        else:
            x_init = self.model.initial_noise(len(prompts), gen)
        picked = [self.prompts[i]["prompt"] for i in picks]
        embeds = self.model.embed(picked, cfg.guidance)  # one row a prompt, not G copies (FLUX.2: 12 GB)
        # this process's whole groups; all noise is drawn for the whole batch, then sliced
        B, n, rank = len(prompts), dist.world(), dist.rank()
        own = torch.arange(rank * B // n, (rank + 1) * B // n)
        sig = self.model.sigmas(cfg.steps)
        noises = [torch.randn(x_init.shape, generator=gen)[own] for _ in window]  # the SDE steps' noise
        with memory_phase("rollout"):
            chunks = [self._trajectories(x_init[part], embeds.select(part // G),
                                         [z[part - own[0]] for z in noises], window, sig,
                                         part // G if cfg.group_noise == "shared" else None)
                      for part in own.split(cfg.rollout_batch or len(own))]
        xs, nxt, means, stds, lps = ([torch.cat(ts) for ts in zip(*(c[i] for c in chunks))] for i in range(5))
        images = torch.cat([c[5] for c in chunks])
        del chunks  # the batches' own copies: the reward phase would hold them beside the concatenation
        with memory_phase("reward"):
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
        xs, nxt, means, stds, lps = ([dist.gather(t) for t in ts] for ts in (xs, nxt, means, stds, lps))
        return Rollout(prompts, records, embeds, window, sig, xs, nxt, means, stds, lps, x_init, images,
                       scores, adv.to(self.model.device), details,
                       G if cfg.group_noise == "shared" else None)

    def _trajectories(self, x: Tensor, embeds: PromptEmbeds, noises: list[Tensor], window: list[int],
                      sig: Tensor, groups: Tensor | None = None) -> tuple[list[Tensor], ...]:
        """One rollout batch from its initial noise: ODE steps outside the window, the method's
        SDE step (with the given noise) inside; per window step x_k, x_{k+1}, mean, std and
        log-prob, and the decoded images. `groups`: each row's group when a group shares its
        initial noise; until the first SDE step its rows are one computation."""
        x = x.to(self.model.device)
        xs, nxt, means, stds, lps = [], [], [], [], []
        for k in range(self.cfg.steps):
            with self._precision(k in window):
                if groups is not None and k <= window[0]:
                    v = self._shared_velocity(x, k, sig, embeds, groups, self._velocity)
                else:
                    v = self._velocity(x, k, sig, embeds)
            if k in window:
                r = self._step(x, v, k, sig, noise=noises[window.index(k)].to(x.device))
                xs.append(x)
                nxt.append(r.next_sample)
                means.append(r.mean)
                stds.append(r.std)
                lps.append(self._log_prob(r))
                x = r.next_sample
            else:
                x = ode_step(x, v, float(sig[k]), float(sig[k + 1]))
        with memory_phase("decode"):
            return xs, nxt, means, stds, lps, self.model.decode(x).float().cpu()

    def update(self, ro: Rollout, epoch: int) -> tuple[dict, dict[str, Tensor]]:
        """I inner loops of mini-batch steps; returns (metrics, per-step samples)."""
        cfg, B = self.cfg, len(ro.prompts)
        gen = _generator(self.seed, epoch, 2)
        diag: dict[str, list] = defaultdict(list)
        samples: dict[str, list[Tensor]] = defaultdict(list)
        losses, grad_norms, skipped, rounding = [], [], 0, {}
        delta = self.method.trust_threshold
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
                    rounding, before = self.rounding_in_a_change(ro, mb, before), None
                self.optimizer.zero_grad(set_to_none=True)
                parts = mb.split(cfg.micro_batch or len(mb))  # gradients accumulate over them
                total = 0.0
                for j, k in enumerate(ro.window):
                    values: dict[str, list[Tensor]] = defaultdict(list)
                    for i, part in enumerate(parts):
                        # DDP averages the gradients once, at the last backward of the mini-batch
                        last = j == len(ro.window) - 1 and i == len(parts) - 1
                        with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext(), \
                                self._precision():
                            loss, part_values = self._step_loss(ro, j, k, part)
                            # the part's share of the mini-batch mean (a factor of exactly 1 when whole)
                            loss = loss.mean() * (len(part) / len(mb)) / len(ro.window)
                            loss.backward()
                        total += loss.item()
                        for name, t in part_values.items():
                            values[name].append(t)
                    gathered = {name: dist.gather(torch.cat(ts)) for name, ts in values.items()}
                    self._record(diag, samples, gathered, k, inner, delta)
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
                    self._update_ema(step + 1)
                losses.append(total)
                grad_norms.append(norm.item())
        self._weights_before_update = None
        metrics = {"loss": float(np.mean(losses)) if losses else float("nan"),
                   "grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
                   "skipped_updates": skipped, **rounding}
        if cfg.lr_schedule != "constant" or cfg.warmup_steps:
            metrics["lr"] = self.lr_at(step)  # the epoch's last step's
        for key, vals in diag.items():
            metrics[key] = float(np.mean(vals))
        return metrics, {k: torch.cat(v) for k, v in samples.items()}

    @torch.no_grad()
    def _weights_finite(self) -> bool:
        """Whether every trained weight is finite: the trainable ones only (a LoRA's are a small
        share of the model), one device sync for all."""
        return bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all())

    def lr_at(self, step: int) -> float:
        """The learning rate of the run's optimizer step `step` (from 0): a linear warm-up over
        `warmup_steps`, then lr, or a cosine from lr to `min_lr_ratio` × lr at the run's end
        (transformers' get_cosine_schedule_with_warmup; the warm-up's first step is not at 0)."""
        cfg, w = self.cfg, self.cfg.warmup_steps
        if step < w:
            return cfg.lr * (step + 1) / w
        if cfg.lr_schedule == "constant":
            return cfg.lr
        progress = min(1.0, (step - w) / max(1, self.total_steps - w))
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    @torch.no_grad()
    def _update_ema(self, n: int) -> None:
        """flow_grpo's EMA step after the run's n-th optimizer step, its decay warmed up as
        min(decay, (1 + n) / (10 + n)) so that the first averages do not cling to the base model."""
        d = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        for e, p in zip(self.ema, self.params):
            e.mul_(d).add_(p.detach().float(), alpha=1 - d)

    @contextmanager
    def ema_weights(self):
        """Inside, the model holds the EMA weights (where the config keeps an EMA): what is
        evaluated and exported. The raw weights come back bit for bit and training goes on."""
        if self.ema is None:
            yield
            return
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.ema):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)

    def ema_state_dict(self) -> dict[str, Tensor] | None:
        """The EMA weights under the names of `model.trainable_state_dict()`, so that a checkpoint's
        EMA file loads like its weights (exact where the weights are fp32, as LoRA's are)."""
        if self.ema is None:
            return None
        with self.ema_weights():
            return self.model.trainable_state_dict()

    def load_ema_state_dict(self, state: dict[str, Tensor]) -> None:
        with self.ema_weights():  # the raw weights come back afterwards
            self.model.load_trainable_state_dict(state)
            self.ema = [p.detach().float().clone() for p in self.params]

    def _step_loss(self, ro: Rollout, j: int, k: int, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The per-sample loss of window step j (timestep k) for the trajectories `idx`, with
        gradient, and the per-sample values the diagnostics summarise."""
        cfg = self.cfg
        x, std, old_mean, x_next = ro.x[j][idx], ro.std[j][idx], ro.old_mean[j][idx], ro.x_next[j][idx]
        r, kl = self._recompute(ro, j, k, idx, self._train_velocity)
        st = StepTensors(self._log_prob(r), ro.old_log_prob[j][idx], kl, ro.advantages[idx], r.mean,
                         old_mean, std, float(ro.sigmas[k + 1] - ro.sigmas[k]),
                         (x_next - old_mean) / std.clamp(min=1e-12), k)
        out = self.method.step_loss(st)
        loss, kl_ref = out.loss, None
        if cfg.beta > 0:
            with torch.no_grad(), self.model.reference():
                ref_mean = self._step(x, self._velocity(x, k, ro.sigmas, ro.prompt_embeds(idx)), k,
                                      ro.sigmas, next_sample=x_next).mean
            kl_ref = gaussian_kl(r.mean, ref_mean, std)
            loss = loss + cfg.beta * kl_ref
        return loss, self._per_sample(st, out, kl_ref)

    def _recompute(self, ro: Rollout, j: int, k: int, idx: Tensor, velocity):
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
        if self.ddp is None:
            return self._velocity(x, k, sigmas, embeds)
        s = torch.full((x.shape[0],), float(sigmas[k]), device=x.device)
        return self.ddp(x, s, embeds, self.cfg.guidance)

    @staticmethod
    @torch.no_grad()
    def _per_sample(st: StepTensors, out, kl_ref) -> dict[str, Tensor]:
        """The per-sample quantities the diagnostics summarise (gathered across processes)."""
        # log ρ = −KL + mean(ε·Δμ/s) per element: deterministic signal plus zero-mean noise
        safe = torch.where(st.std > 0, st.std, torch.ones_like(st.std))
        values = {
            # ρ stays float64 (as the log-probs are): ρ − 1 is often below float32's resolution
            "ratio": out.ratio.detach().double(), "kl": st.kl.detach().float(),
            "adv": st.advantages.float(), "trust": out.trust.float(),
            "noise": (st.noise * (st.mean.detach() - st.old_mean) / safe).flatten(1).mean(1).float()}
        if kl_ref is not None:
            values["kl_ref"] = kl_ref.detach().float()
        return values

    @staticmethod
    @torch.no_grad()
    def _record(diag, samples, v: dict[str, Tensor], k: int, inner: int, delta) -> None:
        """docs/methods.md §8: the same diagnostics for every method, per timestep index k
        (keys `k<k>/...` on the first pass, `k<k>/i<pass>/...` on later ones: results.diag_key)."""
        A, ratio, kl, noise = v["adv"], v["ratio"], v["kl"], v["noise"]
        pos, neg, trust = A > 0, A < 0, v["trust"] > 0.5
        values = {
            "ratio_mean": ratio.mean(), "ratio_std": ratio.std(correction=0),
            "ratio_min": ratio.min(), "ratio_max": ratio.max(),
            "trust_frac": trust.float().mean(),
            "trust_frac_pos_adv": (trust & pos).float().sum() / pos.sum().clamp(min=1),
            "trust_frac_neg_adv": (trust & neg).float().sum() / neg.sum().clamp(min=1),
            "kl_mean": kl.mean(), "kl_max": kl.max(),
            "logratio_signal": -kl.mean(), "logratio_noise_std": noise.std(correction=0),
        }
        if delta is not None:
            values["kl_above_delta"] = (kl >= delta).float().mean()
        if "kl_ref" in v:
            values["kl_ref"] = v["kl_ref"].mean()
        for name, val in values.items():
            diag[diag_key(k, inner, name)].append(val.item())
        for name, val in (("ratio", ratio), ("kl", kl), ("adv", A), ("noise", noise),
                          ("step", torch.full_like(ratio, k)), ("inner", torch.full_like(ratio, inner))):
            samples[name].append(val.cpu())

    @torch.no_grad()
    def noise_floor(self, ro: Rollout) -> dict[str, float]:
        """The ratio's same-weights noise floor (docs/methods.md §8): the log-probabilities and
        mean of the first mini-batch's trained steps recomputed, before any update, with the
        weights that rolled them out, in the update's batch shape. Exactly 0 where the rollout
        and the update compute alike; on GPUs whose kernels depend on the batch shape, the
        |log ρ| and KL(old ‖ new) that a trust region sees from rounding alone."""
        cfg, n, rank = self.cfg, dist.world(), dist.rank()
        first = torch.arange(min(cfg.minibatch_size, len(ro.prompts)))[rank::n]
        log_ratio, kl = [], []
        for j, k in enumerate(ro.window):
            for idx in first.split(cfg.micro_batch or len(first)):
                with self._precision():
                    r, step_kl = self._recompute(ro, j, k, idx, self._velocity)
                log_ratio.append((self._log_prob(r) - ro.old_log_prob[j][idx]).double())
                kl.append(step_kl.double())
        lr, d = dist.gather(torch.cat(log_ratio)).abs(), dist.gather(torch.cat(kl))
        return {"floor_logratio_abs_mean": lr.mean().item(), "floor_logratio_abs_max": lr.max().item(),
                "floor_kl_mean": d.mean().item(), "floor_kl_max": d.max().item()}

    @torch.no_grad()
    def rounding_in_a_change(self, ro: Rollout, mb: Tensor, before: dict[str, Tensor]) -> dict[str, float]:
        """The ratio's rounding in a change (docs/methods.md §8): for an off-policy mini-batch,
        log ρ and KL(old ‖ new) as the update computes them (the rollout's stored old step, the
        new weights in the trained steps' precision) and both sides recomputed in fp32 from the
        weights `before` the update and the current ones (bf16 weights, as on a GPU, are read
        in fp32 layer by layer: `models.base.fp32_over`). The difference is what rounding adds
        to the policy change the trust region is meant to see. In the update's micro-batches,
        so it needs no more memory than the update."""
        micro = mb.split(self.cfg.micro_batch or len(mb))
        parts = [(j, k, idx) for j, k in enumerate(ro.window) for idx in micro]
        now = self.model.trainable_state_dict()
        fp32 = {}  # per side: each part's (log-prob, mean) in fp32
        for side, state in (("new", now), ("old", before)):
            self.model.load_trainable_state_dict(state)
            with self.model.precision(torch.float32):
                fp32[side] = [(self._log_prob(r), r.mean) for r, _ in
                              (self._recompute(ro, j, k, idx, self._velocity) for j, k, idx in parts)]
        self.model.load_trainable_state_dict(now)
        lr, lr32, kl, kl32 = [], [], [], []
        for (j, k, idx), (new_lp, new_mean), (old_lp, old_mean) in zip(parts, fp32["new"], fp32["old"]):
            with self._precision():
                r, step_kl = self._recompute(ro, j, k, idx, self._velocity)
            lr.append((self._log_prob(r) - ro.old_log_prob[j][idx]).double())
            kl.append(step_kl.double())
            lr32.append((new_lp - old_lp).double())
            kl32.append(gaussian_kl(old_mean, new_mean, ro.std[j][idx]).double())
        lr, lr32, kl, kl32 = (dist.gather(torch.cat(t)) for t in (lr, lr32, kl, kl32))
        return {"change_logratio_abs_mean": lr.abs().mean().item(),
                "change_logratio_abs_mean_fp32": lr32.abs().mean().item(),
                "change_kl_mean": kl.mean().item(), "change_kl_mean_fp32": kl32.mean().item(),
                "rounding_logratio_abs_mean": (lr - lr32).abs().mean().item(),
                "rounding_kl_mean": (kl - kl32).abs().mean().item()}

    def train_epoch(self, epoch: int) -> tuple[dict, dict[str, Tensor]]:
        t0 = time.perf_counter()
        ro = self.rollout(epoch)
        floor = self.noise_floor(ro) if epoch == 0 else {}  # once per cell, before the first update
        off_policy = self.cfg.inner_loops > 1 or self.cfg.minibatch_size < len(ro.prompts)
        if epoch == 0 and off_policy:  # kept for the rounding in a change, measured once per cell
            self._weights_before_update = self.model.trainable_state_dict()
        t1 = time.perf_counter()
        with memory_phase("update"):
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
        metrics.update(peak_metrics())
        return metrics, samples
