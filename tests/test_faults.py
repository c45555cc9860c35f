"""Runs survive faults: SIGKILL at any instant resumes to identical results, non-finite
updates are skipped and counted (too many in a row stop the run with a usable checkpoint),
damaged checkpoints are one line."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

import flowarena.harness.run.cell as run_module
from flowarena.harness.run import EvalSettings, Preset, RunError, load_cell_policy, plan, run_experiment
from flowarena.methods.trainer import TrainConfig, Trainer
from flowarena.rewards.base import REWARDS, Reward, RewardOutput, register_reward
from tests.test_run import PRESET as RUN_PRESET
from tests.test_run import _trainer

REPO = Path(__file__).resolve().parents[1]
PRESET = Preset(
    "faults", "tiny, four epochs with a checkpoint after each", epochs=4,
    train=TrainConfig(prompts_per_epoch=2, group_size=4, minibatch_size=4, steps=4, sde_window=2,
                      lr=1e-2, lora_rank=4, lora_alpha=8),
    eval=EvalSettings(every=2, limit=4, ood_limit=4, steps=3, kl_prompts=2, samples=2),
    reward="toy-colour")


def _results(run: Path) -> tuple[pd.DataFrame, list[dict], dict]:
    """Everything a run computes, without its timings."""
    df = pd.read_csv(run / "report" / "tables.csv").drop(columns="wall_min")
    cell = run / "toy" / "grpo" / "seed0"
    metrics = [json.loads(x) for x in (cell / "metrics.jsonl").read_text().splitlines()]
    for r in metrics:
        for k in ("rollout_s", "update_s", "baseline_s", "wall_seconds"):
            r.pop(k, None)
    evals = {p.name: json.loads(p.read_text()) for p in sorted((cell / "eval").glob("*.json"))}
    for e in evals.values():
        e.pop("wall_seconds", None)
        for result in e["benchmarks"].values():
            result.pop("seconds")
    return df, metrics, evals


_CHILD = """
import sys
from pathlib import Path
from tests.test_faults import PRESET
from flowarena.harness.run import plan, run_experiment
run_experiment(plan(Path(sys.argv[1]), ["grpo"], "toy", PRESET, 1, sys.argv[2]), progress=False)
"""


def _child(out: Path, tiny: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(out), tiny], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _epoch(state: Path) -> int:
    """The epoch of a cell's checkpoint (0: none yet); state.json is replaced atomically."""
    return json.loads(state.read_text())["epoch"] if state.exists() else 0


def test_sigkill_at_random_instants_resumes_to_identical_results(tiny_path, tmp_path):
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    p = _child(ref, tiny_path)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    duration = time.perf_counter() - t0
    expected = _results(ref)
    rng = random.Random(0)  # random instants, the test itself reproducible
    resumed_from = []
    # after the checkpoint of epoch 2 (somewhere in epoch 3), and at a random share of the whole
    # run (start-up, training, evaluation or the report)
    for trial, after in enumerate((2, None)):
        out = tmp_path / f"killed{trial}"
        state = out / "toy" / "grpo" / "seed0" / "checkpoints" / "latest" / "state.json"
        p = _child(out, tiny_path)
        if after is None:
            time.sleep(rng.uniform(0.2, 0.9) * duration)
        else:
            while p.poll() is None and _epoch(state) < after:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.2))  # somewhere in the next epoch
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        resumed_from.append(_epoch(state))
        # the same command again, in the same environment (another thread count changes float sums)
        p = _child(out, tiny_path)
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
        df, metrics, evals = _results(out)
        pd.testing.assert_frame_equal(df, expected[0])
        assert metrics == expected[1] and evals == expected[2], f"trial {trial}"
    assert any(0 < e < PRESET.epochs for e in resumed_from), resumed_from  # killed mid-training


