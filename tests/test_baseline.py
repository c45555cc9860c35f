"""What a user watches says whether the policy learns: the training reward against the
pretrained model's on the same rollouts (methods/diagnostics.reward_vs_base), and the terminal
table's verdict against the base model (reports/summary.base_verdict)."""

import numpy as np
import torch

from flowarena.methods import build_method
from flowarena.methods.trainer import TrainConfig, Trainer
from flowarena.models.toy import load_toy
from flowarena.reports.summary import base_verdict
from flowarena.reports.tables import Comparison
from flowarena.rewards import build_reward
from flowarena.tasks.prompts import load_toy_split


def test_the_curve_rises_when_the_policy_learns(offline_single_thread):
    """The shipped toy model on the easy colour reward (the `sanity` preset's) at a high learning
    rate: the policy's reward on its rollouts pulls away from the pretrained model's on the very
    same prompts and noise, while the raw batch mean also carries the epochs' prompt mix."""
    cfg = TrainConfig(prompts_per_epoch=2, group_size=4, minibatch_size=8, steps=6, sde_window=2, lr=3e-3,
                      baseline_groups=2)
    trainer = Trainer(load_toy(), build_method("grpo"), build_reward("toy-colour"), load_toy_split("train"),
                      cfg, seed=0)
    rows = [trainer.train_epoch(e)[0] for e in range(8)]
    gain = np.array([r["reward_vs_base"] for r in rows])
    se = np.array([r["reward_vs_base_se"] for r in rows])
    assert gain[0] == 0 and se[0] == 0  # epoch 0's rollout is the pretrained policy's
    late = slice(5, 8)
    assert gain[late].mean() > 2 * np.sqrt((se[late] ** 2).sum()) / 3  # resolved above the base model
    assert gain[late].mean() > gain[1:3].mean()  # and rising
    assert all(0 <= r["reward_base"] <= 1 for r in rows)


def test_the_baseline_is_the_pretrained_models_reward_on_the_same_rollout(tiny_path):
    """reward_vs_base recomputed by hand: the rollout's rewards minus the pretrained model's on
    the same initial and SDE noise (the adapter off)."""
    cfg = TrainConfig(prompts_per_epoch=2, group_size=2, minibatch_size=4, steps=4, sde_window=2,
                      baseline_groups=1)
    trainer = Trainer(load_toy(tiny_path), build_method("grpo"), build_reward("toy-colour"),
                      load_toy_split("train"), cfg, seed=3)
    with torch.no_grad():  # a policy away from the pretrained one
        for p in trainer.params:
            p.add_(0.05 * torch.randn_like(p))
    ro = trainer.rollout(1)
    from flowarena.methods.diagnostics import reward_vs_base

    out = reward_vs_base(trainer, ro, 1)
    d = trainer.draws(1)
    with trainer.model.reference():
        _, _, images = trainer.trajectories(d["x_init"][:2], ro.embeds.select(torch.tensor([0, 0])),
                                          [z[:2] for z in d["noises"]], d["window"], ro.sigmas)
    records = d["records"][:2]
    base = trainer.reward(images, [r["prompt"] for r in records], records).scores
    assert np.isclose(out["reward_vs_base"], (ro.rewards[:2] - base).mean().item(), atol=1e-6)
    assert out["reward_vs_base"] != 0


def _comparison(records):
    from flowarena.core.results import Metric

    head = Metric("gm", "Soft-TIFA GM", 0.5, 0.02, 48, role="primary", paired=True)
    return Comparison(records=records, columns=[], best={}, metrics=[head]), head


def test_the_verdict_says_when_a_difference_to_the_base_model_is_not_resolved():
    base = {"model": "toy", "method": "base (pretrained)", "seeds": 1}
    low = {"model": "toy", "method": "grpo", "seeds": 1, "delta_gm": -4.5, "delta_gm_stderr": 2.1}
    c, head = _comparison([base, low])
    line = base_verdict(c, head)  # one seed, however far: no verdict
    assert "grpo -4.5 ± 2.1" in line and "One seed × 48 prompts is one draw of training" in line
    assert "--seeds 3" in line
    assert "resolved" not in line
    high = {"model": "toy", "method": "dppo", "seeds": 3, "delta_gm": 5.4, "delta_gm_stderr": 1.0}
    c, head = _comparison([base, {**low, "seeds": 3}, high])
    line = base_verdict(c, head)
    assert "dppo +5.4 ± 1.0 (resolved)" in line and "grpo -4.5 ± 2.1 (resolved)" not in line
    # over seeds the interval is Student's: 3 seeds, t(2) = 4.30, so 2.5 stderr is not enough
    c, head = _comparison([base, {**high, "delta_gm": 5.0, "delta_gm_stderr": 2.0}])
    assert "Not resolved at 95 % (3 seeds × 48 prompts)" in base_verdict(c, head)
