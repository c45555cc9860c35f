"""`geneval2`: the 800 GenEval2 prompts (shipped, CC BY-NC 4.0), one image each, judged by
a VQA model: Soft-TIFA GM / AM with per skill and per atom count, TIFA (hard answers) and
VQAScore (docs/benchmarks.md). Inside a training run, the geneval2-val split between epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowarena.core.results import Metric
from flowarena.harness.benchmarks.base import Benchmark, per_record, register_benchmark
from flowarena.tasks.prompts import load_prompts
from flowarena.tasks.soft_tifa import soft_tifa, soft_tifa_metrics, stderr


@register_benchmark("geneval2")
class GenEval2Benchmark(Benchmark):
    description = "GenEval2: 800 prompts, Soft-TIFA / TIFA / VQAScore under a VQA judge (Qwen3-VL)"
    options = ("judge", "judge_url")

    def prompts(self, path: str | Path | None = None, split: str = "test") -> list[dict]:
        """The official 800 (test), or the 800 template prompts of geneval2-val (val), which a
        training run measures between epochs so that the test set decides only at the end."""
        return load_prompts(path or f"geneval2-{split}")

    def load_scorer(self):
        from flowarena.rewards.vqa import load_judge

        vqa = load_judge(self.settings.get("judge"), self.device, self.settings.get("judge_url"))

        def score(images, records, n):
            metas = [r for r in records for _ in range(n)]
            soft, hard = vqa.judge_batch(images, [r["vqa_list"] for r in metas])
            vs = vqa.vqascore(images, [r["prompt"] for r in metas]).tolist()
            return list(zip(per_record(soft, n), per_record(hard, n), per_record(vs, n)))
        return score

    def summary(self, records: list[dict], per_prompt: list) -> dict:
        vqa = [float(np.mean(p[2])) for p in per_prompt]
        return {"soft_tifa": soft_tifa(records, [p[0] for p in per_prompt]).to_dict(),
                "tifa": soft_tifa(records, [p[1] for p in per_prompt]).to_dict(),
                "vqascore": {"mean": 100 * float(np.mean(vqa)), "stderr": 100 * stderr(vqa), "n": len(vqa)}}

    def metrics(self, result: dict) -> list[Metric]:
        h, v = result["tifa"], result["vqascore"]
        return soft_tifa_metrics(result["soft_tifa"], self.name) + [
            Metric("tifa_am", "TIFA AM", h["am"], h["am_stderr"], h["n_prompts"], role="secondary",
                   benchmark=self.name),
            Metric("vqascore", "VQAScore", v["mean"], v["stderr"], v["n"], role="secondary",
                   benchmark=self.name)]
