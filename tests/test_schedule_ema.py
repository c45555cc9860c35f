"""The learning-rate schedule (warm-up, cosine) and the EMA of the trained weights: the lr the
optimizer gets equals the formula, a resumed run continues both exactly, evaluation measures
the EMA while training goes on with the raw weights, and the defaults change nothing."""

import json
import math
import re
from dataclasses import asdict, replace

import pytest
import torch

from flowarena.core.io import load_tensors
from flowarena.harness.run import (
    EvalSettings,
    Evaluation,
    Preset,
    method_variant,
    plan,
    read_cell,
    resolve,
    run_experiment,
)
from flowarena.harness.run.config import upgrade_resolved
from flowarena.methods import build_method
from flowarena.methods.trainer import TrainConfig, TrainConfigError, Trainer
from flowarena.models.toy import load_toy
from flowarena.rewards import build_reward
from flowarena.tasks.prompts import load_toy_split

TRAIN = TrainConfig(prompts_per_epoch=2, group_size=4, minibatch_size=4, steps=4, sde_window=2,
                    inner_loops=2, lr=1e-2, lora_rank=4, lora_alpha=8)  # 2 × 2 = 4 optimizer steps an epoch
PRESET = Preset("sched", "tiny", epochs=3, train=TRAIN, reward="toy-colour",
                eval=EvalSettings(every=1, limit=2, ood_limit=2, steps=2, kl_prompts=2, samples=2))
pytestmark = pytest.mark.usefixtures("offline_single_thread")  # two threads on busy cores: many times slower
SCHEDULED = replace(TRAIN, lr_schedule="cosine", warmup_steps=3, min_lr_ratio=0.1, ema_decay=0.9, ema_every=2)


def _trainer(path, cfg, epochs=3):
    return Trainer(load_toy(path), build_method("grpo"), build_reward("toy-colour"), load_toy_split("train"),
                   cfg, seed=0, epochs=epochs)


def _expected_lr(s, lr=1e-2, warmup=3, total=12, floor=0.1):
    if s < warmup:
        return lr * (s + 1) / warmup
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))


def test_the_optimizer_gets_the_warm_up_then_the_cosine(tiny_path, monkeypatch):
    tr = _trainer(tiny_path, SCHEDULED)
    assert (tr.steps_per_epoch, tr.total_steps) == (4, 12)
    seen = []
    step, groups = tr.optimizer.step, tr.optimizer.param_groups
    monkeypatch.setattr(tr.optimizer, "step", lambda: (seen.append(groups[0]["lr"]), step()))
    for epoch in range(3):
        metrics, _ = tr.train_epoch(epoch)
        assert metrics["lr"] == pytest.approx(_expected_lr(4 * epoch + 3), rel=1e-12)
    assert seen == pytest.approx([_expected_lr(s) for s in range(12)], rel=1e-12)
    assert seen[:3] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2])  # warm-up: the 3rd step at the full lr
    assert seen[3] == pytest.approx(1e-2) and seen[-1] > 1e-3  # the cosine's start; its end is the run's
    assert all(a > b for a, b in zip(seen[3:], seen[4:]))  # the cosine only decays
    constant = _trainer(tiny_path, replace(TRAIN, warmup_steps=2))  # warm-up, then constant
    assert [constant.lr_at(s) for s in range(4)] == [5e-3, 1e-2, 1e-2, 1e-2]


