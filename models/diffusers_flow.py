"""Real text-to-image flow models through diffusers pipelines: SD3.5, FLUX.1-dev, FLUX.2-klein.

One adapter class per pipeline family, all behind `models.base.FlowModel`. The pipeline
is loaded whole (`from_pretrained`, a hub id or a local directory) and its own pieces
are reused: `encode_prompt` for the text encoders, the transformer as the denoiser,
the scheduler for the σ schedule, the VAE for decoding. Conventions, checked against
the pipelines by tests/test_real_models.py:

- latents: `x_σ = (1 − σ)·x0 + σ·ε`; the transformer output is the velocity `ε − x0`
  as it is (diffusers' Euler step is `x + (σ_next − σ)·v`, the same as `models.schedule.ode_step`).
- timesteps: what each pipeline passes, `σ·1000` for SD3, `(σ·1000)/1000` for FLUX
  (whose transformers multiply by 1000 again).
- `sigmas(steps)`: the pipeline's scheduler, set up with the same arguments the
  pipeline gives it (static shift, or FLUX's resolution-dependent `mu`), so sampling
  with `FlowModel.generate` reproduces the pipeline's own output.
- latent layout: FLUX transformers read packed token sequences; the adapters keep the
  spatial layout the pipeline draws its noise in and pack inside `velocity` (a
  permutation, so per-element log-probs and KLs are unchanged).
- precision: bf16 weights and autocast on CUDA, fp32 on the CPU; the velocity comes
  back in fp32 so the step math is fp32. LoRA weights are kept in fp32. fp32 weights on
  CUDA (`dtype="float32"`, for fp32 trained steps) still compute in bf16 unless inside
  `precision(torch.float32)`.

Loading the pipeline and the LoRA files in diffusers' format: `models.diffusers_io`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from flowarena.models.base import FlowModel, ModelError, PromptEmbeds, register_model
from flowarena.models.diffusers_io import DiffusersFiles, as_dtype

# The joint attention's projections as flow_grpo (scripts/train_sd3.py, train_flux.py), UniRL
# (examples/diffusion/sd3_flowdppo.yaml) and Flow-Factory (models/*) name them: peft matches a
# target as a dotted suffix, so a bare "to_q" would also take SD3.5-M's second, image-only
# attention (`attn2`, blocks 0–12): 243 adapted projections where the peers adapt 191.
ATTN_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


class DiffusersFlowModel(DiffusersFiles, FlowModel):
    """A diffusers flow-matching pipeline as a policy; subclasses fill in one family's details."""

    pipeline_class: str = ""  # class name in `diffusers`
    default_path: str = ""  # hub id used when no path is given
    default_lora_rank: int = 32
    lora_init = "gaussian"  # A ~ N(0, std 1/r), B = 0: flow_grpo's and Flow-Factory's LoraConfig
    max_sequence_length: int = 512  # text tokens; the pipeline's default
    decode_batch: int = 8  # latents per VAE call: 64 at 512² would take ≈ 24 GB (benchmarks/memory_plan.py)

    def __init__(self, pipe, device: str | torch.device = "cpu", *, resolution: int | None = None,
                 shift: float | None = None, max_sequence_length: int | None = None,
                 max_batch: int | None = None, gradient_checkpointing: bool = False,
                 compute_dtype: torch.dtype | str | None = None):
        """`pipe` in the dtype it was loaded in (`load` picks bf16 on CUDA, fp32 elsewhere).
        `resolution`: image side in pixels (default: the pipeline's). `shift`: overrides the
        scheduler's shift (for FLUX's dynamic shifting, `mu = log(shift)`). `max_sequence_length`:
        text tokens (default: the pipeline's). `max_batch`: largest batch one transformer or VAE
        call sees when no gradient is taken (rollouts, sampling). `compute_dtype`: what the
        transformer computes in (default: its weights' dtype; bf16 weights compute under autocast)."""
        self.device = torch.device(device)
        self.pipe = pipe.to(self.device)
        self.dtype = self.pipe.transformer.dtype
        self.compute_dtype = as_dtype(compute_dtype) or self.dtype
        self.pipe.set_progress_bar_config(disable=True)
        for module in self.pipe.components.values():
            if isinstance(module, nn.Module):
                module.eval().requires_grad_(False)  # text encoders and VAE stay frozen
        self.resolution = resolution or self.pipe.default_sample_size * self.pipe.vae_scale_factor
        step = 2 * self.pipe.vae_scale_factor  # one latent 2x2 patch, in pixels, in all three families
        if self.resolution < step or self.resolution % step:
            raise ModelError(f"{self.name}: resolution {self.resolution} must be a positive multiple "
                             f"of {step} pixels")
        self.max_sequence_length = max_sequence_length or self.max_sequence_length
        self.max_batch = max_batch
        self.gradient_checkpointing = gradient_checkpointing
        self._shift_override = shift
        self._sigmas: dict[int, Tensor] = {}
        self._img_ids: dict[tuple, Tensor] = {}  # latent position ids per shape (FLUX)
        self._init_schedule_info()

    # --- schedule -----------------------------------------------------------------------
    def _scheduler_kwargs(self, steps: int) -> dict:
        """What the pipeline passes to `scheduler.set_timesteps` besides the step count."""
        return {}

    def _scheduler(self):
        cfg = self.pipe.scheduler.config
        cls = type(self.pipe.scheduler)
        if self._shift_override is not None and not cfg.get("use_dynamic_shifting"):
            return cls.from_config(cfg, shift=self._shift_override)
        return cls.from_config(cfg)

    def sigmas(self, steps: int) -> Tensor:
        """The pipeline scheduler's σ_0 … σ_K = 0 (float32 values, as float64)."""
        if steps < 1:
            raise ValueError("steps must be at least 1")
        if steps not in self._sigmas:
            kwargs = self._scheduler_kwargs(steps)
            if self._shift_override is not None and "mu" in kwargs:
                # exp(mu)/(exp(mu) + 1/σ − 1) is the static shift s·σ/(1 + (s − 1)·σ) with s = exp(mu)
                kwargs["mu"] = math.log(self._shift_override)
            sched = self._scheduler()
            sched.set_timesteps(steps, **kwargs)
            self._sigmas[steps] = sched.sigmas.double().cpu()
        return self._sigmas[steps]

    def _init_schedule_info(self) -> None:
        """`shift` / `sigma_min` for display; `sigmas()` is what samplers use."""
        mu = self._scheduler_kwargs(self.default_steps).get("mu")
        if self._shift_override is not None:
            self.shift = self._shift_override
        elif mu is not None:
            self.shift = math.exp(mu)
        else:
            self.shift = float(self.pipe.scheduler.config.shift)
        self.sigma_min = None if mu is not None else float(self._scheduler().sigma_min)

    # --- the policy ---------------------------------------------------------------------
    def _position_ids(self, x: Tensor, make) -> Tensor:
        """The latents' position ids depend only on their shape: built once, not at every step."""
        key = (tuple(x.shape[1:]), x.device, x.dtype)
        if key not in self._img_ids:
            self._img_ids[key] = make()
        return self._img_ids[key]

    def _forward(self, x: Tensor, t: Tensor, cond: dict[str, Tensor], meta: dict, guidance: float) -> Tensor:
        """The transformer's velocity for latents `x` at pipeline timesteps `t` = σ·1000."""
        raise NotImplementedError

    def velocity(self, x: Tensor, sigma: Tensor, embeds: PromptEmbeds, guidance: float = 1.0) -> Tensor:
        m = self.max_batch
        if m and len(x) > m and not torch.is_grad_enabled():
            return torch.cat([self.velocity(x[i:i + m], sigma[i:i + m], embeds.select(slice(i, i + m)),
                                            guidance) for i in range(0, len(x), m)])
        t = sigma.to(self.device, torch.float32) * 1000  # the pipelines' timesteps, in float32 as theirs
        with self._autocast():
            if guidance <= 1.0 or embeds.uncond is None:
                return self._forward(x, t, embeds.cond, embeds.meta, guidance).float()
            # one batch [uncond, cond], as the SD3 pipeline does
            both = {k: torch.cat([embeds.uncond[k], v]) for k, v in embeds.cond.items()}
            v_u, v_c = self._forward(torch.cat([x, x]), torch.cat([t, t]), both, embeds.meta,
                                     guidance).float().chunk(2)
        return v_u + guidance * (v_c - v_u)

    def _decode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """VAE decode -> images [B, 3, H, W] in [0, 1] (fp32), as the pipeline's `output_type="pt"`."""
        m = min(self.max_batch or len(x), self.decode_batch)
        out = []
        for i in range(0, len(x), m):
            with self._autocast():
                img = self._decode(x[i:i + m].to(self.device, self.dtype))
            out.append((img.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    def _vae_decode(self, latents: Tensor) -> Tensor:
        vae = self.pipe.vae
        latents = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        return vae.decode(latents, return_dict=False)[0]

    # --- training -----------------------------------------------------------------------
    def get_denoiser(self) -> nn.Module:
        return self.pipe.transformer

    @property
    def weights_dtype(self) -> torch.dtype:
        return self.dtype

    def text_encoders(self) -> list[nn.Module]:
        return [m for name, m in self.pipe.components.items()
                if name.startswith("text_encoder") and isinstance(m, nn.Module)]

    def set_denoiser(self, module: nn.Module) -> None:
        self.pipe.transformer = module

    def setup_training(self, lora_rank: int | None = None, lora_alpha: float | None = None,
                       targets: tuple[str, ...] | None = None) -> list[nn.Parameter]:
        params = super().setup_training(lora_rank, lora_alpha, targets)
        if self.lora_rank > 0:
            for p in params:  # fp32 adapter weights: bf16 would round away AdamW's small updates
                p.data = p.data.float()
        if self.gradient_checkpointing:
            self.get_denoiser().enable_gradient_checkpointing()
        return params


@register_model("sd35")
class SD3Model(DiffusersFlowModel):
    """Stable Diffusion 3 / 3.5 (medium, large): MMDiT, CLIP-L + CLIP-G + T5-XXL, 16-channel VAE."""

    description = "Stable Diffusion 3.5 (medium / large) through diffusers; hub id or local directory"
    pipeline_class = "StableDiffusion3Pipeline"
    default_path = "stabilityai/stable-diffusion-3.5-medium"
    default_steps = 40  # docs/methods.md §9: evaluation at 40 steps, CFG 4.5
    default_guidance = 4.5
    default_lora_rank = 32
    default_preset = "sd35-geneval2"  # the published recipe (harness/run/presets/)
    # T5 tokens, as UniRL's SD3 text encoder (the Flow-DPPO authors' code) and verl-omni's SD3.5
    # runs; flow_grpo uses 128, Flow-Factory 512 (docs/recipes.md)
    max_sequence_length = 256
    lora_targets = ATTN_TARGETS  # 191 projections on SD3.5-medium

    def _scheduler_kwargs(self, steps: int) -> dict:
        if not self.pipe.scheduler.config.get("use_dynamic_shifting"):
            return {}
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        c, p = self.pipe.scheduler.config, self.pipe.transformer.config.patch_size
        _, h, w = self.latent_shape
        return {"mu": calculate_shift((h // p) * (w // p), c.get("base_image_seq_len", 256),
                                      c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
                                      c.get("max_shift", 1.16))}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], guidance: float = 1.0) -> PromptEmbeds:
        tokens, neg_tokens, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=guidance > 1.0, max_sequence_length=self.max_sequence_length)
        uncond = {"tokens": neg_tokens, "pooled": neg_pooled} if guidance > 1.0 else None
        return PromptEmbeds({"tokens": tokens, "pooled": pooled}, uncond)

    def _forward(self, x, t, cond, meta, guidance):
        return self.get_denoiser()(hidden_states=x, timestep=t, encoder_hidden_states=cond["tokens"],
                                   pooled_projections=cond["pooled"], return_dict=False)[0]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        side = self.resolution // self.pipe.vae_scale_factor
        return (self.get_denoiser().config.in_channels, side, side)

    def _decode(self, x):
        return self._vae_decode(x)


