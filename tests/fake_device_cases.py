"""Device placement without a GPU: one epoch of the real trainer on the tiny diffusers pipelines
with every model computation on a stand-in accelerator (tests/fake_device.py: `fakegpu:0`,
CUDA's placement rules, host values). A tensor left on the CPU, or a CPU-only call, on the
GPU path fails here as it would on a card: the rollout, the decode's hand-off to the reward,
the reward on the device, the update's micro-batches with backward, the reference forward
(β > 0), the ratio's floor and rounding measurements, and the evaluation (sampling, PickScore,
the KL to the pretrained model). The second test shows a misplaced tensor is caught.

Run by tests/test_fake_device.py in a fresh process: the stand-in's backend registration is
permanent, and autograd sizes its device queues at a process's first backward, so a backward
on the stand-in fails (an internal assert) in a process that ran one before registering it."""

from __future__ import annotations

import math

import pytest
import torch

from tests.fake_device import DeviceTensor, OnDevice, PlacementError, device
from tests.tiny_pipelines import BUILDERS, RESOLUTION

pytestmark = pytest.mark.usefixtures("offline_single_thread")

PROMPTS = [{"prompt": p} for p in ("a red cat", "two dogs", "a blue car left of a bus", "three apples")]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from tests.tiny_scorers import save_clip

    return str(save_clip(tmp_path_factory.mktemp("clip")))


class HandOff:
    """The tiny PickScore on the device, recording what the trainer hands it: the decoded images
    as the reward contract has them (float [B, 3, H, W] in [0, 1], in host memory, where every
    real reward reads them: PIL, a served judge)."""

    def __init__(self, clip_dir: str):
        from flowarena.rewards.pickscore import PickScoreReward

        self.inner, self.seen = PickScoreReward(pickscore=clip_dir, device=str(device())), []
        assert {p.device for p in self.inner.clip.model.parameters()} == {device()}

    def __call__(self, images, prompts, metadata):
        self.seen.append((images.device, images.dtype, tuple(images.shape), float(images.min()),
                          float(images.max())))
        return self.inner(images, prompts, metadata)


def _epoch(name: str, clip_dir: str):
    """One epoch and one evaluation of `name`'s tiny pipeline on the stand-in device; what the
    test checks. Two mini-batches (the second off-policy: the rounding in a change), micro-batches
    of 1, rollout batches of 2, β > 0, offloaded text encoders; CFG on SD3.5 (the unconditional
    batch), shared group noise on FLUX.1 (one velocity per group). Not gradient checkpointing: its
    recomputation in the backward aborts the process on the stand-in (a C++ terminate in the
    autograd engine); tests/test_memory.py checks its gradients on the CPU."""
    from flowarena.harness.run import EvalSettings, Evaluation
    from flowarena.methods import build_method
    from flowarena.methods.trainer import TrainConfig, Trainer
    from flowarena.models import MODELS

    dev = device()
    pipe = BUILDERS[name]()
    cfg = TrainConfig(prompts_per_epoch=2, group_size=2, steps=4, sde_window=2, minibatch_size=2,
                      micro_batch=1, rollout_batch=2, beta=0.04, offload_text_encoders=True,
                      lora_rank=4, lora_alpha=8.0, guidance={"sd35": 4.5, "flux1-dev": 3.5}.get(name, 1.0),
                      group_noise="shared" if name == "flux1-dev" else "independent")
    with OnDevice() as mode:
        model = MODELS.get(name)(pipe, dev, resolution=RESOLUTION)
        reward = HandOff(clip_dir)
        trainer = Trainer(model, build_method("dppo"), reward, PROMPTS, cfg, seed=0)
        before = [p.detach().clone() for p in trainer.params]
        metrics, _ = trainer.train_epoch(0)
        settings = EvalSettings(benchmarks=("pickscore",), every=1, ood_limit=2, steps=2, kl_prompts=2,
                                samples=2, guidance=cfg.guidance)
        record = Evaluation(settings, str(dev), {"pickscore": clip_dir})(model, trainer.method, cfg)
        moved = max(float((p.detach() - b).abs().max().cpu()) for p, b in zip(trainer.params, before))
    return model, trainer, reward, metrics, record, mode, moved


