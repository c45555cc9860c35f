"""Rollout throughput of our sampler against the diffusers pipeline's own loop (not a test).

Same pipeline weights, prompts, initial noise, step count and guidance; the calls alternate
so machine load hits all alike, and the median of `--repeats` is kept:

    pipeline   pipe(prompt=…, latents=…, output_type="pt"): encode, K steps, decode
    ours       FlowModel.generate: the same work through our adapter (ODE)
    rollout    the trainer's rollout: the same, with an SDE window storing exact log-probs,
               a LoRA adapter in the network, and a (cheap) reward: what RL pays per image

Prints images per second and the ratios to the pipeline (goal for `ours`: ≥ 1.0).

    python benchmarks/rollout_throughput.py                      # a tiny random SD3, CPU
    python benchmarks/rollout_throughput.py --model sd35 --model-path DIR --device cuda \\
        --batch 16 --steps 10 --resolution 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests/ (tiny pipelines)

GUIDANCE = {"sd35": 4.5, "flux1-dev": 3.5, "flux2-klein": 4.0}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sd35", choices=sorted(GUIDANCE))
    ap.add_argument("--model-path", default=None, help="a pipeline directory (default: a tiny random one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8, help="images per call (one group)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--max-sequence-length", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from flowarena.methods import build_method
    from flowarena.methods.trainer import TrainConfig, Trainer
    from flowarena.models import load_model
    from flowarena.rewards import build_reward
    from flowarena.tasks.prompts import load_toy_split

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model_path
        if path is None:
            from tests.tiny_pipelines import save_tiny

            path = str(save_tiny(args.model, Path(tmp) / args.model))
        opts = {k: v for k, v in (("resolution", args.resolution),
                                  ("max_sequence_length", args.max_sequence_length)) if v}
        model = load_model(args.model, path, args.device, **opts)
        g, n = GUIDANCE[args.model], args.batch
        prompts = [r["prompt"] for r in load_toy_split("train")[:1]] * n  # one group: one prompt
        noise = model.initial_noise(n, torch.Generator().manual_seed(0))
        latents = noise
        if args.model == "flux1-dev":  # FLUX.1's pipeline takes packed latents
            B, C, h, w = noise.shape
            latents = model.pipe._pack_latents(noise, B, C, h, w)
        side = model.resolution
        latents = latents.to(model.device, model.pipe.transformer.dtype)

        def pipeline():
            model.pipe(prompt=prompts, num_inference_steps=args.steps, guidance_scale=g, latents=latents,
                       height=side, width=side, max_sequence_length=model.max_sequence_length,
                       output_type="pt")

        def ours():
            model.generate(prompts, steps=args.steps, guidance=g, noise=noise)

        times: dict[str, list[float]] = {"pipeline": [], "ours": []}
        with torch.no_grad():
            pipeline(), ours()  # warm-up
            for _ in range(args.repeats):
                times["pipeline"].append(_time(pipeline, args.device))
                times["ours"].append(_time(ours, args.device))

        cfg = TrainConfig(prompts_per_epoch=1, group_size=n, steps=args.steps, guidance=g,
                          minibatch_size=n, sde_window=2)
        trainer = Trainer(model, build_method("dppo"), build_reward("toy-colour"), load_toy_split("train"),
                          cfg, seed=0)
        trainer.rollout(0)  # warm-up
        times["rollout"] = [_time(lambda e=e: trainer.rollout(e), args.device)
                            for e in range(1, args.repeats + 1)]

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model} at {side}px, {args.steps} steps, guidance {g}, {n} images per call, "
          f"{args.device}, median of {args.repeats}")
    for k, t in med.items():
        print(f"  {k:9s} {t:8.3f} s per call   {n / t:8.2f} images/s   "
              f"throughput / pipeline {med['pipeline'] / t:.2f}")


if __name__ == "__main__":
    main()