def test_bad_settings_are_one_line(tiny_path):
    for kw, msg in [({"lr_schedule": "linear"}, "lr_schedule must be one of 'constant', 'cosine'"),
                    ({"warmup_steps": -1}, "warmup_steps must be"), ({"min_lr_ratio": 2.0}, "min_lr_ratio"),
                    ({"ema_decay": 1.0}, "ema_decay must be a finite number in [0, 1) or \"none\""),
                    ({"ema_decay": "none"}, "ema_decay"),
                    ({"ema_every": 0}, "ema_every must be")]:
        with pytest.raises(TrainConfigError, match=re.escape(msg)) as e:
            replace(TRAIN, **kw).validate()
        assert "\n" not in str(e.value)
    with pytest.raises(TrainConfigError, match="needs the run's length"):
        _trainer(tiny_path, replace(TRAIN, lr_schedule="cosine"), epochs=None)
    too_long = re.escape("warm-up (12 optimizer steps) must be shorter than the run (12: 3 epochs x 4)")
    with pytest.raises(TrainConfigError, match=too_long):
        _trainer(tiny_path, replace(TRAIN, warmup_steps=12), epochs=3)


def test_the_fields_reach_presets_and_method_variants(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('base = "smoke"\n[train]\nlr_schedule = "cosine"\nwarmup_steps = 5\nema_decay = 0.9\n'
                    '[method_overrides.dppo]\nema_decay = "none"\n')
    p = resolve(path)
    t = p.train
    assert (t.lr_schedule, t.warmup_steps, t.ema_decay, t.ema_every) == ("cosine", 5, 0.9, 8)
    _, dppo = method_variant("dppo", p)
    assert dppo.ema_decay is None  # "none" unsets it for one method
    _, grpo = method_variant("grpo@warmup_steps=7@min_lr_ratio=0.05@ema_every=4", p)
    assert (grpo.warmup_steps, grpo.min_lr_ratio, grpo.ema_every, grpo.ema_decay) == (7, 0.05, 4, 0.9)
    # a run recorded before the fields existed resumes as what it was: a constant lr, no EMA
    old = {k: v for k, v in asdict(TRAIN).items()
           if k not in ("lr_schedule", "warmup_steps", "min_lr_ratio", "ema_decay", "ema_every")}
    upgraded = upgrade_resolved({"eval": {}, "train": old})["train"]
    assert json.loads(json.dumps(upgraded)) == json.loads(json.dumps(asdict(TRAIN)))


def _weights(cell, kind):
    state = json.loads((cell / "checkpoints" / "latest" / "state.json").read_text())
    return (load_tensors(cell / "checkpoints" / "latest" / state["files"][kind])
            if kind in state["files"] else None)


def _rows(cell):
    rows = [json.loads(x) for x in (cell / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        for k in ("rollout_s", "update_s", "baseline_s", "wall_seconds"):
            r.pop(k, None)
    return rows


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_the_schedule_and_the_ema_exactly(tiny_path, tmp_path, interrupted):
    preset = replace(PRESET, epochs=2, train=SCHEDULED, eval=replace(PRESET.eval, every=2))
    whole = run_experiment(plan(tmp_path / "a", ["grpo"], "toy", preset, 1, tiny_path), progress=False)
    with interrupted():  # killed in the second epoch, after the first checkpoint
        run_experiment(plan(tmp_path / "b", ["grpo"], "toy", preset, 1, tiny_path), progress=False)
    cut = tmp_path / "b" / "toy" / "grpo" / "seed0"
    assert json.loads((cut / "checkpoints/latest/state.json").read_text())["epoch"] == 1
    assert not _equal(_weights(cut, "ema"), _weights(cut, "weights"))  # an EMA in the checkpoint, apart
    run_experiment(plan(tmp_path / "b", ["grpo"], "toy", preset, 1, tiny_path), progress=False)
    done = whole / "toy" / "grpo" / "seed0"
    assert _rows(cut) == _rows(done)  # the lr of every epoch, the losses, the rewards
    lrs = [_expected_lr(s, total=8) for s in (3, 7)]  # each epoch's last step's
    assert [r["lr"] for r in _rows(done)] == pytest.approx(lrs, rel=1e-12)
    for kind in ("weights", "ema", "optimizer"):
        assert _equal(_weights(cut, kind), _weights(done, kind)), kind
    cut_eval, done_eval = (json.loads((c / "eval" / "2.json").read_text()) for c in (cut, done))
    for key in ("metrics", "kl_to_pretrained"):  # the final EMA policy's scores (not their timing)
        assert cut_eval[key] == done_eval[key]


def test_evaluation_measures_the_ema_and_training_keeps_the_raw_weights(tiny_path, tmp_path, monkeypatch):
    measured = {"eval": [], "grid": []}  # the weights each evaluation and sample grid saw
    evaluate, grid = Evaluation.__call__, Evaluation.sample_grid

    def spy(self, model, method, train):
        if method is not None:  # not the base model's evaluation
            measured["eval"].append(model.trainable_state_dict())
        return evaluate(self, model, method, train)

    def grid_spy(self, model, png):
        measured["grid"].append(model.trainable_state_dict())
        return grid(self, model, png)

    monkeypatch.setattr(Evaluation, "__call__", spy)
    monkeypatch.setattr(Evaluation, "sample_grid", grid_spy)
    cells = {}
    for name, train in (("ema", replace(TRAIN, ema_decay=0.5, ema_every=1)), ("raw", TRAIN)):
        for seen in measured.values():
            seen.clear()
        run = run_experiment(plan(tmp_path / name, ["grpo"], "toy", replace(PRESET, epochs=2, train=train),
                                  1, tiny_path),
                             progress=False)
        cells[name] = cell = run / "toy" / "grpo" / "seed0"
        final, weights, ema = measured["eval"][-1], _weights(cell, "weights"), _weights(cell, "ema")
        assert len(measured["eval"]) == 2 and _equal(measured["grid"][-1], final)  # the final grid too
        if name == "ema":
            assert _equal(final, ema) and not _equal(final, weights)
            assert read_cell(cell)[2].name.startswith("ema_")  # bench export and bench eval --run take it
        else:
            assert ema is None and _equal(final, weights) and read_cell(cell)[2].name.startswith("weights_")
    # the EMA never reaches training: the raw weights and every training number are those of no EMA
    assert _equal(_weights(cells["ema"], "weights"), _weights(cells["raw"], "weights"))
    assert _rows(cells["ema"]) == _rows(cells["raw"])
    assert (json.loads((cells["ema"] / "eval" / "2.json").read_text())["metrics"]
            != json.loads((cells["raw"] / "eval" / "2.json").read_text())["metrics"])


def test_the_defaults_change_nothing(tiny_path, monkeypatch):
    """A constant lr, no warm-up, no EMA: the optimizer keeps lr, the metrics gain no key, and a
    cosine that ends where it starts (min_lr_ratio 1) trains bit for bit the same."""
    runs = {}
    flat = replace(TRAIN, lr_schedule="cosine", min_lr_ratio=1.0)
    for name, cfg in (("default", TRAIN), ("flat cosine", flat)):
        tr = _trainer(tiny_path, cfg)
        assert tr.ema is None
        rows = [tr.train_epoch(e)[0] for e in range(2)]
        assert tr.optimizer.param_groups[0]["lr"] == 1e-2
        for r in rows:
            for k in ("rollout_s", "update_s", "baseline_s"):
                r.pop(k, None)
        runs[name] = rows, tr.model.trainable_state_dict()
    assert "lr" not in runs["default"][0][0] and runs["flat cosine"][0][0]["lr"] == 1e-2
    for r in runs["flat cosine"][0]:
        r.pop("lr")
    assert runs["default"][0] == runs["flat cosine"][0]
    assert _equal(runs["default"][1], runs["flat cosine"][1])


def test_bench_run_refuses_a_warm_up_past_the_run_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from flowarena.harness.cli import app

    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", "--preset", "smoke", "--methods", "grpo,dppo@warmup_steps=1000",
                                 "--out", str(out)])
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("error: the warm-up (1000 optimizer steps) must be shorter than the run")
    assert not out.exists()  # refused before the base model was evaluated
