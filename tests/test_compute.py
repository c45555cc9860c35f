"""Compute as an axis: the trainer counts the denoiser's evaluations each epoch (training only,
in forward-equivalents), and the reports pair methods at a matched budget, each read at its
last evaluation within it (hand-made results)."""

from pathlib import Path

import numpy as np
import pytest

from flowarena.core.results import CellResult, EvalRecord, Metric
from flowarena.core.rundir import CellPaths
from flowarena.methods import build_method
from flowarena.methods.trainer import TrainConfig, Trainer
from flowarena.models.toy import load_toy
from flowarena.reports.compute import (
    budget_text,
    compute_at,
    compute_to_reach,
    evaluation_within,
    matched_budget,
    matched_compute,
)
from flowarena.reports.run_reader import CellData, Run
from flowarena.reports.table_files import write_run_tables
from flowarena.rewards import build_reward
from flowarena.tasks.prompts import load_toy_split

K, W, P, G = 5, 2, 2, 3  # steps, SDE window, prompts, group size: B = 6 images


@pytest.mark.parametrize("method,forward,grad", [
    ("grpo", K, W),  # a rollout of K steps; W trained steps with gradient
    ("dance", K, int((K - 1) * 0.6)),  # its own share of the steps
    ("nft", K + int(K * 0.99), int(K * 0.99)),  # + the old velocity at each training time
    ("awm", K + 3, 3),  # 3 strata of the steps [1, int(0.9·K))
    ("dgpo", K + 2 * 4, 4),  # + the pretrained model's velocity for the group weight
])
def test_an_epoch_counts_what_it_evaluates(tiny_path, method, forward, grad):
    """Per image: the counts above; the noise floor, the rounding in a change and the reward
    against the pretrained model (all on here) are measurement and not counted."""
    cfg = TrainConfig(prompts_per_epoch=P, group_size=G, minibatch_size=3, steps=K, sde_window=W,
                      baseline_groups=1)
    trainer = Trainer(load_toy(tiny_path), build_method(method), build_reward("toy-colour"),
                      load_toy_split("train"), cfg, seed=0)
    for epoch in range(2):
        m, _ = trainer.train_epoch(epoch)
        assert (m["nfe_forward"], m["nfe_grad"]) == (P * G * forward, P * G * grad)
        assert m["compute_fe"] == P * G * (forward + 3 * grad)
    assert "reward_vs_base" in m and "floor_kl_mean" not in m  # the floor: epoch 0 only


def test_guidance_doubles_and_checkpointing_adds_a_forward(tiny_path):
    cfg = TrainConfig(prompts_per_epoch=P, group_size=G, minibatch_size=6, steps=K, sde_window=W,
                      guidance=2.0, gradient_checkpointing=True, baseline_groups=0)
    trainer = Trainer(load_toy(tiny_path), build_method("grpo"), build_reward("toy-colour"),
                      load_toy_split("train"), cfg, seed=0)
    m, _ = trainer.train_epoch(0)
    assert (m["nfe_forward"], m["nfe_grad"]) == (2 * P * G * K, 2 * P * G * W)
    assert m["compute_fe"] == 2 * P * G * (K + 4 * W)


def _record(gm: list[float], epoch: int) -> EvalRecord:
    return EvalRecord([Metric("gm", "Soft-TIFA GM", 100 * float(np.mean(gm)), 1.0, len(gm), role="primary",
                              benchmark="toy", paired=True, per_prompt=gm)], {"toy": {}}, {"mean": 0.0},
                      epoch)


def _cell(method: str, seed: int, per_epoch: float, epochs: int, every: int, level: float) -> CellData:
    """A finished cell spending `per_epoch` each epoch, its GM rising by `level` per evaluation."""
    rng = np.random.default_rng(seed)
    evals = {e: _record(list(np.clip(0.5 + level * e / epochs + rng.normal(0, 0.01, 8), 0, 1)), e)
             for e in range(0, epochs + 1, every)}
    metrics = [{"epoch": e, "compute_fe": per_epoch, "reward_mean": 0.5} for e in range(epochs)]
    result = CellResult(method, seed, "toy", epochs, 1.0, evals[epochs], evals[0], {})
    return CellData("toy", method, seed, CellPaths(Path(f"/r/toy/{method}/seed{seed}")), {}, result, metrics,
                    evals)