@register_model("flux1-dev")
class FluxModel(DiffusersFlowModel):
    """FLUX.1-dev: guidance-distilled, so `guidance` feeds the transformer's guidance embedding
    and there is no unconditional branch (FLUX.1-schnell, without the embedding, ignores it)."""

    description = "FLUX.1-dev through diffusers (guidance embedding, no CFG); hub id or local directory"
    pipeline_class = "FluxPipeline"
    default_path = "black-forest-labs/FLUX.1-dev"
    default_steps = 28  # the pipeline's defaults
    default_guidance = 3.5
    default_lora_rank = 64  # docs/methods.md §9: r 64, α 128, attention and feed-forward layers
    default_preset = "flux1-dev-geneval2"  # the published recipe (harness/run/presets/)
    # flow_grpo's scripts/train_flux.py list (Flow-Factory's flux1.py has the same): "attn.to_q" also
    # takes the single-stream blocks' to_q / to_k / to_v; 342 projections on FLUX.1-dev
    lora_targets = ATTN_TARGETS + ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")

    def _packed_hw(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        return h // 2, w // 2

    def _scheduler_kwargs(self, steps: int) -> dict:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = self.pipe.scheduler.config
        h, w = self._packed_hw()
        mu = calculate_shift(h * w, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], guidance: float = 1.0) -> PromptEmbeds:
        tokens, pooled, text_ids = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=self.device,
            max_sequence_length=self.max_sequence_length)
        # text_ids is [L, 3], shared by the batch: meta, which select / repeat_interleave leave alone
        return PromptEmbeds({"tokens": tokens, "pooled": pooled}, None, {"txt_ids": text_ids})

    def _forward(self, x, t, cond, meta, guidance):
        B, C, h, w = x.shape
        net = self.get_denoiser()
        packed = self.pipe._pack_latents(x, B, C, h, w)
        img_ids = self._position_ids(x, lambda: self.pipe._prepare_latent_image_ids(
            1, h // 2, w // 2, x.device, x.dtype))
        g = torch.full((B,), float(guidance), device=x.device) if net.config.guidance_embeds else None
        v = net(hidden_states=packed, timestep=t / 1000, guidance=g, pooled_projections=cond["pooled"],
                encoder_hidden_states=cond["tokens"], txt_ids=meta["txt_ids"], img_ids=img_ids,
                return_dict=False)[0]
        return v.view(B, h // 2, w // 2, C, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C, h, w)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        side = 2 * (self.resolution // (self.pipe.vae_scale_factor * 2))  # even, for the 2x2 packing
        return (self.get_denoiser().config.in_channels // 4, side, side)

    def _decode(self, x):
        return self._vae_decode(x)


@register_model("flux2-klein")
class Flux2KleinModel(DiffusersFlowModel):
    """FLUX.2 [klein]: Qwen3 text encoder, latents 2x2-patchified and batch-normalised by the
    VAE's running statistics; real CFG (guidance > 1) unless the checkpoint is step-distilled."""

    description = "FLUX.2 [klein] through diffusers (CFG); hub id or local directory"
    pipeline_class = "Flux2KleinPipeline"
    default_path = "black-forest-labs/FLUX.2-klein-base-9B"
    default_steps = 50  # the pipeline's defaults
    default_guidance = 4.0
    default_lora_rank = 64
    default_preset = "flux2-klein-geneval2"  # the published recipe (harness/run/presets/)
    # Flow-Factory's flux2_klein.py list: single-stream blocks fuse q, k, v and the MLP input into
    # one projection; their output projection (`attn.to_out`, one Linear) is not matched by
    # "attn.to_out.0" and stays frozen, as there. 120 projections on klein-9B
    lora_targets = ATTN_TARGETS + ("ff.linear_in", "ff.linear_out", "ff_context.linear_in",
                                   "ff_context.linear_out", "attn.to_qkv_mlp_proj")

    def _cfg(self, guidance: float) -> bool:
        return guidance > 1.0 and not self.pipe.config.is_distilled

    def _scheduler_kwargs(self, steps: int) -> dict:
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        _, h, w = self.latent_shape
        return {"sigmas": np.linspace(1.0, 1 / steps, steps),
                "mu": compute_empirical_mu(image_seq_len=h * w, num_steps=steps)}

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], guidance: float = 1.0) -> PromptEmbeds:
        tokens, text_ids = self.pipe.encode_prompt(prompt=list(prompts), device=self.device,
                                                   max_sequence_length=self.max_sequence_length)
        uncond = None
        if self._cfg(guidance):  # the pipeline's negative prompt is "": encode it once
            neg, _ = self.pipe.encode_prompt(prompt=[""], device=self.device,
                                             max_sequence_length=self.max_sequence_length)
            uncond = {"tokens": neg.expand_as(tokens)}
        # text ids are the same for every prompt (positions only): one row in meta
        return PromptEmbeds({"tokens": tokens}, uncond, {"txt_ids": text_ids[:1]})

    def _forward(self, x, t, cond, meta, guidance):
        B, C, h, w = x.shape
        packed = x.reshape(B, C, h * w).permute(0, 2, 1)
        img_ids = self._position_ids(x, lambda: self.pipe._prepare_latent_ids(x[:1]).to(x.device))
        img_ids = img_ids.expand(B, -1, -1)
        v = self.get_denoiser()(hidden_states=packed, timestep=t / 1000, guidance=None,
                                encoder_hidden_states=cond["tokens"],
                                txt_ids=meta["txt_ids"].expand(B, -1, -1), img_ids=img_ids,
                                return_dict=False)[0]
        return v[:, :h * w].permute(0, 2, 1).reshape(B, C, h, w)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        side = self.resolution // (self.pipe.vae_scale_factor * 2)  # 2x2 patches as channels
        return (self.get_denoiser().config.in_channels, side, side)

    def _decode(self, x):
        vae = self.pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(x)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(x)
        return vae.decode(self.pipe._unpatchify_latents(x * std + mean), return_dict=False)[0]

