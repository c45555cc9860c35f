"""`geneval`: the 553 GenEval prompts, four images each, a detector (Mask2Former) and a
colour model (CLIP) under GenEval's rules: accuracy per tag and overall, the mean over
tags (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

from flowarena.core.results import Metric
from flowarena.harness.benchmarks.base import Benchmark, per_record, register_benchmark
from flowarena.tasks.geneval_rules import geneval_summary, load_geneval_prompts


@register_benchmark("geneval")
class GenEvalBenchmark(Benchmark):
    description = "GenEval: 553 prompts x 4 images, Mask2Former + CLIP colour, accuracy per tag"
    images_per_prompt = 4
    options = ("detector", "clip")

    def prompts(self, path: str | Path | None = None, split: str = "test") -> list[dict]:
        return load_geneval_prompts(path)  # one set: a training run's val and test prompts alike

    def load_scorer(self):
        from flowarena.rewards.geneval import DEFAULT_CLIP, DEFAULT_DETECTOR, GenEvalScorer

        ge = GenEvalScorer(self.settings.get("detector") or DEFAULT_DETECTOR,
                           self.settings.get("clip") or DEFAULT_CLIP, self.device)

        def score(images, records, n):
            correct, _ = ge.score(images, [r for r in records for _ in range(n)])
            return per_record(correct, n)
        return score

    def summary(self, records: list[dict], per_prompt: list) -> dict:
        return {"geneval": geneval_summary(records, per_prompt)}

    def metrics(self, result: dict) -> list[Metric]:
        g = result["geneval"]
        return [Metric("geneval", "GenEval overall", g["overall"], g["overall_stderr"], g["n_prompts"],
                       benchmark=self.name)] + [
            Metric(f"tag:{k}", k, v, role="detail", benchmark=self.name) for k, v in g["per_tag"].items()]
