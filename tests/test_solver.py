"""The rollout's ODE solver (`solver = "dpm++2m"`): DPM-Solver++ 2M on the flow's data
prediction, against DiffusionNFT's `dpm_step` (transcribed from NVlabs/DiffusionNFT
flow_grpo/diffusers_patch/solver.py, read 2026-12-06) and diffusers' multistep scheduler, its
second order on a field whose ODE is solved exactly, and in the trainer's rollout."""

import math

import pytest
import torch

from flowarena.methods import build_method
from flowarena.methods.trainer import TrainConfig, Trainer
from flowarena.models.schedule import ODE_SOLVERS, sd3_sigmas
from flowarena.models.toy import load_toy
from flowarena.rewards import build_reward
from flowarena.tasks.prompts import load_toy_split

S = 0.5  # the data's standard deviation in the Gaussian field below


def gaussian_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact velocity E[ε − x0 | x_σ] for data x0 ~ N(0, S²) per element: linear in x,
    and the ODE from x_1 = z ends at x_0 = S·z."""
    var = (1 - sigma) ** 2 * S**2 + sigma**2
    return (sigma - (1 - sigma) * S**2) / var * x


def swirl_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A nonlinear field, so that every coefficient of a step matters."""
    return torch.tanh(x.roll(1, -1)) * (1 + sigma) - 0.3 * x * sigma**2


def run(solver: str, field, x: torch.Tensor, sig: torch.Tensor, stochastic: dict | None = None):
    s = ODE_SOLVERS[solver]()
    for k in range(len(sig) - 1):
        v = field(x, float(sig[k]))
        if stochastic and k in stochastic:  # a step the solver only sees (an SDE step's place)
            s.seen(x, v, float(sig[k]))
            x = stochastic[k](x, v, float(sig[k]), float(sig[k + 1]))
        else:
            x = s.step(x, v, float(sig[k]), float(sig[k + 1]))
    return x


def nft_reference(field, z: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
    """DiffusionNFT's `run_sampling(solver="dpm2", determistic=True)`: `dpm_step` with DPMState,
    `ddim_update` (η = 0) at the first and last steps, the first-order DPM update while the
    state holds one output, the multistep second-order (midpoint) update after."""
    sig = sig.to(torch.float64)

    def alpha_sigma(s):
        return 1 - s, s

    outputs, lower = [None, None], 0
    for i in range(len(sig) - 1):
        model_output = field(z, float(sig[i])).float()
        sample = z.float()
        x0_pred = sample - sig[i] * model_output
        outputs = [outputs[1], x0_pred]
        final = i == len(sig) - 2
        if lower < 1 or final:
            if i == 0 or final:  # ddim_update with eta = 0
                t, s = sig[i + 1], sig[i]
                noise_pred = (sample - (1 - s) * x0_pred) / s
                prev = (1 - t) * x0_pred + torch.sqrt(t**2) * noise_pred
            else:
                (a_t, s_t), (a_s, s_s) = alpha_sigma(sig[i + 1]), alpha_sigma(sig[i])
                h = (torch.log(a_t) - torch.log(s_t)) - (torch.log(a_s) - torch.log(s_s))
                prev = (s_t / s_s) * sample - (a_t * (torch.exp(-h) - 1.0)) * x0_pred
        else:
            (a_t, s_t), (a_s0, s_s0), (a_s1, s_s1) = (alpha_sigma(sig[i + 1]), alpha_sigma(sig[i]),
                                                      alpha_sigma(sig[i - 1]))
            lam_t, lam_s0, lam_s1 = (torch.log(a_t) - torch.log(s_t), torch.log(a_s0) - torch.log(s_s0),
                                     torch.log(a_s1) - torch.log(s_s1))
            m0, m1 = outputs[1], outputs[0]
            h, h_0 = lam_t - lam_s0, lam_s0 - lam_s1
            r0 = h_0 / h
            d0, d1 = m0, (1.0 / r0) * (m0 - m1)
            prev = ((s_t / s_s0) * sample - (a_t * (torch.exp(-h) - 1.0)) * d0
                    - 0.5 * (a_t * (torch.exp(-h) - 1.0)) * d1)
        lower = min(lower + 1, 2)
        z = prev.to(z.dtype)
    return z


@pytest.mark.parametrize("steps,shift", [(10, 3.0), (6, 1.0), (14, 3.0)])
def test_the_solver_is_diffusion_nft_s(steps, shift):
    z = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sig = sd3_sigmas(steps, shift)
    ours, theirs = run("dpm++2m", swirl_velocity, z, sig), nft_reference(swirl_velocity, z, sig)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours - run("euler", swirl_velocity, z, sig)).abs().max() > 1e-2  # a different solver