def test_the_budget_picks_each_method_s_last_evaluation_within_it():
    cheap = [_cell("grpo", s, 100.0, 12, 3, 0.1) for s in range(3)]  # 1200 in all
    dear = [_cell("nft", s, 250.0, 12, 3, 0.3) for s in range(3)]  # 3000 in all
    run = Run(Path("/r"), None, cheap + dear, [], [])
    assert compute_at(dear[0])[3] == 750 and compute_at(dear[0])[12] == 3000
    assert matched_budget(run, "toy") == 1200  # the largest budget both reached
    assert evaluation_within(cheap[0], 1200) == 12
    assert evaluation_within(dear[0], 1200) == 3  # 750 ≤ 1200 < 1500 (epoch 6)
    assert evaluation_within(dear[0], 700) == 0  # nothing but the pretrained model's
    (m,) = matched_compute(run, "grpo")
    assert m.picks["nft"] == [(s, 3, 750.0) for s in range(3)] and m.picks["grpo"][0] == (0, 12, 1200.0)
    gm = next(d for d in m.paired if d.key == "gm")
    # nft's GM at epoch 3 (0.5 + 0.3·3/12) against grpo's at 12 (0.5 + 0.1): −2.5 points, where at
    # equal epochs nft is ahead by 20
    assert gm.method == "nft" and abs(gm.mean + 2.5) < 1
    assert "nft epoch 3 (62%)" in budget_text(m) and "grpo epoch 12 (100%)" in budget_text(m)
    # nft first reaches grpo's final 0.6 at its epoch-6 evaluation: 1500 of grpo's 1200
    assert compute_to_reach(run, "toy", "nft", "grpo") == {0: 1.25, 1: 1.25, 2: 1.25}
    assert compute_to_reach(run, "toy", "grpo", "nft") == {0: None, 1: None, 2: None}
    (at_end,) = matched_compute(run, "grpo", budget=3000)  # a budget of the user's: nft reads epoch 12
    assert at_end.picks["nft"][0][1] == 12 and at_end.picks["grpo"][0][1] == 12


def test_a_cell_without_counts_has_no_compute_axis():
    old = _cell("grpo", 0, 100.0, 6, 3, 0.1)
    for row in old.metrics:
        row.pop("compute_fe")
    assert compute_at(old) == {}
    run = Run(Path("/r"), None, [old, _cell("nft", 0, 10.0, 6, 3, 0.1)], [], [])
    assert matched_budget(run, "toy") is None and matched_compute(run, "grpo") == []


def test_a_compute_budget_gives_every_method_equal_compute_instead_of_equal_epochs(tiny_path, tmp_path):
    """Each method trains while its next epoch fits the budget: nft, dearer per epoch, stops
    earlier; its last epoch is evaluated and is its result; a rerun resumes to the same end."""
    import json

    from flowarena.core.results import CellResult
    from flowarena.harness.run import EvalSettings, Preset, plan, run_experiment

    preset = Preset("budget", "equal compute", epochs=3, compute_budget=250.0,
                    train=TrainConfig(prompts_per_epoch=2, group_size=3, minibatch_size=6, steps=4,
                                      sde_window=2, baseline_groups=0),
                    eval=EvalSettings(every=2, limit=2, ood_limit=2, steps=2, kl_prompts=2, samples=2),
                    reward="toy-colour")
    spec = plan(tmp_path / "r", ["grpo", "nft"], "toy", preset, 1, tiny_path)
    run_experiment(spec, progress=False)
    spent = {}
    for method in ("grpo", "nft"):
        cell = tmp_path / "r" / "toy" / method / "seed0"
        rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
        cost = rows[0]["compute_fe"]
        spent[method] = (len(rows), sum(r["compute_fe"] for r in rows))
        assert spent[method][1] <= 250 < spent[method][1] + cost or len(rows) == 3
        result = CellResult.from_json(json.loads((cell / "result.json").read_text()))
        assert result.epochs == len(rows) and result.final.epoch == len(rows)  # evaluated where it stopped
    assert spent["nft"][0] < spent["grpo"][0]  # the dearer epochs: fewer of them
    config = json.loads((tmp_path / "r" / "toy" / "nft" / "seed0" / "config.json").read_text())
    assert config["compute_budget"] == 250
    run_experiment(spec, progress=False)  # done: nothing retrained
    rows = (tmp_path / "r" / "toy" / "nft" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == spent["nft"][0]
    (tmp_path / "r" / "report" / "paired.md").unlink()
    write_run_tables(tmp_path / "r")  # read from the directory: the curves give the matched section
    assert "At matched compute (toy)" in (tmp_path / "r" / "report" / "paired.md").read_text()
