"""Evaluation on the toy world: Soft-TIFA on a GenEval2-format split, preference on ood.

Images are sampled with the ODE (η = 0) from fixed initial noise (seeded), so two
models evaluated with the same seed see the same prompts and the same noise.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from harness.prompts import load_toy_split
from harness.soft_tifa import SoftTifaResult, soft_tifa, stderr
from harness.toyworld.judge import ToyJudge
from models.base import FlowModel


def subset(records: list[dict], limit: int | None) -> list[dict]:
    """`limit` prompts spread evenly over the split (None: all). The splits are ordered by
    atom count, so the subset keeps the split's mix of easy and hard prompts."""
    if limit is None or limit >= len(records):
        return records
    return [records[int(i)] for i in np.linspace(0, len(records) - 1, limit).round()]


def sample_split(model: FlowModel, records: list[dict], *, images_per_prompt: int = 1,
                 steps: int | None = None, guidance: float | None = None, seed: int = 0,
                 progress: bool = False) -> torch.Tensor:
    prompts = [r["prompt"] for r in records for _ in range(images_per_prompt)]
    noise = model.initial_noise(len(prompts), torch.Generator().manual_seed(seed))
    return model.generate(prompts, steps=steps, guidance=guidance, noise=noise, progress=progress)


def soft_tifa_eval(model: FlowModel, split: str = "eval", *, images_per_prompt: int = 1,
                   steps: int | None = None, guidance: float | None = None, seed: int = 0,
                   judge: ToyJudge | None = None, progress: bool = False,
                   limit: int | None = None) -> SoftTifaResult:
    records = subset(load_toy_split(split), limit)
    images = sample_split(model, records, images_per_prompt=images_per_prompt, steps=steps,
                          guidance=guidance, seed=seed, progress=progress)
    judge = judge or ToyJudge()
    scores, i = [], 0
    for rec in records:
        scores.append([judge.score(images[i + k], rec["vqa_list"]) for k in range(images_per_prompt)])
        i += images_per_prompt
    return soft_tifa(records, scores)


def preference_eval(model: FlowModel, split: str = "ood", *, steps: int | None = None,
                    guidance: float | None = None, seed: int = 0, reward=None,
                    progress: bool = False, limit: int | None = None) -> dict:
    """Mean toy preference score (raw, like PickScore's) over a split's prompts, ± stderr."""
    from rewards import build_reward

    records = subset(load_toy_split(split), limit)
    reward = reward or build_reward("toy-pick")
    images = sample_split(model, records, steps=steps, guidance=guidance, seed=seed, progress=progress)
    scores = reward(images, [r["prompt"] for r in records], records).scores.numpy()
    return {"mean": float(np.mean(scores)), "stderr": stderr(scores), "n": len(scores),
            "per_prompt": scores.tolist()}


def full_eval(model: FlowModel, *, steps: int | None = None, guidance: float | None = None,
              seed: int = 0, images_per_prompt: int = 1, ood: bool = True,
              progress: bool = False, limit: int | None = None, ood_limit: int | None = None) -> dict:
    """Soft-TIFA on the eval split (`limit` prompts of it, spread evenly) and, with `ood`, the
    preference score on the ood split (`ood_limit` prompts)."""
    t0 = time.perf_counter()
    tifa = soft_tifa_eval(model, "eval", images_per_prompt=images_per_prompt, steps=steps,
                          guidance=guidance, seed=seed, progress=progress, limit=limit)
    out = {"model": model.name, "steps": steps or model.default_steps,
           "guidance": model.default_guidance if guidance is None else guidance, "seed": seed,
           "soft_tifa": tifa.to_dict()}
    if ood:
        out["preference_ood"] = preference_eval(model, "ood", steps=steps, guidance=guidance,
                                                seed=seed, progress=progress, limit=ood_limit)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


@torch.no_grad()
def kl_to_pretrained(model: FlowModel, records: list[dict], *, sampler: str = "sde", eta: float = 0.7,
                     steps: int = 10, guidance: float = 1.0, seed: int = 0) -> dict:
    """methods.md §7: sample with the policy's stochastic sampler and sum the exact per-step
    KL(π_θ(·|x_k) ‖ π_ref(·|x_k)) over the trajectory — the KL between the two chains' path
    distributions. Per element (mean over dims) per step, summed over steps; also the
    per-step profile. Deterministic steps (CPS's last) contribute nothing and are skipped."""
    from methods.sde import cps_step, flow_sde_step, gaussian_kl

    step_fn = flow_sde_step if sampler == "sde" else cps_step
    gen = torch.Generator().manual_seed(seed)
    prompts = [r["prompt"] for r in records]
    x = model.initial_noise(len(prompts), gen)
    embeds = model.encode_prompts(prompts, guidance)
    sig = model.sigmas(steps)
    per_step = []
    total = torch.zeros(len(prompts))
    for k in range(steps):
        s = torch.full((len(prompts),), float(sig[k]), device=x.device)
        v = model.velocity(x, s, embeds, guidance)
        with model.reference():
            v_ref = model.velocity(x, s, embeds, guidance)
        noise = torch.randn(x.shape, generator=gen).to(x.device)
        r = step_fn(x, v, float(sig[k]), float(sig[k + 1]), eta=eta, noise=noise)
        if bool((r.std > 0).all()):
            ref = step_fn(x, v_ref, float(sig[k]), float(sig[k + 1]), eta=eta, next_sample=r.next_sample)
            kl = gaussian_kl(r.mean, ref.mean, r.std).float().cpu()
            total += kl
            per_step.append(float(kl.mean()))
        else:
            per_step.append(0.0)
        x = r.next_sample
    return {"mean": float(total.mean()), "stderr": stderr(total.numpy()), "per_step": per_step,
            "n": len(prompts), "unit": "per-element KL summed over steps"}
