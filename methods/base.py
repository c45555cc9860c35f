"""What a method is, and the registry that maps short names to methods.

A method is one small file: a config dataclass (the published recipe as defaults,
every field documented) and a subclass of one of two kinds, by what it trains on:

- `Method`: the sampled SDE steps. Its `step_loss` turns the tensors of one trained
  denoising step (log-probabilities, means, the KL to the old policy) into a per-sample loss.
- `ForwardMethod`: the forward process of the rollout's clean samples (DiffusionNFT, AWM).
  The rollout is pure ODE; the trainer noises each clean sample x0 at drawn times t,
  `x_t = (1 − t)·x0 + t·ε`, and its `forward_loss` turns the velocities there (the policy's,
  with gradient, and the old policy's) into a per-sample loss.

The common trainer does everything else (rollouts, rewards, advantages, the β·KL_ref term,
optimisation, diagnostics), so methods compete on equal terms and a new one never edits the
trainer:

    @register_method("my-method")
    class MyMethod(Method):
        description = "..."
        paper = "..."
        Config = MyConfig
        def step_loss(self, s: StepTensors) -> StepLoss: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Annotated, Literal

import torch
from torch import Tensor

from flowarena.core.errors import FlowArenaError
from flowarena.core.fields import Range, check_fields
from flowarena.core.registry import Registry


class MethodError(FlowArenaError, ValueError):
    """Unknown method or invalid method settings."""


# A subclass that changes a default restates the field with these types (its hint replaces the
# parent's), so that the same values are allowed.
Sampler = Literal["sde", "cps", "dance"]
Eta = Annotated[float, Range(0, 1, lo_open=True)]
LogProb = Literal["exact", "cps-surrogate"]


@dataclass
class MethodConfig:
    """Settings every method has; subclasses add theirs and override defaults."""

    sampler: Sampler = "sde"
    """Stochastic sampler of the trained steps: "sde" (Flow-SDE, Flow-GRPO), "cps" (Flow-CPS) or
    "dance" (DanceGRPO's)."""
    eta: Eta = 0.7
    """Noise level η of the sampler (Flow-SDE 0.7, CPS 0.8 in the published recipes)."""
    log_prob: LogProb = "exact"
    """"exact" Gaussian log-probability, or "cps-surrogate" (−mean((x' − μ)²), Flow-CPS)."""

    def validate(self) -> None:
        """Each field as its type and range allow (`flowarena.core.fields`); a subclass adds
        what its fields must satisfy together."""
        check_fields(self, MethodError)


@dataclass
class StepTensors:
    """One trained step k for a mini-batch of B trajectories (all [B] unless noted).

    `log_prob` and `mean` carry gradients; everything `old_` was frozen at rollout time.
    Log-probabilities and KLs are per element (mean over non-batch dimensions).
    """

    log_prob: Tensor  # log π_θ(x_{k+1} | x_k), with grad
    old_log_prob: Tensor  # log π_old(x_{k+1} | x_k), frozen at rollout
    kl: Tensor  # exact KL(π_old ‖ π_θ) at this step, with grad
    advantages: Tensor  # A_i, clipped group-relative advantages
    mean: Tensor  # μ_θ [B, ...], with grad
    old_mean: Tensor  # μ_old [B, ...]
    std: Tensor  # transition std s [B, 1, ..., 1]
    dt: float  # σ_{k+1} − σ_k (< 0)
    noise: Tensor  # ε [B, ...]: the stored action's standardised noise, x_{k+1} = μ_old + s·ε
    step_index: int = 0  # k in the sampling trajectory


@dataclass
class StepLoss:
    loss: Tensor  # [B] per-sample loss of this step (the trainer adds β·KL_ref and averages)
    ratio: Tensor | None  # [B] the ratio the method acted on (detached), for diagnostics (None: none)
    trust: Tensor  # [B] bool: samples whose gradient the trust region removed (clipped / masked)
    extras: dict[str, Tensor] = field(default_factory=dict)  # method-specific scalars to log


class Method:
    """A method trained on the sampled SDE steps (`step_loss`)."""
    trains_on: Literal["sde", "forward"] = "sde"
    name: str = ""
    description: str = ""
    paper: str = ""
    colour: str | None = None
    """The method's colour in every figure of every report (None: one of the unused ones)."""
    ablation: bool = False  # listed after the published methods
    Config: type[MethodConfig] = MethodConfig

    def __init__(self, config: MethodConfig | None = None):
        self.config = config or self.Config()
        self.config.validate()

    def step_loss(self, s: StepTensors) -> StepLoss:
        raise NotImplementedError

    def window(self, rng, steps: int, sde_window: int, window_fraction: float, epoch: int) -> list[int]:
        """The epoch's trained SDE steps, drawn with `rng`: `sde_window` of the first
        `window_fraction` of the `steps` (MixGRPO slides it instead)."""
        return sorted(int(k) for k in rng.choice(max(1, int(steps * window_fraction)), sde_window,
                                                 replace=False))

    def rollout_sigmas(self, sigmas: Tensor, window: list[int], shift: float) -> Tensor:
        """The epoch's rollout schedule, given the model's and the window (MixGRPO-Flash takes
        fewer steps after the window); it must keep σ_0 … σ_{last window step + 1}."""
        return sigmas

    def check_train(self, train) -> None:
        """Refuse training settings this method cannot train with (a `TrainConfig`)."""

    @property
    def kl_sampler(self) -> tuple[str, float]:
        """The sampler and η along which the KL to the pretrained model is measured."""
        return self.config.sampler, self.config.eta

    @property
    def trust_threshold(self) -> float | None:
        """δ for KL-masked methods (reported as the share of steps with KL above it)."""
        return None

    @property
    def trust_region(self) -> dict[str, float]:
        """The trust region as the report draws it, recorded in each cell's config.json:
        `ratio_clip` (ε of a clipped ratio, ρ ∈ [1 − ε, 1 + ε]) and / or `kl_threshold` (δ)."""
        return {} if self.trust_threshold is None else {"kl_threshold": self.trust_threshold}


@dataclass
class ForwardConfig:
    """Settings every forward-process method has; subclasses add theirs."""

    adv_clip_max: Annotated[float, Range(0, lo_open=True)] = 5.0
    """a_max: advantages clipped to ±a_max (nft maps them to r ∈ [0, 1] and scales its loss by
    it, awm divides by it; every reference uses 5)."""

    def validate(self) -> None:
        check_fields(self, MethodError)


@dataclass
class ForwardTensors:
    """One training time for a mini-batch of B clean samples (all [B] unless noted).

    `velocity` carries gradients; `old_velocity` is the rollout policy's at the same point,
    frozen before the update. Velocities are [B, ...]; x_t = (1 − t)·x0 + t·ε.
    """

    velocity: Tensor  # v_θ(x_t, t), with grad
    old_velocity: Tensor  # v_old(x_t, t), frozen
    x0: Tensor  # the rollout's clean sample
    noise: Tensor  # ε
    t: Tensor  # [B] training time (σ of the schedule)
    advantages: Tensor  # A_i, clipped group-relative advantages
    rewards: Tensor  # r_i, the raw rewards
    groups: Tensor  # each sample's group (its prompt's index in the epoch)
    ref_velocity: Tensor | None = None  # v_ref(x_t, t), the pretrained model's (`needs_reference`)
    context: Tensor | None = None  # [B] what `batch_context` computed for these samples

    @property
    def x_t(self) -> Tensor:
        t = self.t.view(-1, *[1] * (self.x0.dim() - 1))
        return (1 - t) * self.x0 + t * self.noise

    @property
    def target(self) -> Tensor:
        """The flow-matching target u = ε − x0."""
        return self.noise - self.x0


class ForwardMethod(Method):
    """A method trained on the forward process of the rollout's clean samples (`forward_loss`)."""
    trains_on = "forward"
    Config = ForwardConfig
    needs_reference: bool = False
    """Whether `batch_context` reads `ref_velocity` (the trainer computes it there only then)."""
    shared_noise: bool = False
    """Whether a group's samples are noised with the same ε at each training time (DGPO)."""

    def forward_loss(self, f: ForwardTensors) -> StepLoss:
        raise NotImplementedError

    def batch_context(self, f: ForwardTensors) -> Tensor | None:
        """Once per training time, before the update, over the whole batch (every group whole;
        `velocity` is the old policy's, no gradient): a per-sample value that `forward_loss`
        receives as `context`, such as a statistic of each sample's group (DGPO's weight)."""
        return None

    def train_times(self, gen: torch.Generator, sigmas: Tensor, batch: int) -> Tensor:
        """The epoch's training times [T, batch], drawn with `gen` from the sampling schedule
        `sigmas` (σ_0 = 1 … σ_K = 0): `permuted_times` or `stratified_times`, as the paper does."""
        raise NotImplementedError

    def window(self, rng, steps: int, sde_window: int, window_fraction: float, epoch: int) -> list[int]:
        return []  # pure ODE rollouts

    def check_train(self, train) -> None:
        if train.group_noise == "shared":
            raise MethodError(f"{self.name} rolls out with the ODE alone: a group that shares its "
                              "initial noise would draw one image G times (--group-noise independent, "
                              f'or {self.name}@group_noise=independent)')

    @property
    def kl_sampler(self) -> tuple[str, float]:
        return "sde", 0.7  # Flow-GRPO's sampler: the one measure every method is compared on


def permuted_times(gen: torch.Generator, sigmas: Tensor, batch: int, n: int) -> Tensor:
    """Per sample, `n` distinct steps of the K-step schedule in random order: their σ_k [n, batch]
    (DiffusionNFT: each sample its own permutation of the steps)."""
    K = len(sigmas) - 1
    if not 1 <= n <= K:
        raise MethodError(f"{n} training times do not fit in the {K} sampling steps")
    picks = torch.stack([torch.randperm(K, generator=gen)[:n] for _ in range(batch)], dim=1)
    return sigmas[picks].float()


def stratified_times(gen: torch.Generator, sigmas: Tensor, batch: int, n: int, lo: int, hi: int) -> Tensor:
    """Per sample, one step from each of `n` equal strata of the step indices [lo, hi): their σ_k
    [n, batch] (AWM: every part of the trajectory trained at every update)."""
    if not 0 <= lo < hi <= len(sigmas) - 1 or hi - lo < n:
        raise MethodError(f"{n} strata of the steps [{lo}, {hi}) do not fit in {len(sigmas) - 1} steps")
    edges = torch.linspace(lo, hi, n + 1).long()  # AWM's strata: [edge_i, edge_i+1) of whole steps
    low, width = edges[:-1, None], (edges[1:] - edges[:-1])[:, None]
    return sigmas[low + (torch.rand((n, batch), generator=gen) * width).long()].float()


METHODS: Registry[type[Method]] = Registry("method", MethodError)


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        if not cls.description or not cls.paper:
            raise MethodError(f"method {name!r} needs a one-line description and its paper")
        return METHODS.add(name, cls)
    return deco


def method_names() -> list[str]:
    """Published methods first, then ablations, each group in registration order."""
    return sorted(METHODS.names(), key=lambda n: METHODS.get(n).ablation)


def get_method(name: str) -> type[Method]:
    if name not in METHODS:  # the published-first order in the message
        raise MethodError(f"unknown method {name!r} (known: {', '.join(method_names())})")
    return METHODS.get(name)


def build_method(name: str, **overrides) -> Method:
    cls = get_method(name)
    known = {f.name for f in fields(cls.Config)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise MethodError(f"method {name!r} has no setting {bad[0]!r} (settings: {', '.join(sorted(known))})")
    return cls(cls.Config(**overrides))
