"""The forward-process methods (nft, awm) and the trainer's second seam: each loss against its
reference's code on fixed inputs (transcribed from the authors' repositories, read
2026-12-06), the training times each draws, and a new forward-process method as one file."""

import subprocess
import sys
import textwrap

import pytest
import torch

from flowarena.methods import build_method, method_names
from flowarena.methods.base import ForwardTensors, MethodError, permuted_times, stratified_times
from flowarena.methods.trainer import TrainConfig, Trainer
from flowarena.models.schedule import sd3_sigmas
from flowarena.models.toy import load_toy
from flowarena.rewards import build_reward
from flowarena.tasks.prompts import load_toy_split

B = 6


def _inputs(seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    x0, noise, v_old = (torch.randn(B, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    v = (v_old + scale * torch.randn(B, 3, 4, 4, generator=g, dtype=torch.float64)).requires_grad_()
    t = torch.rand(B, generator=g, dtype=torch.float64) * 0.9 + 0.05
    adv = torch.tensor([2.0, -1.0, 7.0, -6.0, 0.5, 0.0], dtype=torch.float64)
    return x0, noise, v, v_old, t, adv


def _nft_reference(forward_prediction, old_prediction, x0, xt, t_expanded, advantages, beta, adv_clip_max):
    """NVlabs/DiffusionNFT scripts/train_nft_sd3.py (24af555), the policy loss, line for line."""
    advantages_clip = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    normalized_advantages_clip = (advantages_clip / adv_clip_max) / 2.0 + 0.5
    r = torch.clamp(normalized_advantages_clip, 0, 1)
    positive_prediction = beta * forward_prediction + (1 - beta) * old_prediction.detach()
    implicit_negative_prediction = (1.0 + beta) * old_prediction.detach() - beta * forward_prediction
    x0_prediction = xt - t_expanded * positive_prediction
    with torch.no_grad():
        weight_factor = (torch.abs(x0_prediction.double() - x0.double())
                         .mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001))
    positive_loss = ((x0_prediction - x0) ** 2 / weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    negative_x0_prediction = xt - t_expanded * implicit_negative_prediction
    with torch.no_grad():
        negative_weight_factor = (torch.abs(negative_x0_prediction.double() - x0.double())
                                  .mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001))
    negative_loss = ((negative_x0_prediction - x0) ** 2 / negative_weight_factor).mean(
        dim=tuple(range(1, x0.ndim)))
    ori_policy_loss = r * positive_loss / beta + (1.0 - r) * negative_loss / beta
    return (ori_policy_loss * adv_clip_max).mean()


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_nft_loss_and_gradient_equal_the_reference(beta):
    x0, noise, v, v_old, t, adv = _inputs()
    method = build_method("nft", beta=beta)
    f = ForwardTensors(velocity=v, old_velocity=v_old, x0=x0, noise=noise, t=t, advantages=adv, rewards=adv,
                       groups=torch.arange(B) // 3)
    ours = method.forward_loss(f).loss.mean()
    (g_ours,) = torch.autograd.grad(ours, v)
    t_expanded = t.view(-1, 1, 1, 1)
    ref = _nft_reference(v, v_old, x0, (1 - t_expanded) * x0 + t_expanded * noise, t_expanded, adv, beta, 5.0)
    (g_ref,) = torch.autograd.grad(ref, v)
    assert torch.allclose(ours, ref, rtol=1e-12) and torch.allclose(g_ours, g_ref, rtol=1e-10)
    assert ours.item() > 0 and g_ours.abs().sum() > 0


def _awm_reference(noise_pred, old_noise_pred, random_noise, clean_latents, timestep, advantages, *,
                   ghuber_power=0.25, adv_clip_max=5.0, advantage_max=1.0, clip_range=1.0, ema_beta=1.0):
    """scxue/advantage_weighted_matching train_sd3_awm.py (be51372): the 'ghuber' log-prob and
    the 'exp_first' policy loss on-policy (old log-prob = the new one, detached), plus the EMA
    term with the lagging policy's prediction."""
    def log_prob_of(model_output):
        model_output = model_output.double()
        log_prob = -(model_output - (random_noise.double() - clean_latents.double())) ** 2
        log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
        return -(torch.pow(-log_prob + 1e-10, ghuber_power)
                 - torch.pow(torch.tensor(1e-10, dtype=log_prob.dtype), ghuber_power)
                 ) * timestep.view(-1) / ghuber_power
    advantages = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    advantages = advantages / adv_clip_max * advantage_max
    log_probs, old_log_probs = log_prob_of(noise_pred), log_prob_of(old_noise_pred)
    ratio = torch.exp(log_probs - old_log_probs.detach())
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    policy_loss = torch.mean(torch.maximum(unclipped_loss, clipped_loss))
    ema_kl_loss = ((noise_pred - old_noise_pred) ** 2).mean(dim=(1, 2, 3)).mean()
    return policy_loss + ema_beta * ema_kl_loss


def test_awm_loss_and_gradient_equal_the_reference_on_policy_and_off():
    x0, noise, v, v_old, t, adv = _inputs()
    method = build_method("awm")
    for old in (v.detach(), v_old):  # on policy (the reference's ρ ≡ 1), then with a lagging policy
        f = ForwardTensors(velocity=v, old_velocity=old, x0=x0, noise=noise, t=t, advantages=adv, rewards=adv,
                       groups=torch.arange(B) // 3)
        ours = method.forward_loss(f).loss.mean()
        (g_ours,) = torch.autograd.grad(ours, v)
        ref = _awm_reference(v, old, noise, x0, t, adv)
        (g_ref,) = torch.autograd.grad(ref, v)
        assert torch.allclose(ours, ref, rtol=1e-12) and torch.allclose(g_ours, g_ref, rtol=1e-10)
    assert g_ours.abs().sum() > 0


def test_training_times_as_the_references_draw_them():
    sig = sd3_sigmas(14)
    g = torch.Generator().manual_seed(0)
    t = permuted_times(g, sig, 50, 9)  # DiffusionNFT: 9 distinct schedule steps per sample
    assert t.shape == (9, 50)
    for col in t.T:
        assert len(set(col.tolist())) == 9 and all(any(torch.isclose(x, sig[:14].float())) for x in col)
    # AWM (geneval, 14 steps, fraction 0.9, 6 strata without the first step): {1},{2,3},...,{10,11}
    t = stratified_times(g, sig, 400, 6, 1, 12)
    strata = [{1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}]
    index = {round(float(s), 6): k for k, s in enumerate(sig.float())}
    for row, stratum in zip(t, strata):
        assert {index[round(float(x), 6)] for x in row} == stratum
    with pytest.raises(MethodError, match="do not fit"):
        permuted_times(g, sig, 2, 15)


def _trainer(tiny_path, method, **kw):
    cfg = TrainConfig(**{"prompts_per_epoch": 2, "group_size": 3, "minibatch_size": 6, "steps": 5,
                         "sde_window": 2, **kw})
    return Trainer(load_toy(tiny_path), build_method(method), build_reward("toy-colour"),
                   load_toy_split("train"), cfg, seed=1)


@pytest.mark.parametrize("method", ["nft", "awm"])
def test_a_forward_method_trains_on_the_clean_samples_of_an_ode_rollout(tiny_path, method):
    """The rollout stores no SDE step; the old velocities are the update's own before its first
    step, and the update moves the weights with a finite loss."""
    trainer = _trainer(tiny_path, method, beta=0.01)
    before = {k: v.clone() for k, v in trainer.model.trainable_state_dict().items()}
    metrics, samples = trainer.train_epoch(0)
    T = 4 if method == "nft" else 3  # int(5·0.99); strata of the steps [1, int(5·0.9)) = [1, 4)
    assert metrics["window"] == [] and len(samples["adv"]) == 6 * T
    # one mini-batch: the old policy is the update's, up to the rounding of another row order
    assert metrics["k0/v_change_mean"] < 1e-10
    assert all(f"k{j}/kl_ref" in metrics for j in range(T))
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    after = trainer.model.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_forward_method_refuses_a_group_sharing_its_noise(tiny_path, tmp_path):
    with pytest.raises(MethodError, match="would draw one image G times"):
        _trainer(tiny_path, "nft", group_noise="shared")
    # bench run says so before any work, and names the two ways out
    from typer.testing import CliRunner

    from flowarena.harness.cli import app

    r = CliRunner().invoke(app, ["run", "--preset", "quick", "--methods", "grpo,nft",
                                 "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "--group-noise independent, or nft@group_noise=independent" in r.output
    assert not (tmp_path / "r").exists()


def test_a_new_forward_method_is_one_file(tmp_path, tiny_path, methods_with):
    """Dropping one file into methods/ registers a forward-process method that trains: no other edit."""
    code = textwrap.dedent('''
        from dataclasses import dataclass
        import torch
        from flowarena.methods.base import (ForwardConfig, ForwardMethod, StepLoss, permuted_times,
                                            register_method)

        @dataclass
        class WeightedFMConfig(ForwardConfig):
            times: int = 2
            """Training times per sample."""

        @register_method("weighted-fm")
        class WeightedFM(ForwardMethod):
            description = "advantage-weighted flow matching, plainly"
            paper = "none"
            Config = WeightedFMConfig

            def train_times(self, gen, sigmas, batch):
                return permuted_times(gen, sigmas, batch, self.config.times)

            def forward_loss(self, f):
                fm = (f.velocity - f.target).pow(2).flatten(1).mean(1)
                return StepLoss(f.advantages * fm, None, torch.zeros_like(fm, dtype=torch.bool))
    ''')
    root = methods_with("weighted_fm.py", code)
    script = textwrap.dedent('''
        import sys
        sys.path.insert(0, sys.argv[1])
        import flowarena.methods as m
        from flowarena.methods.trainer import TrainConfig, Trainer
        from flowarena.models.toy import load_toy
        from flowarena.rewards import build_reward
        from flowarena.tasks.prompts import load_toy_split
        assert m.__file__.startswith(sys.argv[1]), m.__file__
        cfg = TrainConfig(prompts_per_epoch=2, group_size=2, minibatch_size=4, steps=4, sde_window=1)
        t = Trainer(load_toy(sys.argv[2]), m.build_method("weighted-fm"), build_reward("toy-colour"),
                    load_toy_split("train"), cfg)
        metrics, _ = t.train_epoch(0)
        print(",".join(m.method_names()), metrics["k1/v_change_mean"], metrics["loss"])
    ''')
    out = subprocess.run([sys.executable, "-c", script, str(root), tiny_path], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    names, change, loss = out.stdout.split()
    assert "weighted-fm" in names.split(",") and float(change) < 1e-10 and abs(float(loss)) > 0


def test_the_zoo_lists_the_forward_methods():
    assert {"nft", "awm", "dgpo", "mixgrpo", "dance"} <= set(method_names())
    nft, awm = build_method("nft").config, build_method("awm").config
    assert (nft.beta, nft.adv_clip_max, nft.timestep_fraction) == (1.0, 5.0, 0.99)
    assert (awm.ghuber_power, awm.train_timesteps, awm.timestep_fraction, awm.ema_beta) == (0.25, 6, 0.9, 1.0)


def _dgpo_reference(model_v, old_v, ref_old_v, target_v, advantages, group_indices, *, beta_dpo, clip_range,
                    group_size, adv_clip_max=5.0):
    """Luo-Yihong/DGPO scripts/train_sd3_dgpo.py (01ceb4b): one timestep's clip_dsm and
    `compute_group_dgpo_loss_allreduce` on one process (the all-reduce of the group sums is
    the identity there)."""
    batch_size = model_v.shape[0]
    advantages = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    dsm_loss = 1 * (target_v - model_v).square().reshape(batch_size, -1).mean(dim=1)
    old_dsm_loss = 1 * (target_v - old_v).square().reshape(batch_size, -1).mean(dim=1)
    ratio = torch.exp(-dsm_loss + old_dsm_loss)
    should_clip = torch.where(advantages > 0, ratio > 1.0 + clip_range, ratio < 1.0 - clip_range)
    dsm_loss = torch.where(should_clip, dsm_loss.detach(), dsm_loss)
    with torch.no_grad():
        ref_dsm_loss = (target_v - ref_old_v).square().reshape(batch_size, -1).mean(dim=1)
    delta_diff = dsm_loss.detach() - ref_dsm_loss.detach()
    per_sample_term = advantages * beta_dpo * delta_diff / group_size
    num_groups = int(group_indices.max()) + 1
    local_group_sums = torch.zeros(num_groups, dtype=per_sample_term.dtype)
    local_group_sums.scatter_add_(0, group_indices, per_sample_term)
    group_weights = torch.sigmoid(local_group_sums.clone().detach())
    local_weights = group_weights[group_indices]
    return (local_weights.detach() * advantages * dsm_loss).mean()


def test_dgpo_loss_and_gradient_equal_the_reference_on_policy():
    x0, noise, v, v_old, t, adv = _inputs(scale=0.3)
    ref_v = v_old + 0.2 * torch.randn_like(v_old)
    groups = torch.arange(B) // 3
    method = build_method("dgpo", beta_dpo=10.0)
    f = ForwardTensors(velocity=v.detach(), old_velocity=v.detach(), x0=x0, noise=noise, t=t, advantages=adv,
                       rewards=adv, groups=groups, ref_velocity=ref_v)
    context = method.batch_context(f)  # before the update, from the old policy (here: the same)
    assert ((context > 0) & (context < 1)).all() and len(set(context.tolist())) == 2
    f = ForwardTensors(velocity=v, old_velocity=v.detach(), x0=x0, noise=noise, t=t, advantages=adv,
                       rewards=adv, groups=groups, context=context.double())
    ours = method.forward_loss(f).loss.mean()
    (g_ours,) = torch.autograd.grad(ours, v)
    ref = _dgpo_reference(v, v.detach(), ref_v, noise - x0, adv, groups, beta_dpo=10.0, clip_range=1e-2,
                          group_size=3)
    (g_ref,) = torch.autograd.grad(ref, v)
    assert torch.allclose(ours, ref, rtol=1e-6) and torch.allclose(g_ours, g_ref, rtol=1e-6)
    # off policy, the clip removes the gradient of samples that moved past 1 ± ε in A's direction
    f.old_velocity = v_old
    out = method.forward_loss(f)
    ref = _dgpo_reference(v, v_old, ref_v, noise - x0, adv, groups, beta_dpo=10.0, clip_range=1e-2,
                          group_size=3)
    assert out.trust.any() and not out.trust.all()
    (g_ref,) = torch.autograd.grad(ref, v)
    (g_ours,) = torch.autograd.grad(out.loss.mean(), v)
    assert torch.allclose(g_ours, g_ref, rtol=1e-6)  # the group weights are the epoch's (the same here)


def test_dgpo_shares_its_times_and_a_group_its_noise(tiny_path):
    trainer = _trainer(tiny_path, "dgpo")
    ro = trainer.rollout(0)
    f = ro.forward
    assert (f.t == f.t[:, :1]).all() and len(f.t) == min(4, 5)
    assert torch.equal(f.noise[:, 0], f.noise[:, 2]) and not torch.equal(f.noise[:, 0], f.noise[:, 3])
    assert f.context is not None and ((f.context > 0) & (f.context < 1)).all()


def test_a_forward_method_resumes_to_identical_results(tiny_path, tmp_path, interrupted):
    """Its training times, noise and old velocities follow from (seed, epoch) and the weights:
    a run interrupted after its first checkpoint and resumed trains what an uninterrupted one does."""
    import json

    from flowarena.harness.run import plan, run_experiment
    from tests.test_run import PRESET

    def rows(run):
        lines = (run / "toy" / "nft" / "seed0" / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("_s") and k != "wall_seconds"}
                for line in lines]

    a, c = tmp_path / "a", tmp_path / "c"
    run_experiment(plan(a, ["nft"], "toy", PRESET, 1, tiny_path), progress=False)
    with interrupted():
        run_experiment(plan(c, ["nft"], "toy", PRESET, 1, tiny_path), progress=False)
    run_experiment(plan(c, ["nft"], "toy", PRESET, 1, tiny_path), progress=False)
    assert len(rows(a)) == PRESET.epochs and rows(a) == rows(c)
    final = [json.loads((run / "toy" / "nft" / "seed0" / "result.json").read_text())["final"]["metrics"]
             for run in (a, c)]
    assert final[0] == final[1]


def test_bench_methods_says_what_each_method_trains_on():
    from typer.testing import CliRunner

    from flowarena.harness.cli import app

    r = CliRunner().invoke(app, ["methods"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for name, kind in (("grpo", "SDE steps"), ("dance", "SDE steps"), ("mixgrpo", "SDE steps"),
                       ("nft", "forward process"), ("awm", "forward process"), ("dgpo", "forward process")):
        i = next(i for i, line in enumerate(lines) if line.split()[0] == name)
        assert lines[i + 1].strip().startswith(f"[{kind};"), lines[i + 1]
