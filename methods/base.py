"""What a method is, and the registry that maps short names to methods.

A method is one small file: a config dataclass (the published recipe as defaults,
every field documented) and a subclass of `Method` whose `step_loss` turns the tensors
of one trained denoising step into a per-sample loss. The common trainer does
everything else (rollouts, rewards, advantages, the β·KL_ref term, optimisation,
diagnostics), so methods compete on equal terms and a new one never edits the trainer:

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

from torch import Tensor

from flowarena.core.errors import FlowArenaError
from flowarena.core.fields import Range, check_fields
from flowarena.core.registry import Registry


class MethodError(FlowArenaError, ValueError):
    """Unknown method or invalid method settings."""


# A subclass that changes a default restates the field with these types (its hint replaces the
# parent's), so that the same values are allowed.
Sampler = Literal["sde", "cps"]
Eta = Annotated[float, Range(0, 1, lo_open=True)]
LogProb = Literal["exact", "cps-surrogate"]


@dataclass
class MethodConfig:
    """Settings every method has; subclasses add theirs and override defaults."""

    sampler: Sampler = "sde"
    """Stochastic sampler of the trained steps: "sde" (Flow-SDE, Flow-GRPO) or "cps" (Flow-CPS)."""
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
    ratio: Tensor  # [B] the ratio the method acted on (detached), for diagnostics
    trust: Tensor  # [B] bool: samples whose gradient the trust region removed (clipped / masked)
    extras: dict[str, Tensor] = field(default_factory=dict)  # method-specific scalars to log


class Method:
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

    @property
    def trust_threshold(self) -> float | None:
        """δ for KL-masked methods (reported as the share of steps with KL above it)."""
        return None

    @property
    def trust_region(self) -> dict[str, float]:
        """The trust region as the report draws it, recorded in each cell's config.json:
        `ratio_clip` (ε of a clipped ratio, ρ ∈ [1 − ε, 1 + ε]) and / or `kl_threshold` (δ)."""
        return {} if self.trust_threshold is None else {"kl_threshold": self.trust_threshold}


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
