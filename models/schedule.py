"""The noise schedule and the deterministic ODE step every model samples with.

They live with the models (the lowest layer that steps a sample), and `methods.sde`
builds its stochastic steps on them: `x_σ = (1 − σ)·x0 + σ·ε`, `v ≈ ε − x0`,
`dt = σ_next − σ < 0` (docs/methods.md §1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ODE_SOLVERS", "DPMSolver2M", "Euler", "ode_step", "per_sample", "sd3_sigmas", "shift_sigmas"]


def per_sample(value: float | Tensor, like: Tensor) -> Tensor:
    """A float or [B] tensor of sigmas, shaped [B, 1, ..., 1] to broadcast against `like`."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def ode_step(sample: Tensor, velocity: Tensor, sigma: float | Tensor,
             sigma_next: float | Tensor) -> Tensor:
    """Deterministic Euler step of the probability-flow ODE: `x + v·dt`."""
    dt = per_sample(sigma_next, sample) - per_sample(sigma, sample)
    return sample + velocity * dt


class Euler:
    """The rollout's ODE solver, one velocity a step: Euler. `seen` is the hook a multistep
    solver remembers a step's prediction by (the SDE steps' too); Euler has nothing to keep."""

    def step(self, x: Tensor, v: Tensor, sigma: float, sigma_next: float) -> Tensor:
        return ode_step(x, v, sigma, sigma_next)

    def seen(self, x: Tensor, v: Tensor, sigma: float) -> None:
        pass


def _log_snr(sigma: float) -> float:
    """λ = log(α/σ) with α = 1 − σ; −inf at pure noise, +inf at the data."""
    if sigma >= 1:
        return -math.inf
    return math.inf if sigma <= 0 else math.log((1 - sigma) / sigma)


class DPMSolver2M(Euler):
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095) on the flow's data prediction
    x̂0 = x − σ·v, with α = 1 − σ: one velocity a step, as Euler, and second order from the
    step before's x̂0 (midpoint form):

        h = λ' − λ,   r = (λ − λ_prev) / h,   D = x̂0 + (x̂0 − x̂0_prev) / (2r)
        x' = (σ'/σ)·x − α'·(e^{−h} − 1)·D

    Its first order is Euler exactly; so are the first step (no x̂0 before it; from σ = 1,
    r = ∞) and the step to σ = 0 (x' = x̂0), as in DiffusionNFT's and MixGRPO-Flash's
    `dpm_step`. The x̂0 of a stochastic step counts as the step before (MixGRPO-Flash seeds the
    solver with the window's predictions)."""

    def __init__(self) -> None:
        self.prev: tuple[float, Tensor] | None = None  # (λ, x̂0) of the step before

    def seen(self, x: Tensor, v: Tensor, sigma: float) -> None:
        self.prev = (_log_snr(sigma), x.float() - sigma * v.float())

    def step(self, x: Tensor, v: Tensor, sigma: float, sigma_next: float) -> Tensor:
        prev = self.prev
        self.seen(x, v, sigma)
        lam, lam_next = _log_snr(sigma), _log_snr(sigma_next)
        if prev is None or sigma_next <= 0 or not math.isfinite(r := (lam - prev[0]) / (lam_next - lam)):
            return ode_step(x, v, sigma, sigma_next)
        x0 = self.prev[1]
        d = x0 + (x0 - prev[1]) / (2 * r)
        h = lam_next - lam
        return ((sigma_next / sigma) * x.float() - (1 - sigma_next) * math.expm1(-h) * d).to(x.dtype)


# the rollout's `solver` setting; the ODE steps of evaluation are Euler for every method
ODE_SOLVERS = {"euler": Euler, "dpm++2m": DPMSolver2M}


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """SD3's resolution shift `σ' = s·σ / (1 + (s − 1)·σ)`."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sd3_sigmas(steps: int, shift: float = 3.0, sigma_min: float | None = None) -> Tensor:
    """The shifted schedule `σ_0 = 1 > … > σ_K = 0` (K = steps + 1 values, float64).

    With `sigma_min` (diffusers uses 1/1000), the `steps` values are spaced from 1 to
    `sigma_min` before the shift and a final 0 is appended, as diffusers' SD3 pipeline does.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if sigma_min is None:
        base = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return shift_sigmas(base, shift)
    base = torch.linspace(1.0, sigma_min, steps, dtype=torch.float64)
    return torch.cat([shift_sigmas(base, shift), torch.zeros(1, dtype=torch.float64)])
