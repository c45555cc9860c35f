"""The method zoo beyond grpo and dppo: each loss on hand-built tensors, and the formula
checks of docs/methods.md (RatioNorm's bias removal, the 1/|dt| reweighting, the CPS surrogate)."""

import math

import pytest
import torch

from flowarena.methods import build_method, get_method, method_names
from flowarena.methods.base import StepTensors
from flowarena.methods.grpo import clipped_loss
from flowarena.methods.sde import cps_step, flow_sde_step, gaussian_kl, kl_per_unit_velocity, sd3_sigmas

ZOO = ["grpo", "cps", "guard", "dppo", "dppo-cps", "dppo-sym", "grpo-noclip", "dppo-sampled-kl"]


def test_registry_holds_the_zoo_with_published_defaults():
    assert set(ZOO) <= set(method_names())
    for name in ZOO:
        assert get_method(name).description and get_method(name).paper
    cps = build_method("cps").config
    assert (cps.sampler, cps.eta, cps.log_prob, cps.clip_range) == ("cps", 0.8, "cps-surrogate", 1e-5)
    guard = build_method("guard").config
    assert (guard.sampler, guard.clip_range, guard.reweight_dt) == ("sde", 2e-6, True)
    assert build_method("dppo-cps").config.sampler == "cps"
    assert math.isinf(build_method("grpo-noclip").config.clip_range)


