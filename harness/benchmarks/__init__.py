"""Benchmarks as registered objects, one file each: what `bench eval --benchmark NAME`
runs and what `bench run` measures between epochs (the preset's `eval.benchmarks`).

A new benchmark is one file in this package (or anywhere that is imported first):

    @register_benchmark("my-bench")
    class MyBench(Benchmark):
        description = "..."
        def prompts(self, path=None): ...
        def load_scorer(self): ...          # (images, records, n) -> one result per record
        def summary(self, records, per_prompt): ...
        def metrics(self, result): ...      # [flowarena.core.results.Metric]
"""

from flowarena.core.registry import discover
from flowarena.harness.benchmarks.base import (
    BENCHMARKS,
    Benchmark,
    BenchmarkError,
    build_benchmark,
    load_text_prompts,
    register_benchmark,
)

discover(__name__, skip={"base"})

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkError", "build_benchmark", "load_text_prompts",
           "register_benchmark"]
