"""The noise schedule and the deterministic ODE step every model samples with.

They live with the models (the lowest layer that steps a sample), and `methods.sde`
builds its stochastic steps on them: `x_σ = (1 − σ)·x0 + σ·ε`, `v ≈ ε − x0`,
`dt = σ_next − σ < 0` (docs/methods.md §1).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ode_step", "per_sample", "sd3_sigmas", "shift_sigmas"]


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