def _step(sampler="sde", B=6, seed=0, scale=1e-2, adv=None):
    """A trained step for B samples in float64: old policy from v, new from v + scale·Δv."""
    g = torch.Generator().manual_seed(seed)
    x, v = (torch.randn(B, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    step = flow_sde_step if sampler == "sde" else cps_step
    old = step(x, v, 0.8, 0.7, eta=0.7, generator=g)
    new = step(x, v + scale * torch.randn(B, 3, 4, 4, generator=g, dtype=torch.float64), 0.8, 0.7, eta=0.7,
               next_sample=old.next_sample)
    A = adv if adv is not None else torch.tensor([1.0, -1.0] * (B // 2), dtype=torch.float64)
    noise = (old.next_sample - old.mean) / old.std
    st = StepTensors(new.log_prob, old.log_prob, gaussian_kl(old.mean, new.mean, old.std), A,
                     new.mean, old.mean, old.std, -0.1, noise, 0)
    return st, old, new


def test_ratio_norm_removes_the_kl_bias():
    """log ρ = −KL + mean(ε·Δμ/s), so s·(log ρ + b) = s·mean(ε·Δμ/s): the noise term alone."""
    from flowarena.methods.guard import ratio_norm

    st, old, new = _step()
    log_rt = ratio_norm(st.log_prob, st.old_log_prob, st.mean, st.old_mean, st.std)
    s = st.std.mean()
    noise_term = (st.noise * (st.mean - st.old_mean) / s).flatten(1).mean(1)
    assert torch.allclose(log_rt, s * noise_term, atol=1e-12)
    # the raw log-ratio carries the −KL bias; the normalised one does not
    raw = st.log_prob - st.old_log_prob
    assert torch.allclose(raw, -st.kl + noise_term, atol=1e-12)


def test_guard_loss_clips_normalised_ratio_and_reweights_by_dt():
    st, _, _ = _step(scale=1.0)
    guard = build_method("guard", clip_range=1e-3)
    out = guard.step_loss(st)
    plain = build_method("guard", clip_range=1e-3, reweight_dt=False).step_loss(st)
    assert torch.allclose(out.loss, plain.loss / 0.1)  # |dt| = 0.1
    from flowarena.methods.guard import ratio_norm

    log_rt = ratio_norm(st.log_prob, st.old_log_prob, st.mean, st.old_mean, st.std)
    ref, _, clipped = clipped_loss(log_rt, torch.zeros_like(log_rt), st.advantages, clip_range=1e-3)
    assert torch.allclose(plain.loss, ref) and torch.equal(out.trust, clipped)
    assert out.trust.any() and not out.trust.all()


def _guard_script_log_ratio(st, dim):
    """The log-ratio as flow_grpo's GRPO-Guard script writes it (PR #175, train_sd3_GRPO_Guard.py,
    RatioNorm lines), on a [B] per-element log-prob with std = std_dev_t·sqrt(−dt) and dt shared."""
    log_prob, old_log_prob = st.log_prob, st.old_log_prob
    sqrt_dt = torch.full_like(log_prob, math.sqrt(-st.dt))
    std_dev_t = st.std / math.sqrt(-st.dt)
    sigma_t = std_dev_t.mean()
    ratio_mean_bias = (st.mean - st.old_mean).pow(2).mean(dim=dim)
    ratio_mean_bias = ratio_mean_bias / (2 * (sqrt_dt.mean() * sigma_t) ** 2)
    return (log_prob - old_log_prob + ratio_mean_bias) * (sqrt_dt.mean() * sigma_t)


def test_guard_bias_per_sample_or_per_batch_as_the_references():
    """b per sample (verl-omni, Flow-Factory; the default) or one b per micro-batch (the
    authors' script: `mean(dim=tuple(range(1, log_prob.ndim)))` with log_prob [B] is dim=())."""
    from flowarena.methods.guard import ratio_norm

    assert torch.tensor([1.0, 2.0]).mean(dim=()).item() == 1.5  # torch reads dim=() as every dimension
    st, _, _ = _step(B=6, scale=0.3)
    script_dim = tuple(range(1, st.log_prob.ndim))
    assert script_dim == ()
    per_batch = _guard_script_log_ratio(st, script_dim)
    per_sample = _guard_script_log_ratio(st, (1, 2, 3))
    assert per_batch.shape == per_sample.shape == (6,)
    assert not torch.allclose(per_batch, per_sample, rtol=1e-3)  # the two readings differ here
    args = (st.log_prob, st.old_log_prob, st.mean, st.old_mean, st.std)
    assert torch.allclose(ratio_norm(*args), per_sample, rtol=1e-10, atol=1e-14)
    assert torch.allclose(ratio_norm(*args, bias="batch"), per_batch, rtol=1e-10, atol=1e-14)
    assert build_method("guard").config.bias == "sample"
    batch = build_method("guard", bias="batch", clip_range=1e-3, reweight_dt=False).step_loss(st)
    ref, _, clipped = clipped_loss(per_batch, torch.zeros_like(per_batch), st.advantages, clip_range=1e-3)
    assert torch.allclose(batch.loss, ref) and torch.equal(batch.trust, clipped)
    with pytest.raises(Exception, match="bias must be"):
        build_method("guard", bias="step").config.validate()


def test_a_guard_run_of_older_code_resumes_with_the_per_sample_bias():
    """A cell's config written before `bias` existed upgrades to "sample", the b it used."""
    from dataclasses import asdict

    from flowarena.harness.run.config import upgrade_cell_config

    current = {"method": "guard", "method_config": asdict(build_method("guard").config)}
    settings = {k: v for k, v in current["method_config"].items() if k != "bias"}
    old = {"method": "guard", "method_config": settings}
    assert upgrade_cell_config(old, current) == current
    batch = {**current, "method_config": {**current["method_config"], "bias": "batch"}}
    assert upgrade_cell_config(old, batch) != batch  # a run of the other b is another configuration


def test_cps_uses_the_surrogate_ratio():
    """Flow-CPS's ratio is exp(−mean((x'−μ)²) + mean((x'−μ_old)²)), no 1/(2s²)."""
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    old = cps_step(x, v, 0.8, 0.7, eta=0.8, generator=g)
    new = cps_step(x, v + 0.1, 0.8, 0.7, eta=0.8, next_sample=old.next_sample)
    def sq(m):
        return ((old.next_sample - m) ** 2).mean((1, 2, 3))

    expect = sq(old.mean) - sq(new.mean)
    assert torch.allclose(new.surrogate_log_prob - old.surrogate_log_prob, expect.double(), atol=1e-6)
    A = torch.tensor([1.0, -1.0, 1.0, -1.0])
    st = StepTensors(new.surrogate_log_prob, old.surrogate_log_prob, torch.zeros(4), A, new.mean,
                     old.mean, old.std, -0.1, torch.zeros_like(x), 0)
    out = build_method("cps").step_loss(st)
    assert torch.allclose(out.ratio, expect.double().exp(), atol=1e-6)


def test_dppo_symmetric_drops_every_high_kl_step():
    ratio = torch.tensor([1.2, 0.8, 1.2, 0.8, 1.2])
    A = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0])
    kl = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    st = StepTensors(torch.log(ratio).requires_grad_(True), torch.zeros(5), kl, A, torch.zeros(5, 1),
                     torch.zeros(5, 1), torch.ones(5, 1), -0.1, torch.zeros(5, 1), 0)
    sym = build_method("dppo-sym", delta=0.5).step_loss(st)
    asym = build_method("dppo", delta=0.5).step_loss(st)
    # the asymmetric mask keeps the corrective steps 2 and 3; the symmetric one drops them
    assert (~asym.trust).tolist() == [False, False, True, True, True]
    assert (~sym.trust).tolist() == [False, False, False, False, True]
    assert torch.allclose(sym.loss, torch.tensor([0.0, 0.0, 0.0, 0.0, -1.2]))


def test_dppo_sampled_kl_masks_on_half_squared_log_ratio():
    ratio = torch.tensor([1.5, 1.01, 0.6, 0.99])
    A = torch.tensor([1.0, 1.0, -1.0, -1.0])
    st = StepTensors(torch.log(ratio), torch.zeros(4), torch.zeros(4), A, torch.zeros(4, 1),
                     torch.zeros(4, 1), torch.ones(4, 1), -0.1, torch.zeros(4, 1), 0)
    # ½(log ρ)²: 0.082, 5e-5, 0.13, 5e-5; δ = 0.01 masks the two large moving-away steps
    out = build_method("dppo-sampled-kl", delta=0.01).step_loss(st)
    assert out.trust.tolist() == [True, False, True, False]
    # the exact-KL method sees KL = 0 here and masks nothing
    assert not build_method("dppo", delta=0.01).step_loss(st).trust.any()


def test_grpo_noclip_is_the_plain_ratio_gradient():
    st, _, _ = _step(scale=10.0)
    out = build_method("grpo-noclip").step_loss(st)
    ratio = torch.exp(st.log_prob - st.old_log_prob)
    assert torch.allclose(out.loss, -st.advantages * ratio) and not out.trust.any()


@pytest.mark.parametrize("sampler", ["sde", "cps"])
def test_kl_per_unit_velocity_matches_the_steps(sampler):
    step = flow_sde_step if sampler == "sde" else cps_step
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    v = torch.randn_like(x)
    a = step(x, v, 0.9, 0.8, eta=0.7)
    b = step(x, v + 1, 0.9, 0.8, eta=0.7, next_sample=a.next_sample)
    kl = gaussian_kl(a.mean, b.mean, a.std)
    assert torch.allclose(kl, torch.full((2,), kl_per_unit_velocity(step, 0.9, 0.8, eta=0.7),
                                         dtype=torch.float64))


def test_cps_delta_carries_the_sde_threshold_on_the_toy_schedule():
    """dppo-cps's δ: the mean KL ratio (CPS / SDE) over the first-half steps is ≈ 1."""
    sig = [float(s) for s in sd3_sigmas(10, 3.0)]
    ratios = [kl_per_unit_velocity(cps_step, sig[k], sig[k + 1], eta=0.8)
              / kl_per_unit_velocity(flow_sde_step, sig[k], sig[k + 1], eta=0.7) for k in range(5)]
    mean = sum(ratios) / len(ratios)
    delta_cps = build_method("dppo-cps").config.delta
    assert abs(math.log10(delta_cps / (build_method("dppo").config.delta * mean))) < 0.3


def _dance_reference(model_output, latents, sigmas, index, eta, prev_sample):
    """XueZeyue/DanceGRPO fastvideo/train_grpo_flux.py `flux_step` (15cc71d), sde_solver and grpo."""
    sigma = sigmas[index]
    dsigma = sigmas[index + 1] - sigma
    prev_sample_mean = latents + dsigma * model_output
    pred_original_sample = latents - sigma * model_output
    delta_t = sigma - sigmas[index + 1]
    std_dev_t = eta * math.sqrt(delta_t)
    score_estimate = -(latents - pred_original_sample * (1 - sigma)) / sigma**2
    log_term = -0.5 * eta**2 * score_estimate
    prev_sample_mean = prev_sample_mean + log_term * dsigma
    log_prob = ((-((prev_sample.detach().to(torch.float32) - prev_sample_mean.to(torch.float32)) ** 2)
                 / (2 * (std_dev_t**2)))
                - math.log(std_dev_t) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return prev_sample_mean, std_dev_t, log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


@pytest.mark.parametrize("index", [0, 4, 14])
def test_dance_step_equals_the_reference(index):
    from flowarena.methods.sde import dance_step

    sig = [float(s) for s in sd3_sigmas(16)]
    g = torch.Generator().manual_seed(index)
    x, v, nxt = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    ours = dance_step(x, v, sig[index], sig[index + 1], eta=0.3, next_sample=nxt)
    mean, std, log_prob = _dance_reference(v, x, sig, index, 0.3, nxt)
    assert torch.allclose(ours.mean, mean, atol=1e-6)
    assert math.isclose(float(ours.std.flatten()[0]), std, rel_tol=1e-6)
    assert torch.allclose(ours.log_prob.float(), log_prob, rtol=1e-5)


class _ReferenceWindow:
    """Tencent-Hunyuan/MixGRPO fastvideo/utils/grpo_states.py (e5cdd6a), the progressive
    strategy with prog_overlap and roll_back, as its training loop calls it."""

    def __init__(self, iters_per_group, group_size, max_timesteps, step):
        self.iters, self.size, self.max, self.step = iters_per_group, group_size, max_timesteps, step
        self.cur, self.cur_iter = 0, 0

    def get_current_timesteps(self):
        return list(range(self.cur, min(self.cur + self.size, self.max)))

    def update_iteration(self):
        self.cur_iter += 1
        if self.cur_iter >= self.iters:
            self.cur_iter = 0
            self.cur += self.step
            if self.cur > self.max:
                self.cur = 0


@pytest.mark.parametrize("steps,size,every,stride", [(25, 4, 25, 1), (10, 3, 2, 1), (10, 2, 1, 3)])
def test_mixgrpo_slides_its_window_as_the_reference(steps, size, every, stride):
    from flowarena.methods.mixgrpo import sliding_window

    ref = _ReferenceWindow(every, size, steps - 2, stride)
    for epoch in range(every * 30):
        window = ref.get_current_timesteps()
        ref.update_iteration()
        if window:  # the reference trains an empty window once per cycle; FlowArena skips it
            assert sliding_window(epoch - _empty_before(epoch, steps, size, every, stride), steps, size,
                                  every, stride) == window


def _empty_before(epoch, steps, size, every, stride):
    """Epochs the reference spent on empty windows before `epoch` (one move per cycle at most)."""
    ref, n = _ReferenceWindow(every, size, steps - 2, stride), 0
    for _ in range(epoch):
        n += not ref.get_current_timesteps()
        ref.update_iteration()
    return n


def test_dance_trains_a_random_sixty_percent_of_the_steps_with_its_sde():
    import numpy as np

    dance = build_method("dance")
    assert (dance.config.sampler, dance.config.eta, dance.config.clip_range) == ("dance", 0.3, 1e-4)
    windows = [dance.window(np.random.default_rng(e), 16, 3, 0.5, e) for e in range(20)]
    assert all(len(w) == 9 and max(w) < 15 for w in windows) and len({tuple(w) for w in windows}) > 1


def _reference_post_schedule(sigma_schedule, determistic, ratio, shift):
    """Tencent-Hunyuan/MixGRPO fastvideo/utils/sampling_utils.py (e5cdd6a), the "post" strategy
    of MixGRPO-Flash: the schedule after the window's last step, rebuilt."""
    last_false_index = len(determistic) - 1 - next(i for i, v in enumerate(reversed(determistic)) if not v)
    num_post_steps = int(max((sigma_schedule.size(0) - 1 - last_false_index) * ratio, 1))
    post_time_step = torch.linspace(1, 0, sigma_schedule.size(0))[last_false_index + 1].item()
    post = torch.linspace(post_time_step, 0, num_post_steps)
    post = shift * post / (1 + (shift - 1) * post)  # sd3_time_shift
    return torch.cat([sigma_schedule[:last_false_index + 1], post], dim=0)


@pytest.mark.parametrize("steps,window", [(25, [0, 1, 2, 3]), (25, [9, 10, 11, 12]), (10, [3, 4, 5])])
def test_mixgrpo_flash_compresses_the_steps_after_the_window_as_the_reference(steps, window):
    from flowarena.methods.mixgrpo import compressed_tail

    sig = sd3_sigmas(steps, 3.0)
    determistic = [k not in window for k in range(steps)]
    ref = _reference_post_schedule(sig.float(), determistic, 0.4, 3.0)
    ours = compressed_tail(sig, window[-1], 0.4, 3.0)
    torch.testing.assert_close(ours.float(), ref, rtol=1e-6, atol=1e-6)
    assert len(ours) < len(sig) and ours[-1] == 0
    flash = build_method("mixgrpo", post_compress=0.4)
    assert torch.equal(flash.rollout_sigmas(sig, window, 3.0), ours)
    assert torch.equal(build_method("mixgrpo").rollout_sigmas(sig, window, 3.0), sig)  # plain MixGRPO
    from flowarena.methods.base import MethodError

    with pytest.raises(MethodError, match=r"post_compress must be a finite number in \(0, 1\]"):
        build_method("mixgrpo", post_compress=0.0)  # no step kept would never reach σ = 0


def test_mixgrpo_flash_rolls_out_fewer_steps_after_the_same_window(tiny_path):
    """The window's steps are the same as plain MixGRPO's (same start, noise, σ); after it, fewer
    ODE steps: fewer velocities counted, other final latents."""
    from flowarena.methods.trainer import TrainConfig, Trainer
    from flowarena.models.toy import load_toy
    from flowarena.rewards import build_reward
    from flowarena.tasks.prompts import load_toy_split

    out = {}
    P, G, K = 2, 2, 10
    for compress in (1.0, 0.4):
        cfg = TrainConfig(prompts_per_epoch=P, group_size=G, minibatch_size=4, steps=K, sde_window=3,
                          baseline_groups=1)
        trainer = Trainer(load_toy(tiny_path), build_method("mixgrpo", post_compress=compress),
                          build_reward("toy-colour"), load_toy_split("train"), cfg, seed=0)
        ro = trainer.rollout(0)
        out[compress] = ro, trainer.compute.epoch_metrics()
    (a, ma), (b, mb) = out[1.0], out[0.4]
    assert a.window == b.window == [0, 1, 2]
    for j in range(3):
        torch.testing.assert_close(a.x_next[j], b.x_next[j])
    assert len(b.sigmas) == 3 + int((K - 2) * 0.4)  # σ_0..σ_2, then 3 points down to 0
    assert (a.x0 - b.x0).abs().max() > 1e-4
    assert ma["nfe_forward"] == P * G * K and mb["nfe_forward"] == P * G * (len(b.sigmas) - 1)