@pytest.mark.parametrize("name", ["sd35", "flux1-dev", "flux2-klein"])
def test_an_epoch_and_an_evaluation_run_on_the_device(name, clip_dir):
    model, trainer, reward, metrics, record, mode, moved = _epoch(name, clip_dir)
    dev = device()
    net = model.get_denoiser()
    assert {p.device for p in net.parameters()} == {dev} and model.device == dev
    assert all(isinstance(p, DeviceTensor) and p.grad is not None and p.grad.device == dev
               for p in trainer.params)
    assert {p.device.type for m in model.text_encoders() for p in m.parameters()} == {"cpu"}  # offloaded
    assert mode.ops > 1000  # the work ran on the device, not beside it
    # the decode's hand-off: the rollout's 4 images (decoded 2 at a time), as the reward contract has them
    # (then the baseline's replay of the rollout's first groups with the pretrained model)
    (where, dtype, shape, lo, hi), *replays = reward.seen
    assert all(r[:2] == (where, dtype) for r in replays)
    assert (where, dtype, shape) == (torch.device("cpu"), torch.float32, (4, 3, RESOLUTION, RESOLUTION))
    assert 0 <= lo < hi <= 1
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0 and metrics["skipped_updates"] == 0
    assert any(k.endswith("/kl_ref") for k in metrics)  # the reference forward ran (β > 0)
    assert "rounding_kl_mean" in metrics and "floor_kl_mean" in metrics
    assert moved > 0  # AdamW stepped the LoRA weights on the device
    kl = record.kl_to_pretrained
    assert kl["n"] == 2 and kl["mean"] > 0  # the trained policy differs from the reference
    assert all(math.isfinite(m.value) for m in record.metrics) and record.metrics  # PickScore, on the device


@pytest.mark.parametrize("fault", ["embeddings left in host memory", "a CPU-only call in the decode"])
def test_a_misplaced_tensor_fails_the_epoch(fault, clip_dir, monkeypatch):
    """The same epoch with one fault injected fails at the op that mixes devices, as CUDA would."""
    from flowarena.models.base import PromptEmbeds
    from flowarena.models.diffusers_flow import DiffusersFlowModel

    if fault == "embeddings left in host memory":  # `embed` forgets to move the cached rows
        to = PromptEmbeds.to
        monkeypatch.setattr(PromptEmbeds, "to", lambda self, device, copy=False: to(self, "cpu", copy))
        match = "Expected all tensors to be on the same device"
    else:  # a post-processing step that reaches for numpy on the device's latents
        decode = DiffusersFlowModel.decode
        monkeypatch.setattr(DiffusersFlowModel, "decode",
                            lambda self, x: decode(self, torch.from_numpy(x.numpy())))
        match = "can't convert fakegpu:0 device type tensor to numpy"
    with pytest.raises((PlacementError, TypeError), match=match):
        _epoch("sd35", clip_dir)


def test_the_stand_in_applies_cuda_placement_rules():
    dev = device()
    with OnDevice():
        x, cpu = torch.randn(4, 3).to(dev), torch.randn(4, 3)
        with pytest.raises(PlacementError, match="same device"):
            x + cpu
        with pytest.raises(PlacementError, match="same device"):
            torch.cat([x, cpu])
        assert (x * torch.tensor(2.0)).device == dev  # a 0-dim CPU tensor is a scalar, as on CUDA
        assert x[torch.tensor([0, 2])].shape == (2, 3)  # CPU indices, as on CUDA
        assert torch.full((2,), 0.5, device=dev).device == dev
        assert torch.as_tensor(0.5, device=dev).device == dev
        assert x.cpu().device.type == "cpu" and type(x.cpu()) is torch.Tensor
        with pytest.raises(PlacementError, match="generator"):
            torch.randn(3, generator=torch.Generator().manual_seed(0), device=dev)
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        w = torch.nn.Linear(3, 2).to(dev)
        w(x).sum().backward()
        assert w.weight.grad.device == dev
        torch.testing.assert_close(w.weight.grad.cpu(), x.cpu().sum(0).expand(2, 3))
