"""The trainer's settings: `TrainConfig`, one documented field per knob (a field is also a
`bench run` option, a preset key and a `--dump-config` line: harness/options.py).
Defaults: the toy world's recipe; the published real-model recipes are presets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

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
from flowarena.models.base import Precision


class TrainConfigError(FlowArenaError, ValueError):
    """Impossible training settings."""


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
    solver: Literal["euler", "dpm++2m"] = "euler"
    """The rollout's ODE steps (outside the SDE window): "euler", or "dpm++2m" (DPM-Solver++ 2M,
    DiffusionNFT's rollout and MixGRPO-Flash's after the window; one velocity a step, as Euler).
    Evaluation samples with Euler for every method."""
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
    baseline_groups: Whole = 2
    """Prompt groups of each epoch's rollout sampled again with the pretrained model, from the
    same prompts and noise: the training curve `reward_vs_base` (0: none). A measurement only;
    it costs about baseline_groups / prompts_per_epoch of a rollout."""
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