def test_the_solver_is_diffusers_multistep_dpm_solver_pp():
    from diffusers import DPMSolverMultistepScheduler

    steps, z = 10, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    sched = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                        solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
                                        final_sigmas_type="zero")
    sched.set_timesteps(steps)
    sig = sched.sigmas.to(torch.float64)  # its own schedule (not from σ = 1), ending at 0
    x = z.clone()
    for i, t in enumerate(sched.timesteps):
        x = sched.step(swirl_velocity(x, float(sig[i])), t, x).prev_sample
    torch.testing.assert_close(run("dpm++2m", swirl_velocity, z, sig), x, rtol=1e-5, atol=1e-5)


def test_second_order_where_the_ode_is_known():
    """On the Gaussian field the exact x_σ is sqrt((1 − σ)²S² + σ²)·z. Measured at σ = 0.2 (the
    step to σ = 0 is first order by design): at 10 steps DPM-Solver++ 2M's error is under a
    tenth of Euler's, and halving the step cuts it more than 3× (Euler's about 2×)."""
    z = torch.randn(64, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    end = 0.2

    def error(solver, steps):
        exact = ((1 - end) ** 2 * S**2 + end**2) ** 0.5 * z
        sig = torch.linspace(1, end, steps + 1, dtype=torch.float64)
        return (run(solver, gaussian_velocity, z, sig) - exact).abs().max().item()

    assert error("dpm++2m", 10) < 0.1 * error("euler", 10)
    assert error("euler", 10) / error("euler", 20) == pytest.approx(2, rel=0.1)
    assert error("dpm++2m", 10) / error("dpm++2m", 20) > 3


def test_a_stochastic_step_seeds_the_solver():
    """The step after an SDE step uses that step's x̂0 (MixGRPO-Flash seeds its solver with the
    window's predictions), exactly as if the solver had taken the step itself; forgetting it
    (the x̂0 before it kept) gives another next step."""
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    sig = sd3_sigmas(8, 3.0)

    def noisy(x, v, s, s_next):
        return x + (s_next - s) * v + 0.05 * math.sqrt(s - s_next) * torch.ones_like(x)

    def by_hand(remember: bool):
        s, x = ODE_SOLVERS["dpm++2m"](), z
        for k in range(len(sig) - 1):
            v = swirl_velocity(x, float(sig[k]))
            if k == 2:
                if remember:
                    s.step(x, v, float(sig[k]), float(sig[k + 1]))  # its x̂0 kept, its x' dropped
                x = noisy(x, v, float(sig[k]), float(sig[k + 1]))
            else:
                x = s.step(x, v, float(sig[k]), float(sig[k + 1]))
        return x

    a = run("dpm++2m", swirl_velocity, z, sig, {2: noisy})
    torch.testing.assert_close(a, by_hand(True), rtol=0, atol=0)
    assert (a - by_hand(False)).abs().max() > 1e-3


def test_the_rollout_uses_the_solver_at_the_same_compute(tiny_path):
    """The trainer's rollout with `solver = "dpm++2m"`: the same SDE window and noise, other final
    latents, the same evaluations counted."""
    out = {}
    for solver in ("euler", "dpm++2m"):
        cfg = TrainConfig(prompts_per_epoch=2, group_size=2, minibatch_size=4, steps=6, sde_window=2,
                          baseline_groups=0, solver=solver)
        trainer = Trainer(load_toy(tiny_path), build_method("grpo"), build_reward("toy-colour"),
                          load_toy_split("train"), cfg, seed=0)
        ro = trainer.rollout(0)
        out[solver] = ro, trainer.compute.epoch_metrics()
    (a, ca), (b, cb) = out["euler"], out["dpm++2m"]
    assert a.window == b.window and ca == cb
    torch.testing.assert_close(a.x[0], b.x[0])  # before any ODE step differs: the same start
    assert (a.x0 - b.x0).abs().max() > 1e-4
