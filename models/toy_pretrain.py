"""`bench pretrain toy`: train the toy generator from scratch on rendered scenes.

Rectified-flow objective of SD3: `x_σ = (1 − σ)·x0 + σ·ε`, target `v = ε − x0`,
σ logit-normal. Captions come from the prompt grammar with the eval and ood
combinations held out; 10 % are dropped for classifier-free guidance. AdamW with
warm-up and cosine decay, EMA weights. Everything is seeded and the run is resumable:
a killed run restarts from its last checkpoint in `out`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from flowarena.core.fields import Count, Decay, Fraction, NonNegative, Positive, Whole, check_fields
from flowarena.core.io import load_optimizer, load_tensors, optimizer_tensors, save_tensors, write_json
from flowarena.models.toy import ToyConfig, ToyNet, save_toy
from flowarena.tasks.toyworld.grammar import held_out_keys, sample_caption_spec
from flowarena.tasks.toyworld.scene import render, sample_layout


@dataclass
class PretrainConfig:
    steps: Count = 2000  # optimizer steps (≈ 50 min on 2 cores at batch 64)
    batch_size: Count = 64
    lr: Positive = 5e-4
    warmup: Whole = 100
    weight_decay: NonNegative = 1e-4
    ema_decay: Decay = 0.999
    caption_dropout: Fraction = 0.1  # share of empty captions, for CFG
    seed: Whole = 0
    checkpoint_every: Count = 100


def render_batch(rng: np.random.Generator, n: int, held, size: int = 32):
    """n random scenes: images [n, 3, H, W] in [-1, 1] and their specs (not held out)."""
    specs = [sample_caption_spec(rng, held) for _ in range(n)]
    imgs = np.stack([render(sample_layout(list(s.groups), s.relation, rng, size), size) for s in specs])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, specs


def _lr(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain_toy(out: str | Path, cfg: PretrainConfig = PretrainConfig(),
                 model_cfg: ToyConfig = ToyConfig(), progress: bool = True,
                 stop_at: int | None = None) -> Path | None:
    """Train (or resume) into `out`; returns the EMA weights file. `stop_at` ends this call
    after that step with a checkpoint and returns None (the run continues when called again)."""
    check_fields(cfg, where="pretrain.")  # before the output directory exists
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_path, meta_path = out / "state.safetensors", out / "state.json"
    torch.manual_seed(cfg.seed)
    net = ToyNet(model_cfg)
    ema = ToyNet(model_cfg).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    held = held_out_keys()
    step, elapsed = 0, 0.0
    if meta_path.exists() and state_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["config"] != json.loads(json.dumps(asdict(cfg))):
            raise ValueError(f"{out} holds a pretraining run with another config; use a new --out")
        t = load_tensors(state_path)
        net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")})
        ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
        load_optimizer(opt, {k[4:]: v for k, v in t.items() if k.startswith("opt.")}, meta["opt"])
        gen.set_state(t["rng.torch"])
        rng.bit_generator.state = meta["numpy_rng"]
        step, elapsed = meta["step"], meta["elapsed_s"]

    def checkpoint():
        ot, ometa = optimizer_tensors(opt)
        tensors = {**{f"net.{k}": v for k, v in net.state_dict().items()},
                   **{f"ema.{k}": v for k, v in ema.state_dict().items()},
                   **{f"opt.{k}": v for k, v in ot.items()}, "rng.torch": gen.get_state()}
        save_tensors(state_path, tensors)
        write_json(meta_path, {"config": asdict(cfg), "step": step, "elapsed_s": elapsed,
                               "opt": ometa, "numpy_rng": rng.bit_generator.state})

    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain toy", disable=not progress)
    net.train()
    while step < cfg.steps:
        t0 = time.perf_counter()
        x0, specs = render_batch(rng, cfg.batch_size, held, model_cfg.image_size)
        drop = rng.random(cfg.batch_size) < cfg.caption_dropout
        captions = ["" if d else s.text for d, s in zip(drop, specs)]
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.sigmoid(torch.randn(cfg.batch_size, generator=gen))  # logit-normal
        s = sigma.view(-1, 1, 1, 1)
        x_sigma = (1 - s) * x0 + s * noise
        tokens, pooled = net.encode(captions)
        loss = (net(x_sigma, sigma, tokens, pooled) - (noise - x0)).pow(2).mean()
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        step += 1
        elapsed += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{cfg.batch_size * step / elapsed:.0f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_at:
            checkpoint()
        if step == stop_at:
            bar.close()
            return None
    bar.close()
    save_toy(ema, out / "toy.safetensors")
    write_json(out / "pretrain.json", {"config": asdict(cfg), "model": asdict(model_cfg),
                                       "steps": step, "train_seconds": round(elapsed, 1)})
    return out / "toy.safetensors"
