"""The Gaussian step policies every method shares (docs/methods.md §1–3).

Notation follows docs/methods.md: `x_σ = (1 − σ)·x0 + σ·ε`, the network predicts
`v ≈ ε − x0`, `dt = σ_next − σ < 0`. A stochastic step is a Gaussian policy
`N(μ_θ, s²·I)` whose std `s` does not depend on θ, so the log-probability of a stored
action and the KL between two policies are exact and cheap.

Reduction convention: **log-probabilities and KLs are per element, i.e. the mean over
all non-batch dimensions** (flow_grpo / UniRL). The published clip ranges and DPPO's δ
live on this scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flowarena.models.schedule import ode_step, per_sample, sd3_sigmas, shift_sigmas

__all__ = [
    "StepResult",
    "flow_sde_step",
    "cps_step",
    "dance_step",
    "SAMPLERS",
    "ode_step",
    "gaussian_log_prob",
    "gaussian_kl",
    "sd3_sigmas",
    "shift_sigmas",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepResult:
    next_sample: Tensor  # x_{k+1} = mean + std·noise (or the given next_sample)
    mean: Tensor  # μ, same shape as the sample
    std: Tensor  # s, the transition std, shape [B, 1, ..., 1]
    log_prob: Tensor  # [B] float64, exact Gaussian log N(next; μ, s²), mean over non-batch dims
    surrogate_log_prob: Tensor | None = None  # [B] float64, Flow-CPS: −mean((next − μ)²)


def _mean_over_sample_dims(t: Tensor) -> Tensor:
    return t.flatten(1).mean(1)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(x; mean, std²·I) per element, averaged over non-batch dims -> [B], in float64:
    a log-probability near −1 has a float32 resolution of about 1e-7, coarser than the
    ratio deviations the published clip ranges act on (down to 2e-6, and far smaller on
    the first passes), so ρ = exp(log π − log π_old) must not be formed in float32."""
    x, mean, std = x.double(), mean.double(), std.double()
    safe = torch.where(std > 0, std, torch.ones_like(std))
    elem = -((x - mean) ** 2) / (2 * safe**2) - torch.log(safe) - _HALF_LOG_2PI
    return _mean_over_sample_dims(torch.where(std > 0, elem, torch.zeros_like(elem)))


def gaussian_kl(mean_a: Tensor, mean_b: Tensor, std: Tensor | float) -> Tensor:
    """Exact KL(N(mean_a, s²I) ‖ N(mean_b, s²I)) = ‖mean_a − mean_b‖²/(2s²), per element -> [B]."""
    s = per_sample(std, mean_a)
    return _mean_over_sample_dims((mean_a - mean_b) ** 2 / (2 * s**2))


def _finish(mean: Tensor, std: Tensor, noise: Tensor | None, next_sample: Tensor | None,
            generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    if next_sample is None:
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                                device=mean.device)
        next_sample = mean + std * noise
    return next_sample, gaussian_log_prob(next_sample, mean, std)


def flow_sde_step(
    sample: Tensor,
    velocity: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    *,
    eta: float,
    noise: Tensor | None = None,
    next_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepResult:
    """One Flow-SDE step (Flow-GRPO): the reverse SDE with the ODE's marginals.

    `g = η·sqrt(σ/(1 − σ̄))` (σ̄ = σ, except σ̄ = σ_next where σ = 1),
    `s = g·sqrt(−dt)`, `μ = x·(1 + g²/(2σ)·dt) + v·(1 + g²(1 − σ)/(2σ))·dt`.
    Pass `next_sample` to score a stored action instead of sampling one.
    """
    sigma = per_sample(sigma, sample)
    sigma_next = per_sample(sigma_next, sample)
    dt = sigma_next - sigma
    sigma_bar = torch.where(sigma >= 1, sigma_next, sigma)
    g = eta * torch.sqrt(sigma / (1 - sigma_bar))
    std = g * torch.sqrt(-dt)
    mean = sample * (1 + g**2 / (2 * sigma) * dt) + velocity * (1 + g**2 * (1 - sigma) / (2 * sigma)) * dt
    next_sample, log_prob = _finish(mean, std, noise, next_sample, generator)
    return StepResult(next_sample, mean, std, log_prob)


def cps_step(
    sample: Tensor,
    velocity: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    *,
    eta: float,
    noise: Tensor | None = None,
    next_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepResult:
    """One coefficients-preserving step (Flow-CPS).

    `x̂0 = x − σ·v`, `x̂1 = x + (1 − σ)·v`, `s = σ_next·sin(η·π/2)`,
    `μ = (1 − σ_next)·x̂0 + sqrt(σ_next² − s²)·x̂1`: the next sample keeps the
    interpolation's coefficients exactly. At σ_next = 0 the step is deterministic
    (s = 0, log-prob 0) and is never trained.
    """
    sigma = per_sample(sigma, sample)
    sigma_next = per_sample(sigma_next, sample)
    x0_hat = sample - sigma * velocity
    x1_hat = sample + (1 - sigma) * velocity
    std = sigma_next * math.sin(eta * math.pi / 2)
    mean = (1 - sigma_next) * x0_hat + torch.sqrt(sigma_next**2 - std**2) * x1_hat
    next_sample, log_prob = _finish(mean, std, noise, next_sample, generator)
    surrogate = -_mean_over_sample_dims((next_sample.double() - mean.double()) ** 2)  # float64, as above
    return StepResult(next_sample, mean, std, log_prob, surrogate)


def dance_step(
    sample: Tensor,
    velocity: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    *,
    eta: float,
    noise: Tensor | None = None,
    next_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepResult:
    """One DanceGRPO step (its `flux_step` with `sde_solver`): Euler plus a score correction.

    `x̂0 = x − σ·v`, `μ = x + dt·(v + ½η²·(x − (1 − σ)·x̂0)/σ²)`, `s = η·sqrt(−dt)`
    (dt = σ_next − σ < 0): the noise does not scale with σ as Flow-SDE's does.
    """
    sigma = per_sample(sigma, sample)
    sigma_next = per_sample(sigma_next, sample)
    dt = sigma_next - sigma
    x0_hat = sample - sigma * velocity
    mean = sample + dt * (velocity + 0.5 * eta**2 * (sample - (1 - sigma) * x0_hat) / sigma**2)
    std = eta * torch.sqrt(-dt)
    next_sample, log_prob = _finish(mean, std, noise, next_sample, generator)
    return StepResult(next_sample, mean, std, log_prob)


SAMPLERS = {"sde": flow_sde_step, "cps": cps_step, "dance": dance_step}
"""The stochastic samplers by the name a method's config gives (`MethodConfig.sampler`)."""


def kl_per_unit_velocity(step, sigma: float, sigma_next: float, *, eta: float) -> float:
    """The per-element KL between a sampler's policies at one step when the two velocities
    differ by 1 in every element: (∂μ/∂v)²/(2s²). It compares the KL scales of samplers
    (how far a δ calibrated for Flow-SDE carries to CPS). `step` is `flow_sde_step` or `cps_step`."""
    x = torch.zeros(1, 1, dtype=torch.float64)
    a = step(x, x, sigma, sigma_next, eta=eta, next_sample=x)
    b = step(x, x + 1, sigma, sigma_next, eta=eta, next_sample=x)
    return float(gaussian_kl(a.mean, b.mean, a.std))


