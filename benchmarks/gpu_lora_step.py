"""One LoRA training step of the full-size SD3.5-medium transformer, on a GPU (not a test).

The transformer has SD3.5-medium's configuration and random weights (no download); the
step is the common trainer's own `update` — current-policy velocity with CFG, the Flow-SDE
step math, the Flow-DPPO loss, backward, AdamW — on one group of 16 trajectories at 512²
(latents 16×64×64), one trained timestep, LoRA r 32 on the attention projections, bf16
autocast, gradient checkpointing. Prints seconds per step, peak GPU memory, and the ratio
to a bare forward + backward of the same network on the same batch (what any trainer pays).

    python benchmarks/gpu_lora_step.py                 # one H100 / H200, well within 5 minutes
    python benchmarks/gpu_lora_step.py --size tiny --device cpu   # the same code path, small
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests/ (tiny parts)

# stabilityai/stable-diffusion-3.5-medium, transformer/config.json
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                   caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
TINY = dict(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64,
            caption_projection_dim=64, pooled_projection_dim=32, pos_embed_max_size=96,
            dual_attention_layers=(0,), qk_norm="rms_norm")
TEXT_TOKENS = 77 + 256  # CLIP-L/G tokens + T5 tokens, as SD3's encode_prompt concatenates them


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("medium", "tiny"), default="medium")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--guidance", type=float, default=4.5, help="CFG scale (> 1: two branches)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from diffusers import SD3Transformer2DModel

    from flowarena.methods import build_method
    from flowarena.methods.sde import flow_sde_step
    from flowarena.methods.trainer import Rollout, TrainConfig, Trainer
    from flowarena.models.base import PromptEmbeds
    from flowarena.models.diffusers_flow import SD3Model
    from flowarena.rewards import build_reward
    from flowarena.tasks.prompts import load_toy_split
    from tests.tiny_pipelines import tiny_sd3

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = SD35_MEDIUM if args.size == "medium" else TINY
    t0 = time.perf_counter()
    with torch.device(device):  # random init straight on the GPU: seconds, not minutes
        transformer = SD3Transformer2DModel(**cfg).to(dtype)
    pipe = tiny_sd3(0)  # tiny text encoders and VAE: the step never calls them
    pipe.register_modules(transformer=transformer)
    model = SD3Model(pipe, device, resolution=args.resolution, gradient_checkpointing=True)
    n_params = sum(p.numel() for p in transformer.parameters())
    print(f"SD3 transformer ({args.size}): {n_params / 1e6:,.1f} M parameters, {dtype}, built in "
          f"{time.perf_counter() - t0:.0f} s on {device}")

    G, steps, k = args.group, 10, 1
    train = TrainConfig(prompts_per_epoch=1, group_size=G, minibatch_size=G, steps=steps, sde_window=1,
                        guidance=args.guidance, lora_rank=32, lora_alpha=64)
    trainer = Trainer(model, build_method("dppo"), build_reward("toy-colour"), load_toy_split("train"),
                      train, seed=0)
    gen = torch.Generator(device).manual_seed(0)
    side = args.resolution // 8  # SD3's VAE downsamples by 8

    def randn(*shape, dt=torch.float32):
        return torch.randn(*shape, generator=gen, device=device).to(dt)

    text = {"tokens": randn(G, TEXT_TOKENS, cfg["joint_attention_dim"], dt=dtype),
            "pooled": randn(G, cfg["pooled_projection_dim"], dt=dtype)}
    uncond = {key: torch.zeros_like(v) for key, v in text.items()} if args.guidance > 1 else None
    embeds = PromptEmbeds(text, uncond)
    sig = model.sigmas(steps)
    x = randn(G, cfg["in_channels"], side, side)
    with torch.no_grad():  # the rollout's old policy at this step, by the same code
        v = model.velocity(x, torch.full((G,), float(sig[k]), device=device), embeds, args.guidance)
        old = flow_sde_step(x, v, float(sig[k]), float(sig[k + 1]), eta=0.7, noise=randn(*x.shape))
    ro = Rollout(["p"] * G, [{}] * G, embeds, [k], sig, [x], [old.next_sample], [old.mean], [old.std],
                 [old.log_prob], x, x, torch.zeros(G, 3, 1, 1), torch.zeros(G), randn(G))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = _median_seconds(lambda: trainer.update(ro, 0), device, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    net = model.get_denoiser()
    t = torch.full((G,), float(sig[k]) * 1000, device=device)
    xx = torch.cat([x, x]) if uncond else x
    tt = torch.cat([t, t]) if uncond else t
    tok = torch.cat([uncond["tokens"], text["tokens"]]) if uncond else text["tokens"]
    pooled = torch.cat([uncond["pooled"], text["pooled"]]) if uncond else text["pooled"]

    def bare():
        net.zero_grad(set_to_none=True)
        with model._autocast():
            out = net(hidden_states=xx.to(dtype), timestep=tt, encoder_hidden_states=tok,
                      pooled_projections=pooled, return_dict=False)[0]
        out.float().square().mean().backward()

    bare_s = _median_seconds(bare, device, args.repeats)
    batch = 2 * G if uncond else G
    print(f"one LoRA training step (trainer.update: Flow-DPPO, group {G}, {args.resolution}², CFG "
          f"{args.guidance} so {batch} samples per forward): {step_s:.3f} s (median of {args.repeats})")
    print(f"bare forward + backward of the same network and batch: {bare_s:.3f} s")
    print(f"ratio step / bare: {step_s / bare_s:.3f}")
    print(f"peak GPU memory: {peak:.1f} GiB" if device.type == "cuda" else "peak GPU memory: n/a on cpu")


if __name__ == "__main__":
    main()
