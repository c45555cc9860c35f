"""`toy`: the embedded default benchmark. Soft-TIFA under the toy judge on the held-out
eval split (GenEval2's format and scoring, docs/toy-world.md) and the toy preference score
on the out-of-domain split; no downloads.

Unlike the real benchmarks, the images of a split are drawn from one noise tensor seeded
once (`seed`), as every toy result in the docs was measured. Under torchrun each rank draws
that whole tensor, takes the rows of its share of the prompts (whole `generate` batches, so
every image comes from the batch it has in one process) and the scores are gathered in order.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from flowarena.core.results import Metric
from flowarena.harness.benchmarks.base import Benchmark, register_benchmark
from flowarena.methods import dist
from flowarena.models.base import FlowModel
from flowarena.tasks.prompts import PromptFileError, load_toy_split, subset
from flowarena.tasks.soft_tifa import SoftTifaResult, soft_tifa, stderr
from flowarena.tasks.toyworld.judge import ToyJudge
from flowarena.tasks.toyworld.metrics import toy_metrics

BATCH = 64  # images per `generate` batch (its default); ranks share out whole batches


def sample_split(model: FlowModel, records: list[dict], *, images_per_prompt: int = 1,
                 steps: int | None = None, guidance: float | None = None, seed: int = 0,
                 progress: bool = False, own: range | None = None) -> torch.Tensor:
    """The images of `records`, or with `own` those of the records it indexes (a rank's
    share, `shared`), cut from the noise of the whole list."""
    prompts = [r["prompt"] for r in records for _ in range(images_per_prompt)]
    noise = model.initial_noise(len(prompts), torch.Generator().manual_seed(seed))
    rows = slice(0, len(prompts)) if own is None else slice(own.start * images_per_prompt,
                                                            own.stop * images_per_prompt)
    if rows.start == rows.stop:  # a rank left without a share
        return torch.empty(0)
    return model.generate(prompts[rows], steps=steps, guidance=guidance, noise=noise[rows],
                          batch_size=BATCH, progress=progress and dist.is_main())


def shared(records: list[dict], images_per_prompt: int = 1) -> range:
    """This rank's records: whole `generate` batches of their images (all in one process)."""
    return dist.share(len(records), BATCH // math.gcd(BATCH, images_per_prompt))


def soft_tifa_eval(model: FlowModel, split: str = "eval", *, images_per_prompt: int = 1,
                   steps: int | None = None, guidance: float | None = None, seed: int = 0,
                   judge: ToyJudge | None = None, progress: bool = False,
                   limit: int | None = None) -> SoftTifaResult:
    records = subset(load_toy_split(split), limit)
    own = shared(records, images_per_prompt)
    images = sample_split(model, records, images_per_prompt=images_per_prompt, steps=steps,
                          guidance=guidance, seed=seed, progress=progress, own=own)
    judge = judge or ToyJudge()
    scores, i = [], 0
    for rec in records[own.start:own.stop]:
        scores.append([judge.score(images[i + k], rec["vqa_list"]) for k in range(images_per_prompt)])
        i += images_per_prompt
    return soft_tifa(records, dist.concat(scores))


def preference_eval(model: FlowModel, split: str = "ood", *, steps: int | None = None,
                    guidance: float | None = None, seed: int = 0, reward=None,
                    progress: bool = False, limit: int | None = None) -> dict:
    """Mean toy preference score (raw, like PickScore's) over a split's prompts, ± stderr."""
    from flowarena.rewards import build_reward

    records = subset(load_toy_split(split), limit)
    reward = reward or build_reward("toy-pick")
    own = shared(records)
    images = sample_split(model, records, steps=steps, guidance=guidance, seed=seed, progress=progress,
                          own=own)
    mine = records[own.start:own.stop]
    scores = reward(images, [r["prompt"] for r in mine], mine).scores.numpy() if mine else np.zeros(0, "f4")
    scores = np.asarray(dist.concat(scores.tolist()), dtype=scores.dtype)  # as one process's float32
    return {"mean": float(np.mean(scores)), "stderr": stderr(scores), "n": len(scores),
            "per_prompt": scores.tolist()}


@register_benchmark("toy")
class ToyBenchmark(Benchmark):
    description = "Soft-TIFA under the toy judge (eval split) + toy preference score (ood split)"
    test_set = False  # the eval split is held out from training; its last evaluation is final

    def prompts(self, path: str | Path | None = None, split: str = "test") -> list[dict]:
        if path is not None:
            raise PromptFileError("the toy benchmark uses its own splits; --prompts is for "
                                  "geneval2, geneval and pickscore")
        return load_toy_split("eval")

    def run_options(self, settings, final: bool = False) -> dict:
        return {"limit": settings.limit, "ood_limit": settings.ood_limit}

    def evaluate(self, model: FlowModel, *, prompts=None, limit: int | None = None,
                 images_per_prompt: int | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, progress: bool = False, ood: bool = True,
                 ood_limit: int | None = -1, **_) -> dict:
        """Soft-TIFA on `limit` prompts of the eval split (spread evenly) and, with `ood`, the
        preference score on `ood_limit` prompts of the ood split (default: as many as `limit`)."""
        if prompts is not None:
            self.prompts(prompts)  # says why not
        t0 = time.perf_counter()
        tifa = soft_tifa_eval(model, "eval", images_per_prompt=images_per_prompt or 1, steps=steps,
                              guidance=guidance, seed=seed, progress=progress, limit=limit)
        out = {"benchmark": self.name, "model": model.name, "steps": steps or model.default_steps,
               "guidance": model.default_guidance if guidance is None else guidance, "seed": seed,
               "soft_tifa": tifa.to_dict()}
        if ood:
            out["preference_ood"] = preference_eval(model, "ood", steps=steps, guidance=guidance, seed=seed,
                                                    progress=progress,
                                                    limit=limit if ood_limit == -1 else ood_limit)
        out["seconds"] = round(time.perf_counter() - t0, 1)
        return out

    def metrics(self, result: dict) -> list[Metric]:
        return toy_metrics(result)
