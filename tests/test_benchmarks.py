"""Benchmarks are registered objects: one written in this file is what a `bench run`
measures, in its eval files, its tables and its figures, without an edit elsewhere."""

import json
from dataclasses import replace

import numpy as np
import pytest

from flowarena.core.results import SCHEMA, CellResult, EvalRecord, Metric, ResultSchemaError
from flowarena.harness.benchmarks import (
    BENCHMARKS,
    Benchmark,
    BenchmarkError,
    build_benchmark,
    register_benchmark,
)
from flowarena.harness.run import RunError, plan, run_experiment
from flowarena.tasks.prompts import load_toy_split
from flowarena.tasks.soft_tifa import stderr
from tests.test_run import PRESET


@pytest.fixture
def brightness():
    """A new benchmark in a dozen lines: the mean brightness of each image of the toy eval prompts."""
    @register_benchmark("test-brightness")
    class Brightness(Benchmark):
        description = "a test benchmark: mean brightness of each image"

        def prompts(self, path=None, split="test"):
            return load_toy_split("eval")

        def load_scorer(self):
            return lambda images, records, n: [[float(images[i * n + k].mean()) for k in range(n)]
                                               for i in range(len(records))]

        def summary(self, records, per_prompt):
            values = [100 * float(np.mean(p)) for p in per_prompt]
            return {"brightness": {"mean": float(np.mean(values)), "stderr": stderr(values),
                                   "per_prompt": values}}

        def metrics(self, result):
            b = result["brightness"]
            return [Metric("brightness", "Brightness", b["mean"], b["stderr"], len(b["per_prompt"]),
                           paired=True, per_prompt=b["per_prompt"], benchmark=self.name)]
    yield Brightness
    BENCHMARKS.remove("test-brightness")


def test_a_new_benchmark_is_one_file_and_bench_run_measures_it(brightness, tiny_path, tmp_path):
    preset = replace(PRESET, epochs=1, eval=replace(PRESET.eval, benchmarks=("test-brightness", "toy")))
    run = run_experiment(plan(tmp_path / "r", ["grpo"], "toy", preset, 1, tiny_path), progress=False)
    ev = json.loads((run / "toy" / "grpo" / "seed0" / "eval" / "1.json").read_text())
    assert ev["schema"] == SCHEMA and set(ev["benchmarks"]) == {"test-brightness", "toy"}
    record = EvalRecord.from_json(ev)
    assert record.paired.key == "brightness"  # the first benchmark's paired metric is the headline
    assert 0 < record.metric("brightness").value < 100 and record.metric("gm") is not None
    table = (run / "report" / "tables.md").read_text()
    assert "| Brightness" in table and "ΔBrightness vs base" in table and "Soft-TIFA GM" in table
    # a benchmark has a test set unless it says otherwise: the final scores are the whole set
    # (final_limit None), the toy's and the KL those of the last evaluation
    result = CellResult.from_json(json.loads((run / "toy" / "grpo" / "seed0" / "result.json").read_text()))
    assert record.metric("brightness").n == PRESET.eval.limit and result.final.metric("brightness").n == 192
    assert result.final.benchmarks["test-brightness"]["split"] == "test"
    assert result.final.metric("gm").value == record.metric("gm").value
    assert result.final.kl_to_pretrained == record.kl_to_pretrained
    assert result.base.metric("brightness").n == 192  # the base model scored on the same test set
    assert (run / "report" / "figures" / "toy_frontier.png").exists()


def test_benchmarks_say_what_they_take(brightness):
    assert {"toy", "geneval2", "geneval", "pickscore", "test-brightness"} <= set(BENCHMARKS.names())
    with pytest.raises(BenchmarkError, match="benchmark toy has no option 'judge'"):
        build_benchmark("toy", judge="x")
    with pytest.raises(BenchmarkError, match="unknown benchmark 'nope'"):
        build_benchmark("nope")


def test_a_run_with_an_unknown_benchmark_fails_before_any_work(tiny_path, tmp_path):
    preset = replace(PRESET, eval=replace(PRESET.eval, benchmarks=("nope",)))
    with pytest.raises(BenchmarkError, match="unknown benchmark 'nope'"):
        run_experiment(plan(tmp_path / "r", ["grpo"], "toy", preset, 1, tiny_path), progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(RunError, match="eval.benchmarks must be a non-empty list"):
        empty = replace(PRESET, eval=replace(PRESET.eval, benchmarks=()))
        run_experiment(plan(tmp_path / "r", ["grpo"], "toy", empty, 1, tiny_path), progress=False)


def test_result_files_of_a_newer_schema_are_one_line():
    with pytest.raises(ResultSchemaError, match="result schema 99; this FlowArena reads schemas 1-"):
        EvalRecord.from_json({"schema": 99, "metrics": [], "benchmarks": {}}, "eval/3.json")


def test_the_foundation_reads_old_schemas_only_through_a_task_s_upgrade(monkeypatch):
    """core/results.py knows no benchmark: schema 1 (the toy world's flat evaluations) reads
    through the upgrade the toy world registers, and without it fails in one line."""
    from flowarena.core import results
    assert "'toy'" not in open(results.__file__).read().replace('"', "'")
    flat = {"soft_tifa": {"gm": 50.0, "gm_stderr": 1.0, "am": 60.0, "am_stderr": 1.0, "n_prompts": 2,
                          "per_prompt_gm": [0.4, 0.6], "per_skill": {"object": 70.0}},
            "kl_to_pretrained": {"mean": 0.1}, "epoch": 3}
    record = EvalRecord.from_json(flat, "eval/3.json")
    assert record.schema == 1 and record.epoch == 3 and record.kl == 0.1
    assert record.paired.value == 50.0 and set(record.benchmarks) == {"toy"}
    monkeypatch.setattr(results, "UPGRADES", {})
    with pytest.raises(ResultSchemaError, match="schema 1, and no loaded task reads it"):
        EvalRecord.from_json(flat, "eval/3.json")
