import math

import pytest
import torch

from flowarena.methods.sde import (
    cps_step,
    flow_sde_step,
    gaussian_kl,
    gaussian_log_prob,
    ode_step,
    sd3_sigmas,
    shift_sigmas,
)


@pytest.fixture(autouse=True)
def float64():
    """Float precision checks run in float64; restore the default afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _batch(b=3, shape=(2, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *shape, generator=g), torch.randn(b, *shape, generator=g)


def test_flow_sde_hand_computed_values():
    # one element, sigma 0.5 -> 0.25, eta 0.7: g = 0.7*sqrt(0.5/0.5) = 0.7, s = 0.7*sqrt(0.25) = 0.35
    x = torch.tensor([[1.0]])
    v = torch.tensor([[2.0]])
    r = flow_sde_step(x, v, 0.5, 0.25, eta=0.7, noise=torch.tensor([[1.0]]))
    dt = -0.25
    mean = 1.0 * (1 + 0.49 / (2 * 0.5) * dt) + 2.0 * (1 + 0.49 * 0.5 / (2 * 0.5)) * dt
    assert r.std.item() == pytest.approx(0.35)
    assert r.mean.item() == pytest.approx(mean)  # 0.8775 - 0.6225 = 0.255
    assert r.mean.item() == pytest.approx(0.255)
    assert r.next_sample.item() == pytest.approx(0.255 + 0.35)
    assert r.log_prob.item() == pytest.approx(-0.5 - math.log(0.35) - 0.5 * math.log(2 * math.pi))


def test_flow_sde_sigma_one_uses_next_sigma():
    x, v = _batch()
    r = flow_sde_step(x, v, 1.0, 0.8, eta=0.7)
    g = 0.7 * math.sqrt(1.0 / (1 - 0.8))
    assert torch.allclose(r.std.flatten(), torch.full((3,), g * math.sqrt(0.2)))
    assert torch.isfinite(r.mean).all()


def test_cps_hand_computed_values():
    x = torch.tensor([[1.0]])
    v = torch.tensor([[2.0]])
    r = cps_step(x, v, 0.5, 0.25, eta=0.8, noise=torch.tensor([[0.5]]))
    s = 0.25 * math.sin(0.4 * math.pi)
    x0, x1 = 1 - 0.5 * 2, 1 + 0.5 * 2
    mean = 0.75 * x0 + math.sqrt(0.25**2 - s**2) * x1
    assert r.std.item() == pytest.approx(s)
    assert r.mean.item() == pytest.approx(mean)
    assert r.next_sample.item() == pytest.approx(mean + 0.5 * s)
    assert r.surrogate_log_prob.item() == pytest.approx(-((0.5 * s) ** 2))


def test_cps_last_step_is_deterministic():
    # At sigma_next = 0 the CPS step returns x0_hat = x - sigma*v, with no noise.
    x, v = _batch()
    r = cps_step(x, v, 0.3, 0.0, eta=0.8)
    assert torch.equal(r.next_sample, r.mean)
    assert torch.all(r.std == 0) and torch.all(r.log_prob == 0)
    assert torch.allclose(r.mean, x - 0.3 * v)  # x0_hat


@pytest.mark.parametrize("step", [flow_sde_step, cps_step])
def test_log_prob_matches_torch_normal(step):
    x, v = _batch()
    sig, sig_next = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.8, 0.4, 0.1])
    r = step(x, v, sig, sig_next, eta=0.7)
    normal = torch.distributions.Normal(r.mean, r.std.expand_as(r.mean))
    expected = normal.log_prob(r.next_sample).flatten(1).mean(1)
    assert torch.allclose(r.log_prob, expected, atol=1e-10)
    # scoring a stored action gives the same value
    again = step(x, v, sig, sig_next, eta=0.7, next_sample=r.next_sample)
    assert torch.allclose(again.log_prob, r.log_prob)


def test_per_sample_sigmas_equal_scalar_calls():
    x, v = _batch()
    sig, sig_next = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.8, 0.4, 0.1])
    noise = torch.randn_like(x)
    r = flow_sde_step(x, v, sig, sig_next, eta=0.7, noise=noise)
    for i in range(3):
        ri = flow_sde_step(x[i:i + 1], v[i:i + 1], float(sig[i]), float(sig_next[i]), eta=0.7,
                           noise=noise[i:i + 1])
        assert torch.allclose(r.next_sample[i], ri.next_sample[0])
        assert torch.allclose(r.log_prob[i], ri.log_prob[0])


def test_exact_kl_agrees_with_monte_carlo():
    g = torch.Generator().manual_seed(1)
    mean_a = torch.randn(1, 16, generator=g)
    mean_b = mean_a + 0.3 * torch.randn(1, 16, generator=g)
    std = 0.5
    kl = gaussian_kl(mean_a, mean_b, std).item()
    n = 200_000
    x = mean_a + std * torch.randn(n, 16, generator=g)
    a = torch.distributions.Normal(mean_a, std).log_prob(x).mean(1)
    b = torch.distributions.Normal(mean_b, std).log_prob(x).mean(1)
    est = (a - b)
    assert abs(est.mean().item() - kl) < 3 * est.std().item() / math.sqrt(n)
    assert kl == pytest.approx(((mean_a - mean_b) ** 2).mean().item() / (2 * std**2))


@pytest.mark.parametrize("step", [flow_sde_step, cps_step])
def test_log_ratio_decomposes_into_minus_kl_plus_noise(step):
    """log ρ = −KL_sum + ε·Δμ/s for the action sampled by the old policy (docs/methods.md §3)."""
    x, v_old = _batch()
    v_new = v_old + 0.05 * torch.randn_like(v_old)
    sig, sig_next = torch.tensor([0.9, 0.6, 0.3]), torch.tensor([0.8, 0.5, 0.2])
    eps = torch.randn_like(x)
    old = step(x, v_old, sig, sig_next, eta=0.7, noise=eps)
    new = step(x, v_new, sig, sig_next, eta=0.7, next_sample=old.next_sample)
    d = x[0].numel()
    log_ratio_sum = (new.log_prob - old.log_prob) * d
    dmu = new.mean - old.mean
    kl_sum = gaussian_kl(old.mean, new.mean, old.std) * d
    noise_term = (eps * dmu / old.std).flatten(1).sum(1)
    assert torch.allclose(log_ratio_sum, -kl_sum + noise_term, atol=1e-10)


def test_eta_to_zero_gives_the_ode_step():
    x, v = _batch()
    ode = ode_step(x, v, 0.7, 0.5)
    assert torch.allclose(ode, x + v * (0.5 - 0.7))
    sde = flow_sde_step(x, v, 0.7, 0.5, eta=1e-7)
    cps = cps_step(x, v, 0.7, 0.5, eta=1e-7)
    assert torch.allclose(sde.next_sample, ode, atol=1e-6)
    assert torch.allclose(cps.next_sample, ode, atol=1e-6)


def test_gaussian_log_prob_zero_std_is_zero():
    x = torch.ones(2, 3)
    assert torch.equal(gaussian_log_prob(x, x, torch.zeros(2, 1)), torch.zeros(2))


def test_sd3_schedule():
    s = sd3_sigmas(4, shift=3.0)
    base = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    assert torch.allclose(s, 3 * base / (1 + 2 * base))
    assert s[0] == 1 and s[-1] == 0 and torch.all(s[1:] < s[:-1])
    assert torch.allclose(shift_sigmas(torch.tensor([0.5]), 1.0), torch.tensor([0.5]))
    d = sd3_sigmas(4, shift=3.0, sigma_min=1e-3)
    assert len(d) == 5 and d[-1] == 0 and d[0] == 1
    assert d[-2] == pytest.approx(3e-3 / (1 + 2e-3))
    with pytest.raises(ValueError):
        sd3_sigmas(0)
