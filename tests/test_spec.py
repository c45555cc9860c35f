"""A run resolved once (`plan` → `RunSpec`): what the workers of --jobs and --nproc read back is
what their parent resolved, overrides, methods with settings and seeds included."""

import json

import pytest

from flowarena.core.errors import FlowArenaError
from flowarena.harness.run import RunError, RunSpec, plan


def test_a_spec_reads_back_as_written(tmp_path):
    spec = plan(tmp_path / "run", ["grpo", "dppo@delta=3e-6"], preset="smoke", seeds=2, epochs=3,
                train={"lr": 1e-3, "adam_betas": [0.9, 0.99]}, eval={"limit": 8}, reference="grpo",
                command="bench run --preset smoke")
    path = spec.write(tmp_path / "spec.json")
    back = RunSpec.read(path)
    assert back == spec
    assert (back.preset.epochs, back.preset.train.lr, back.preset.train.adam_betas) == (3, 1e-3, (0.9, 0.99))
    assert back.methods == ["grpo", "dppo@delta=3e-6"] and back.seeds == 2 and back.out == tmp_path / "run"


def test_plan_refuses_before_any_work(tmp_path):
    with pytest.raises(RunError, match="--reference cps is not among the methods run"):
        plan(tmp_path / "run", ["grpo"], preset="smoke", reference="cps")
    with pytest.raises(FlowArenaError, match="unknown method 'ppo9000'"):
        plan(tmp_path / "run", ["ppo9000"], preset="smoke")
    assert plan(preset="smoke").out.as_posix() == "runs/smoke"
    assert not (tmp_path / "run").exists()


def test_a_damaged_spec_is_one_line(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"schema": 99}))
    with pytest.raises(RunError, match="not a run specification of schema 1"):
        RunSpec.read(path)
