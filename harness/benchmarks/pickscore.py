"""`pickscore`: the raw PickScore of each prompt's image, the paper's out-of-domain score,
on a prompt file (Pick-a-Pic's test prompts where you have them; by default the toy ood
split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.benchmarks.base import Benchmark, load_text_prompts, per_record, register_benchmark
from harness.core.prompts import toy_split_path
from harness.core.results import Metric
from harness.core.soft_tifa import stderr


@register_benchmark("pickscore")
class PickScoreBenchmark(Benchmark):
    description = "PickScore (raw) on a prompt file (default: the toy ood split)"
    options = ("pickscore", "pickscore_processor")

    def prompts(self, path: str | Path | None = None) -> list[dict]:
        return load_text_prompts(path or toy_split_path("ood"))

    def load_scorer(self):
        from rewards.pickscore import DEFAULT_MODEL, PickScoreReward

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
