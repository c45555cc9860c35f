"""The adapters' LoRA as the peers set it, counted on the full architectures built on the meta
device (no weights): SD3.5-medium 191 projections as flow_grpo, UniRL and Flow-Factory adapt,
FLUX.1-dev 342 as flow_grpo's train_flux.py, FLUX.2-klein-9B 120 as Flow-Factory's list;
Gaussian initialisation for the diffusers adapters, peft's default for the toy model."""

from __future__ import annotations

import pytest
import torch

from benchmarks.memory_plan import ARCHS
from flowarena.models.diffusers_flow import Flux2KleinModel, FluxModel, SD3Model
from flowarena.models.toy import ToyModel

# the full-size architectures the memory plan traces (one place for their configs)
SD35_MEDIUM, FLUX1_DEV, KLEIN_9B = (ARCHS[m].transformer_config for m in ("sd35", "flux1-dev", "flux2-klein"))

# flow_grpo scripts/train_sd3.py (yifan123/flow_grpo@9745241, lines 419-428), the same list in
# UniRL examples/diffusion/sd3_flowdppo.yaml (lines 81-89) and Flow-Factory's sd3_5.py
PEER_SD3 = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
            "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v"]
# flow_grpo scripts/train_flux.py (lines 411-424); Flow-Factory's flux1.py has the same
PEER_FLUX1 = PEER_SD3 + ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
# Flow-Factory src/flow_factory/models/flux/flux2_klein.py (default_target_modules)
PEER_KLEIN = PEER_SD3 + ["ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out",
                         "attn.to_qkv_mlp_proj", "attn.to_out.0"]


def _adapted(transformer_class: str, config: dict, lora_config) -> list[str]:
    import diffusers

    with torch.device("meta"):
        net = getattr(diffusers, transformer_class)(**config)
    net.add_adapter(lora_config)
    return [n for n, m in net.named_modules() if hasattr(m, "lora_A")]


def _peer_config(targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=32, lora_alpha=64, init_lora_weights="gaussian", target_modules=targets)


def test_sd35_medium_adapts_the_peers_191_projections():
    ours = _adapted("SD3Transformer2DModel", SD35_MEDIUM, SD3Model.lora_config())
    assert len(ours) == 191 == 24 * 8 - 1  # the last block is context-pre-only: no to_add_out
    assert sorted(ours) == sorted(_adapted("SD3Transformer2DModel", SD35_MEDIUM, _peer_config(PEER_SD3)))
    assert not any(".attn2." in n for n in ours)
    # bare suffixes (verl-omni's run_sd35_medium_ocr_lora.sh) also take attn2 in blocks 0-12
    bare = [t.removeprefix("attn.") for t in PEER_SD3]
    assert len(_adapted("SD3Transformer2DModel", SD35_MEDIUM, _peer_config(bare))) == 191 + 13 * 4


def test_flux1_dev_adapts_flow_grpos_342_projections():
    ours = _adapted("FluxTransformer2DModel", FLUX1_DEV, FluxModel.lora_config())
    assert len(ours) == 342 == 19 * 12 + 38 * 3  # single blocks: attn.to_q / to_k / to_v
    assert sorted(ours) == sorted(_adapted("FluxTransformer2DModel", FLUX1_DEV, _peer_config(PEER_FLUX1)))


def test_flux2_klein_adapts_flow_factorys_120_projections():
    ours = _adapted("Flux2Transformer2DModel", KLEIN_9B, Flux2KleinModel.lora_config())
    assert len(ours) == 120 == 8 * 12 + 24  # single blocks: the fused to_qkv_mlp_proj only
    assert sorted(ours) == sorted(_adapted("Flux2Transformer2DModel", KLEIN_9B, _peer_config(PEER_KLEIN)))
    assert not any(n.startswith("single_transformer_blocks.") and n.endswith("attn.to_out") for n in ours)


@pytest.mark.parametrize("cls, rank", [(SD3Model, 32), (FluxModel, 64), (Flux2KleinModel, 64)])
def test_diffusers_adapters_initialise_lora_as_the_peers(cls, rank):
    """flow_grpo and Flow-Factory: LoraConfig(init_lora_weights="gaussian"), α = 2r."""
    c = cls.lora_config()
    assert (c.r, c.lora_alpha, c.init_lora_weights) == (rank, 2 * rank, "gaussian")
    assert sorted(c.target_modules) == sorted(cls.lora_targets)


def test_toy_model_keeps_peft_default_initialisation():
    assert ToyModel.lora_config().init_lora_weights is True
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64))
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=8, init_lora_weights="gaussian", target_modules=["0"]), net)
    a = net[0].lora_A["default"].weight
    assert abs(a.std().item() - 1 / 8) < 0.02  # the Gaussian init: A ~ N(0, std 1/r)
    assert torch.count_nonzero(net[0].lora_B["default"].weight) == 0
