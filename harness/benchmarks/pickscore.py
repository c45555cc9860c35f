"""`pickscore`: the raw PickScore of each prompt's image, the paper's out-of-domain score,
on the shipped parti-test prompts (539 of PartiPrompts, Apache-2.0) or a prompt file
(Pick-a-Pic's test prompts where you have them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowarena.core.results import Metric
from flowarena.harness.benchmarks.base import Benchmark, load_text_prompts, per_record, register_benchmark
from flowarena.tasks.prompts import load_prompts
from flowarena.tasks.soft_tifa import stderr


@register_benchmark("pickscore")
class PickScoreBenchmark(Benchmark):
    description = "PickScore (raw) on 539 PartiPrompts (parti-test) or a prompt file"
    options = ("pickscore", "pickscore_processor")
    out_of_domain = True

    def prompts(self, path: str | Path | None = None, split: str = "test") -> list[dict]:
        return load_prompts("parti-test") if path is None else load_text_prompts(path)

    def run_options(self, settings, final: bool = False) -> dict:
        return {**super().run_options(settings, final), "prompts": settings.ood_prompts}

    def load_scorer(self):
        from flowarena.rewards.pickscore import DEFAULT_MODEL, PickScoreReward

        pick = PickScoreReward(self.settings.get("pickscore") or DEFAULT_MODEL,
                               self.settings.get("pickscore_processor"), scale=False, device=self.device)

        def score(images, records, n):
            prompts = [r["prompt"] for r in records for _ in range(n)]
            return per_record(pick(images, prompts, None).scores.tolist(), n)
        return score

    def summary(self, records: list[dict], per_prompt: list) -> dict:
        scores = [float(np.mean(p)) for p in per_prompt]
        return {"pickscore": {"mean": float(np.mean(scores)), "stderr": stderr(scores), "n": len(scores),
                              "per_prompt": scores}}

    def metrics(self, result: dict) -> list[Metric]:
        p = result["pickscore"]
        return [Metric("pickscore", "PickScore", p["mean"], p["stderr"], p["n"], digits=2, role="secondary",
                       benchmark=self.name, paired=True, per_prompt=p["per_prompt"])]
