import subprocess
import sys
import textwrap

import pytest
import torch

from flowarena.methods import MethodError, build_method, get_method, method_names
from flowarena.methods.advantages import group_advantages
from flowarena.methods.dppo import dppo_loss
from flowarena.methods.grpo import clipped_loss
from flowarena.methods.trainer import TrainConfig, TrainConfigError


def test_registry_lists_grpo_and_dppo_with_descriptions():
    assert {"grpo", "dppo"} <= set(method_names())
    for name in method_names():
        cls = get_method(name)
        assert cls.description and cls.paper
    with pytest.raises(MethodError, match="unknown method"):
        get_method("ppo-9000")
    with pytest.raises(MethodError, match="no setting"):
        build_method("grpo", delta=1.0)
    with pytest.raises(MethodError, match="delta"):
        build_method("dppo", delta=-1.0)
    with pytest.raises(MethodError, match="clip_range must be a number >= 0"):
        build_method("grpo", clip_range=-1.0)


def test_clipped_loss_hand_built():
    eps = 0.1
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.5, 1.05, 0.5]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, ratio, clipped = clipped_loss(new, old, adv, clip_range=eps)
    # A>0, ρ=1.5: max(-1.5, -1.1) = -1.1 (clipped); A>0, ρ=0.5: max(-0.5, -0.9) = -0.5
    # A<0, ρ=1.05: max(1.05, 1.05) = 1.05; A<0, ρ=0.5: max(0.5, 0.9) = 0.9 (clipped)
    assert torch.allclose(loss, torch.tensor([-1.1, -0.5, 1.05, 0.9]))
    assert clipped.tolist() == [True, False, False, True]
    new.requires_grad_(True)
    loss, _, _ = clipped_loss(new, old, adv, clip_range=eps)
    loss.sum().backward()
    # clipped samples carry no gradient
    assert new.grad[0] == 0 and new.grad[3] == 0 and new.grad[1] != 0 and new.grad[2] != 0


def test_dppo_mask_hand_built():
    old = torch.zeros(6)
    ratio = torch.tensor([1.2, 0.8, 1.2, 0.8, 1.2, 0.8])
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    kl = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # last two below δ
    new = torch.log(ratio).requires_grad_(True)
    loss, keep = dppo_loss(new, old, kl, adv, delta=0.5)
    # high KL and moving away (ρ>1,A>0 / ρ<1,A<0): masked; moving back: kept; low KL: kept
    assert keep.tolist() == [False, False, True, True, True, True]
    assert torch.allclose(loss, torch.tensor([0.0, 0.0, 1.2, -0.8, -1.2, 0.8]))
    loss.sum().backward()
    assert new.grad[0] == 0 and new.grad[1] == 0 and new.grad[2] != 0


def test_dppo_never_gives_nan_on_overflowing_ratio():
    new = torch.tensor([1000.0, -1000.0], requires_grad=True)
    loss, keep = dppo_loss(new, torch.zeros(2), torch.ones(2), torch.tensor([1.0, -1.0]), delta=0.1)
    assert not keep.any() and torch.equal(loss, torch.zeros(2))
    loss.sum().backward()
    assert torch.isfinite(new.grad).all()


def test_group_advantages():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    adv, flat = group_advantages(r, 4, std="group")
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.allclose(adv[:4], (g - 2.5) / (g.std() + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4)) and flat.tolist() == [False, True]
    adv_g, _ = group_advantages(r, 4, std="global")
    assert torch.allclose(adv_g[:4], (g - 2.5) / (r.std() + 1e-4))
    big = torch.tensor([0.0, 0.0, 0.0, 100.0])
    assert group_advantages(big, 4, std="global", clip=1.0)[0].abs().max() <= 1.0


@pytest.mark.parametrize("kw,msg", [
    ({"group_size": 1}, "train.group_size must be an integer >= 2, not 1"),
    ({"sde_window": 12}, "SDE window"), ({"sde_window": 6}, "does not fit"), ({"beta": -1.0}, "beta"),
    ({"lr": 0.0}, "train.lr must be a finite number > 0"),
])
def test_impossible_settings(kw, msg):
    with pytest.raises(TrainConfigError, match=msg):
        TrainConfig(**kw).validate()


def test_a_new_method_is_one_file(tmp_path, methods_with):
    """Dropping one file into methods/ registers a method: no other edit."""
    code = textwrap.dedent('''
        from dataclasses import dataclass
        from flowarena.methods.base import Method, MethodConfig, StepLoss, register_method

        @dataclass
        class ProbeConfig(MethodConfig):
            scale: float = 2.0
            """A documented setting."""

        @register_method("probe")
        class Probe(Method):
            description = "a probe"
            paper = "none"
            Config = ProbeConfig

            def step_loss(self, s):
                ratio = (s.log_prob - s.old_log_prob).exp()
                return StepLoss(-self.config.scale * s.advantages * ratio, ratio.detach(),
                                ratio < 0)
    ''')
    # the project with a copy of methods/ plus the one new file, imported in a fresh interpreter
    root = methods_with("probe.py", code)
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import flowarena.methods as m; "
         "assert m.__file__.startswith(sys.argv[1]), m.__file__; "
         "print(','.join(m.method_names())); print(m.build_method('probe').config.scale)",
         str(root)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    names, scale = out.stdout.split()
    assert "probe" in names.split(",") and float(scale) == 2.0
