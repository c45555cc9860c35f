import json

import numpy as np
import pytest
import torch

from flowarena.models import ModelError, load_model
from flowarena.models.text import UnknownWordError
from flowarena.models.toy import ToyConfig, ToyNet, load_toy, save_toy
from flowarena.models.toy_pretrain import PretrainConfig, pretrain_toy


@pytest.fixture(scope="module")
def toy():
    return load_model("toy")


def test_shipped_weights_load_and_are_small(toy):
    from flowarena.models.toy import WEIGHTS

    assert WEIGHTS.stat().st_size < 12e6
    assert toy.latent_shape == (3, 32, 32)
    n = sum(p.numel() for p in toy.net.parameters())
    assert 3e6 < n < 6e6


def test_cfg_velocity_combines_branches(toy):
    x = torch.randn(2, 3, 32, 32)
    sigma = torch.tensor([0.7, 0.3])
    e = toy.encode_prompts(["a red circle", "two blue squares"], guidance=3.0)
    v = toy.velocity(x, sigma, e, 3.0)
    c = toy.velocity(x, sigma, type(e)(e.cond), 1.0)
    u = toy.net(x, sigma, e.uncond["tokens"], e.uncond["pooled"])
    assert torch.allclose(v, u + 3.0 * (c - u), atol=1e-5)
    assert len(e.select([1])) == 1 and len(e.repeat_interleave(3)) == 6


def test_rows_per_forward_changes_only_the_speed(tiny_path):
    """The UNet cut into pieces of rows (CPU: 32; here 4 of a CFG batch of 2 × 5 rows, so the
    last piece is short) gives the same velocity and the same LoRA gradients as one call."""
    model = load_toy(tiny_path)
    assert model.rows_per_forward == 32  # on the CPU
    params = model.setup_training(4, 8.0)
    with torch.no_grad():  # LoRA B starts at 0: make the adapter act
        for p in params:
            p.normal_(std=0.05)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = torch.linspace(0.2, 0.9, 5)
    e = model.encode_prompts(["a red circle", "two blue squares", "a green triangle", "a photo",
                              "one yellow diamond"], guidance=3.0)
    out = {}
    for rows in (None, 4):
        model.rows_per_forward = rows
        for p in params:
            p.grad = None
        v = model.velocity(x, sigma, e, 3.0)
        v.square().mean().backward()
        out[rows] = v.detach(), [p.grad.clone() for p in params]
    # float32 rounding only: oneDNN picks its convolution kernels by batch size and thread count
    # (one thread: differences of 1e-5 on values of 0.1-0.3)
    assert torch.allclose(out[None][0], out[4][0], atol=5e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(out[None][1], out[4][1]))
    assert any(g.abs().sum() > 0 for g in out[4][1])


def test_generate_is_seeded(toy):
    a = toy.generate(["a red circle"] * 2, steps=3, guidance=1.0, seed=5)
    b = toy.generate(["a red circle"] * 2, steps=3, guidance=1.0, seed=5)
    c = toy.generate(["a red circle"] * 2, steps=3, guidance=1.0, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (2, 3, 32, 32) and a.min() >= 0 and a.max() <= 1


def test_unknown_word_and_bad_checkpoints(toy, tmp_path):
    with pytest.raises(UnknownWordError, match="banana"):
        toy.encode_prompts(["a red banana"])
    with pytest.raises(ModelError, match="unknown model"):
        load_model("sd99")
    with pytest.raises(ModelError, match="not found"):
        load_toy(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError, match="corrupt"):
        load_toy(bad)


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = ToyNet(ToyConfig(channels=(8, 16, 16), text_dim=16, heads=2))
    save_toy(net, tmp_path / "t.safetensors", dtype=torch.float32)
    m = load_toy(tmp_path / "t.safetensors")
    for (k, a), (_, b) in zip(net.state_dict().items(), m.net.state_dict().items()):
        assert torch.equal(a, b), k


def test_pretraining_resumes_exactly(tmp_path):
    small = ToyConfig(channels=(8, 16, 16), text_dim=16, heads=2)
    cfg = PretrainConfig(steps=4, batch_size=4, checkpoint_every=2, warmup=2)
    full = load_toy(pretrain_toy(tmp_path / "full", cfg, small, progress=False))
    # an interrupted run: stop after 3 steps (last checkpoint at 3), then rerun the same command
    assert pretrain_toy(tmp_path / "cut", cfg, small, progress=False, stop_at=3) is None
    assert json.loads((tmp_path / "cut" / "state.json").read_text())["step"] == 3
    resumed = load_toy(pretrain_toy(tmp_path / "cut", cfg, small, progress=False))
    for (k, a), (_, b) in zip(full.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="another config"):
        pretrain_toy(tmp_path / "cut", PretrainConfig(**{**cfg.__dict__, "lr": 1.0}), small,
                     progress=False)


def test_shipped_model_draws_single_objects_well(toy):
    """A guard against shipping a broken model: single coloured objects on eval prompts."""
    from flowarena.harness.benchmarks.toy import soft_tifa_eval

    r = soft_tifa_eval(toy, "eval", steps=10, seed=0, limit=32)
    assert r.per_skill["object"] > 60 and r.per_skill["attribute"] > 60
    assert np.isfinite(r.gm)


def test_default_pretraining_recipe_is_deterministic_across_processes(tmp_path):
    """`bench pretrain toy` with the shipped recipe: two fresh processes, same seed, the
    same weights bit for bit (two steps of the real config)."""
    import subprocess
    import sys

    code = ("import sys; from flowarena.models.toy_pretrain import PretrainConfig, pretrain_toy; "
            "pretrain_toy(sys.argv[1], PretrainConfig(), progress=False, stop_at=2)")
    for name in ("a", "b"):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    from flowarena.core.io import load_tensors

    a = load_tensors(tmp_path / "a" / "state.safetensors")
    b = load_tensors(tmp_path / "b" / "state.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
