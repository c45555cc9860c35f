"""The real recipes' models at full size on fake tensors, with the recipe's trainer: what
benchmarks/memory_plan.py traces. Nothing is allocated and nothing is downloaded."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

import torch
from torch import nn

from benchmarks.gpu_lora_step import SD35_MEDIUM

# the VAEs' configs (stabilityai/stable-diffusion-3.5-medium and black-forest-labs/FLUX.1-dev vae/config.json)
SD3_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
               norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)
FLUX1_VAE = {**SD3_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}
# FLUX.2 [klein] 9B (black-forest-labs/FLUX.2-klein-base-9B): 8 double- and 24 single-stream blocks,
# 32 heads of 128, Qwen3-8B's hidden states 9, 18 and 27 stacked (3 × 4096); 4B: 5 + 20, 24 heads, 3 × 2560
KLEIN_9B = dict(num_layers=8, num_single_layers=24, num_attention_heads=32, attention_head_dim=128,
                joint_attention_dim=12288, guidance_embeds=False)


@dataclass(frozen=True)
class Arch:
    pipeline: str
    transformer: str
    transformer_config: dict
    vae: str
    vae_config: dict
    tokens: tuple[int, int]  # text tokens and their width, as the adapter's encode_prompts gives them
    pooled: int | None  # the pooled text vector's width
    text_ids: tuple[int, ...] | None  # FLUX's position ids of the text tokens (meta, one row)
    cfg_capable: bool  # guidance > 1 is classifier-free guidance (a second, unconditional batch)


ARCHS = {
    "sd35": Arch("StableDiffusion3Pipeline", "SD3Transformer2DModel", SD35_MEDIUM, "AutoencoderKL", SD3_VAE,
                 (77 + 256, 4096), 2048, None, True),
    "flux1-dev": Arch("FluxPipeline", "FluxTransformer2DModel", dict(guidance_embeds=True), "AutoencoderKL",
                      FLUX1_VAE, (512, 4096), 768, (512, 3), False),
    "flux2-klein": Arch("Flux2KleinPipeline", "Flux2Transformer2DModel", KLEIN_9B, "AutoencoderKLFlux2", {},
                        (512, 12288), None, (1, 512, 4), True),
}


@contextmanager
def no_module_moves():
    """Modules built under FakeTensorMode cannot be `.to()`-ed (torch swaps fake parameters,
    which their weak references forbid); they are built where and as they are to stay."""
    with mock.patch.object(nn.Module, "to", lambda self, *a, **k: self):
        yield


def embeds(arch: Arch, n: int, cfg: bool):
    from flowarena.models.base import PromptEmbeds

    def one():
        d = {"tokens": torch.empty(n, *arch.tokens, dtype=torch.bfloat16)}
        if arch.pooled:
            d["pooled"] = torch.empty(n, arch.pooled, dtype=torch.bfloat16)
        return d
    meta = {"txt_ids": torch.zeros(arch.text_ids)} if arch.text_ids else {}
    return PromptEmbeds(one(), one() if cfg else None, meta)


def embeds_bytes(arch: Arch, n: int, cfg: bool) -> int:
    row = arch.tokens[0] * arch.tokens[1] + (arch.pooled or 0)
    return n * row * 2 * (2 if cfg else 1)  # bf16, as the text encoders give them on a GPU


# the transformer's blocks of each kind at full size, and how a count of each makes its config
BLOCKS = {
    "sd35": ((13, 10), lambda dual, joint: dict(num_layers=dual + joint + 1,  # + the last, context-only block
                                                dual_attention_layers=tuple(range(dual)))),
    "flux1-dev": ((19, 38), lambda double, single: dict(num_layers=double, num_single_layers=single)),
    "flux2-klein": ((8, 24), lambda double, single: dict(num_layers=double, num_single_layers=single)),
}


def build(preset, blocks: tuple[int, int] | None = None):
    """The recipe's model and trainer, on fake tensors: at full size, or with `blocks` of each
    of the transformer's two kinds of block."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from flowarena.methods import build_method
    from flowarena.methods.trainer import Trainer
    from flowarena.models import MODELS

    arch = ARCHS[preset.model]
    config = dict(arch.transformer_config)
    if blocks is not None:
        config.update(BLOCKS[preset.model][1](*blocks))
    torch.set_default_dtype(torch.bfloat16)  # the weights as `load` gives them on a GPU
    try:
        net = getattr(diffusers, arch.transformer)(**config)
        vae = getattr(diffusers, arch.vae)(**arch.vae_config)
    finally:
        torch.set_default_dtype(torch.float32)
    with unset_fake_temporarily():  # the schedulers compute real numbers (σ, shifts)
        sched = (FlowMatchEulerDiscreteScheduler(shift=3.0) if preset.model == "sd35" else
                 FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                 max_shift=1.15, base_image_seq_len=256,
                                                 max_image_seq_len=4096))
        parts = dict(transformer=net, scheduler=sched, vae=vae)
        if preset.model == "sd35":
            parts.update({k: None for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                                            "text_encoder_3", "tokenizer_3")})
        elif preset.model == "flux1-dev":
            parts.update(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
        else:
            parts.update(text_encoder=None, tokenizer=None, is_distilled=False)
        pipe = getattr(diffusers, arch.pipeline)(**parts)
        model = MODELS.get(preset.model)(pipe, "cpu", resolution=preset.resolution,
                                         compute_dtype=torch.bfloat16)
        for steps in (preset.train.steps, preset.eval.steps or model.default_steps):
            model.sigmas(steps)
    prompts = [{"prompt": f"p{i}"} for i in range(preset.train.prompts_per_epoch)]
    # the method changes the loss's few per-sample tensors, not the memory
    method = build_method("dppo" if "dppo" in preset.methods else preset.methods[0])
    return arch, model, Trainer(model, method, None, prompts, preset.train, seed=0)