def test_a_kill_between_checkpoint_files_resumes_from_the_consistent_pair(tiny_path, tmp_path, monkeypatch):
    """The window SIGKILL rarely hits: the new weights are written, state.json is not yet."""
    ref = tmp_path / "ref"
    run_experiment(plan(ref, ["grpo"], "toy", PRESET, 1, tiny_path), progress=False)
    original = run_module.save_tensors

    def dies_on_the_optimizer_of_epoch_2(path, tensors, metadata=None):
        if Path(path).name == "optimizer_00002.safetensors":
            raise KeyboardInterrupt  # after weights_00002 landed, before state.json
        return original(path, tensors, metadata)
    monkeypatch.setattr(run_module, "save_tensors", dies_on_the_optimizer_of_epoch_2)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(plan(out, ["grpo"], "toy", PRESET, 1, tiny_path), progress=False)
    ckpt = out / "toy" / "grpo" / "seed0" / "checkpoints" / "latest"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == 1 and (ckpt / "weights_00002.safetensors").exists()
    monkeypatch.setattr(run_module, "save_tensors", original)
    run_experiment(plan(out, ["grpo"], "toy", PRESET, 1, tiny_path), progress=False)
    got, want = _results(out), _results(ref)
    pd.testing.assert_frame_equal(got[0], want[0])
    assert got[1:] == want[1:]
    assert sorted(p.name for p in ckpt.glob("*.safetensors")) == ["optimizer_00004.safetensors",
                                                                   "weights_00004.safetensors"]


class NaNAfter(Reward):
    """The colour reward until `calls` batches have been scored, NaN afterwards."""

    name = "test-nan-after"
    calls = 10**9

    def __init__(self):
        from flowarena.rewards import build_reward

        self.inner, self.n = build_reward("toy-colour"), 0

    def __call__(self, images, prompts, metadata):
        self.n += 1
        scores = self.inner(images, prompts, metadata).scores
        return RewardOutput(scores * float("nan") if self.n > self.calls else scores)


if NaNAfter.name not in REWARDS:
    register_reward(NaNAfter.name)(NaNAfter)


def test_non_finite_updates_are_skipped_and_counted(tiny_path, monkeypatch):
    tr = _trainer(tiny_path, "grpo")
    tr.reward = NaNAfter()
    monkeypatch.setattr(NaNAfter, "calls", 0)  # every reward is NaN: so is every advantage
    before = {k: v.clone() for k, v in tr.model.trainable_state_dict().items()}
    metrics, _ = tr.train_epoch(0)
    t = RUN_PRESET.train
    updates = t.inner_loops * t.prompts_per_epoch * t.group_size // t.minibatch_size
    assert metrics["skipped_updates"] == updates == tr.skips_in_row == 4
    after = tr.model.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing reached the weights
    monkeypatch.setattr(NaNAfter, "calls", 10**9)
    tr.reward = NaNAfter()
    metrics, _ = tr.train_epoch(1)
    assert metrics["skipped_updates"] == 0 and tr.skips_in_row == 0  # a finite update resets the count


def test_too_many_non_finite_updates_stop_the_run_with_a_usable_checkpoint(tiny_path, tmp_path, monkeypatch):
    monkeypatch.setattr(NaNAfter, "calls", 2)  # epochs 0 and 1 are fine (one reward call each)
    monkeypatch.setattr(Trainer, "max_skips_in_row", 2)  # epoch 2's two updates stop the run
    train = replace(PRESET.train, baseline_groups=0)  # one reward call an epoch: no baseline replay
    preset = Preset("nan", "", epochs=6, train=train, eval=PRESET.eval, reward=NaNAfter.name)
    out = tmp_path / "run"
    stop = r"updates in a row had a non-finite loss.*last checkpoint \(epoch 2\)"
    with pytest.raises(RunError, match=stop):
        run_experiment(plan(out, ["grpo"], "toy", preset, 1, tiny_path), progress=False)
    model, config = load_cell_policy(out / "toy" / "grpo" / "seed0")
    assert config["method"] == "grpo"
    assert all(torch.isfinite(v).all() for v in model.trainable_state_dict().values())


def test_a_damaged_checkpoint_is_one_line(tiny_path, tmp_path, monkeypatch):
    out = tmp_path / "run"
    short = Preset("short", "", epochs=1, train=PRESET.train, eval=PRESET.eval, reward="toy-colour")
    run_experiment(plan(out, ["grpo"], "toy", short, 1, tiny_path), progress=False)
    cell = out / "toy" / "grpo" / "seed0"
    (cell / "result.json").unlink()  # unfinished again: the next run resumes from the checkpoint
    (cell / "checkpoints" / "latest" / "weights_00001.safetensors").write_bytes(b"garbage")
    with pytest.raises(RunError, match="checkpoint .* is damaged") as e:
        run_experiment(plan(out, ["grpo"], "toy", short, 1, tiny_path), progress=False)
    assert "\n" not in str(e.value)
    (cell / "checkpoints" / "latest" / "state.json").write_text("{not json")
    with pytest.raises(RunError, match="state.json is damaged"):
        run_experiment(plan(out, ["grpo"], "toy", short, 1, tiny_path), progress=False)
