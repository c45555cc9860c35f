import json

import pandas as pd
import pytest
import torch

from flowarena.harness.run import (
    CellRun,
    EvalSettings,
    Evaluation,
    Preset,
    RunError,
    base_eval,
    plan,
    run_experiment,
)
from flowarena.methods import build_method, get_method, method_names
from flowarena.methods.trainer import TrainConfig, Trainer
from flowarena.models.toy import load_toy
from flowarena.rewards import build_reward
from flowarena.tasks.prompts import load_toy_split

PRESET = Preset(
    "test", "tiny", epochs=2,
    train=TrainConfig(prompts_per_epoch=2, group_size=4, minibatch_size=4, steps=4, sde_window=2,
                      inner_loops=2, lr=1e-2, lora_rank=4, lora_alpha=8),
    eval=EvalSettings(every=1, limit=4, ood_limit=4, steps=3, kl_prompts=2, samples=2),
    reward="toy-colour")


def _trainer(path, method, seed=0):
    return Trainer(load_toy(path), build_method(method), build_reward("toy-colour"),
                   load_toy_split("train"), PRESET.train, seed=seed)


def test_same_seed_same_prompts_and_noise_across_methods(tiny_path):
    a, b = _trainer(tiny_path, "grpo"), _trainer(tiny_path, "dppo")
    for epoch in (0, 3):
        ra, rb = a.rollout(epoch), b.rollout(epoch)
        assert ra.prompts == rb.prompts and ra.window == rb.window
        assert torch.equal(ra.noise, rb.noise)
    other = _trainer(tiny_path, "grpo", seed=1).rollout(0)
    assert not torch.equal(other.noise, a.rollout(0).noise)


@pytest.mark.parametrize("method", [m for m in method_names() if get_method(m).trains_on == "sde"])
def test_first_minibatch_is_on_policy(tiny_path, method):
    """Before any update, ρ = 1 and KL(old ‖ new) = 0 exactly (docs/methods.md §6)."""
    tr = _trainer(tiny_path, method)
    ro = tr.rollout(0)
    _, samples = tr.update(ro, 0)
    first = slice(0, PRESET.train.minibatch_size)  # first mini-batch, first trained step
    assert torch.allclose(samples["ratio"][first], torch.ones(4, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(samples["kl"][first], torch.zeros(4), atol=1e-12)
    later = samples["inner"] == 1  # the second pass is off-policy
    assert (samples["ratio"][later] != 1).any()


def test_training_moves_the_policy_and_reference_stays(tiny_path):
    tr = _trainer(tiny_path, "grpo")
    metrics, _ = tr.train_epoch(0)
    assert metrics["grad_norm"] > 0 and metrics["skipped_updates"] == 0
    assert "k0/ratio_mean" in metrics or any(k.endswith("/ratio_mean") for k in metrics)
    x = torch.randn(2, 3, 32, 32)
    e = tr.model.encode_prompts(["a red circle"] * 2)
    s = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        v = tr.model.velocity(x, s, e)
        with tr.model.reference():
            v_ref = tr.model.velocity(x, s, e)
    base = load_toy(tiny_path)
    with torch.no_grad():
        v_base = base.velocity(x, s, e)
    assert not torch.allclose(v, v_ref) and torch.allclose(v_ref, v_base, atol=1e-6)


def _numbers(run):
    df = pd.read_csv(run / "report" / "tables.csv").drop(columns="wall_min")  # timing, not results
    metrics = {m: [json.loads(x) for x in (run / f"toy/{m}/seed0/metrics.jsonl").read_text().splitlines()]
               for m in ("grpo", "dppo")}
    for rows in metrics.values():
        for r in rows:
            for k in ("rollout_s", "update_s", "baseline_s", "wall_seconds"):
                r.pop(k, None)
    return df, metrics


def test_run_is_deterministic_and_resumes(tiny_path, tmp_path, monkeypatch, interrupted):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_experiment(plan(a, ["grpo", "dppo"], "toy", PRESET, 1, tiny_path), progress=False)
    run_experiment(plan(b, ["grpo", "dppo"], "toy", PRESET, 1, tiny_path), progress=False)
    da, ma = _numbers(a)
    db, mb = _numbers(b)
    pd.testing.assert_frame_equal(da, db)
    assert ma == mb
    assert (a / "toy" / "grpo" / "seed0" / "samples" / "final.png").exists()
    assert len(list((a / "toy" / "dppo" / "seed0" / "diagnostics").glob("*.safetensors"))) == 2

    # interrupt the first cell after one epoch, then rerun the same command
    with interrupted():
        run_experiment(plan(c, ["grpo", "dppo"], "toy", PRESET, 1, tiny_path), progress=False)
    assert json.loads((c / "toy/grpo/seed0/checkpoints/latest/state.json").read_text())["epoch"] == 1
    run_experiment(plan(c, ["grpo", "dppo"], "toy", PRESET, 1, tiny_path), progress=False)
    dc, mc = _numbers(c)
    pd.testing.assert_frame_equal(da, dc)
    assert ma == mc

    # finished cells are not recomputed; the manifest keeps the first start and lists the resumptions
    first = json.loads((c / "manifest.json").read_text())
    first["sessions"][0]["cpu"] = "AVX2"  # as if the first session had run on another host
    (c / "manifest.json").write_text(json.dumps(first))
    monkeypatch.setattr(CellRun, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rerun")))
    run_experiment(plan(c, ["grpo", "dppo"], "toy", PRESET, 1, tiny_path), progress=False)
    last = json.loads((c / "manifest.json").read_text())
    assert last["started"] == first["started"] and len(last["resumed"]) == len(first["resumed"]) + 1 == 2
    assert last["status"] == "done"
    # the wall time adds up the sessions, the interrupted one included
    assert len(last["sessions"]) == 3 and last["sessions"][0]["started"] == first["sessions"][0]["started"]
    assert last["seconds"] == pytest.approx(sum(s["seconds"] for s in last["sessions"]), abs=0.11)
    assert last["seconds"] >= first["seconds"] > 0
    # where and with what code each session ran: the earlier ones keep theirs
    assert last["sessions"][0]["cpu"] == "AVX2" and last["sessions"][-1]["cpu"] == last["versions"]["cpu"]
    assert all(s["flowarena"] == last["versions"]["flowarena"] for s in last["sessions"])


def test_mismatched_resume_is_refused(tiny_path, tmp_path):
    run = tmp_path / "r"
    base_eval(run, "toy", tiny_path, 0, Evaluation(PRESET.eval), PRESET.train)
    (run / "manifest.json").write_text(json.dumps({"config": {"resolved": {"x": 1}, "model": "toy",
                                                              "methods": ["grpo"], "seeds": 1}}))
    with pytest.raises(RunError, match="another configuration"):
        run_experiment(plan(run, ["grpo"], "toy", PRESET, 1, tiny_path), progress=False)


def test_method_variants_change_one_setting():
    from flowarena.harness.run import method_variant
    from flowarena.models.toy import ToyModel

    method, train = method_variant("dppo@delta=3e-6@beta=0.04", PRESET)
    assert method.config.delta == 3e-6 and train.beta == 0.04 and train.lr == PRESET.train.lr
    method, train = method_variant("grpo", PRESET)
    assert method.config.clip_range == ToyModel.calibration["grpo"]["clip_range"] and train == PRESET.train
    from flowarena.harness.run import PRESETS

    method, _ = method_variant("grpo", PRESETS["sd35-geneval2"])  # real models: published value
    assert method.config.clip_range == 1e-4
    method, _ = method_variant("dppo@delta=3e-6", PRESET)  # the user's value beats the calibration
    assert method.config.delta == 3e-6
    for bad, msg in [("dppo@gamma=1", "no setting|neither"), ("dppo@delta", "key=value"),
                     ("dppo@delta=-1", "delta"), ("ppo9@delta=1", "unknown method")]:
        with pytest.raises(ValueError, match=msg):
            method_variant(bad, PRESET)


def test_shared_group_noise_starts_each_group_from_one_noise(tiny_path):
    from dataclasses import replace

    tr = Trainer(load_toy(tiny_path), build_method("grpo"), build_reward("toy-colour"),
                 load_toy_split("train"), replace(PRESET.train, group_noise="shared"), seed=0)
    ro = tr.rollout(0)
    G = PRESET.train.group_size
    groups = ro.noise.view(-1, G, *ro.noise.shape[1:])
    assert torch.equal(groups[:, :1].expand_as(groups), groups)  # one noise per group
    assert not torch.equal(groups[0, 0], groups[1, 0])  # different across groups
    # the SDE steps make the group's images differ
    imgs = ro.images.view(-1, G, *ro.images.shape[1:])
    assert not torch.equal(imgs[0, 0], imgs[0, 1])


def test_a_shared_group_computes_its_first_steps_once(tiny_path, monkeypatch):
    """With shared group noise the steps up to the first SDE step run on one row per group, in
    the rollout and in the update's first trained step: the same trajectories, log-probs and
    gradients as computing every row, on G× fewer rows there."""
    from dataclasses import replace

    cfg = replace(PRESET.train, group_noise="shared")
    P, G = cfg.prompts_per_epoch, cfg.group_size
    runs = {}
    for shared in (True, False):
        tr = Trainer(load_toy(tiny_path), build_method("grpo"), build_reward("toy-colour"),
                     load_toy_split("train"), cfg, seed=0)
        rows, velocity = [], tr.model.velocity

        def counting(x, *a, rows=rows, velocity=velocity, **k):
            rows.append(len(x))
            return velocity(x, *a, **k)

        monkeypatch.setattr(tr.model, "velocity", counting)
        if not shared:  # the reference: every row computed
            monkeypatch.setattr(Trainer, "_shared_velocity",
                                staticmethod(lambda x, k, sig, e, groups, velocity: velocity(x, k, sig, e)))
        ro = tr.rollout(0)
        first = ro.window[0]
        counted = list(rows)
        idx = torch.tensor([0, G, 1, 2 * G - 1, 2])  # three rows of group 0, two of group 1
        r, kl = tr.recompute(ro, 0, first, idx, tr._train_velocity)
        (r.log_prob.sum() + r.mean.square().sum()).backward()
        runs[shared] = ro, counted, sum(rows[len(counted):]), r, [p.grad.clone() for p in tr.params]
        monkeypatch.undo()
    (ro, counted, update_rows, r, grads), (ro0, counted0, update_rows0, r0, grads0) = runs[True], runs[False]
    assert ro.group_size == G and counted[:first + 1] == [P] * (first + 1)
    assert counted0 == [P * G] * cfg.steps and update_rows == 2 and update_rows0 == 5
    for a, b in zip(ro.x + ro.old_mean + ro.old_log_prob, ro0.x + ro0.old_mean + ro0.old_log_prob):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(ro.images, ro0.images, atol=1e-5)
    assert torch.allclose(r.mean, r0.mean, atol=1e-5)
    # fp32 sums in another order: equal to a few ulps of each tensor's scale (an element-wise rtol
    # fails on near-zero entries of an AVX-512 host's sums)
    assert all((a - b).abs().max() <= 1e-5 * b.abs().max() for a, b in zip(grads, grads0))
    assert any(g.abs().sum() > 0 for g in grads)


def test_a_method_registered_in_a_test_runs_through_bench_run(tiny_path, tmp_path):
    """The trainer and harness need no edit for a new method: register one here and run it."""
    from dataclasses import dataclass

    from flowarena.methods.base import METHODS, Method, MethodConfig, StepLoss, register_method

    @dataclass
    class HalfConfig(MethodConfig):
        scale: float = 0.5
        """Multiplies the plain policy gradient."""

    @register_method("half-pg")
    class HalfPG(Method):
        description = "a test method: half the plain policy gradient"
        paper = "none"
        Config = HalfConfig

        def step_loss(self, s):
            ratio = (s.log_prob - s.old_log_prob).exp()
            return StepLoss(-self.config.scale * s.advantages * ratio, ratio.detach(), ratio < 0)

    try:
        run = run_experiment(plan(tmp_path / "run", ["half-pg", "half-pg@scale=2.0"], "toy", PRESET,
                                  model_path=tiny_path),
                             progress=False)
        for name in ("half-pg", "half-pg@scale=2.0"):
            result = json.loads((run / "toy" / name / "seed0" / "result.json").read_text())
            assert result["epochs"] == PRESET.epochs
        table = (run / "report" / "tables.md").read_text()
        assert "half-pg@scale=2.0" in table and (run / "report" / "index.html").exists()
        floor = (run / "report" / "noise_floor.md").read_text().splitlines()
        assert [c.strip() for c in floor[0].split("|")[1:-1]] == [
            "model", "method", "seed", "abs log ρ mean", "abs log ρ max", "KL mean", "KL max",
            "rounding abs log ρ", "rounding KL", "KL of the change (fp32)", "ε or δ"]
        assert sum(ln.startswith("| toy ") for ln in floor) == 2  # one row per cell, measured on epoch 0
        assert "Ratio noise floor" in (run / "report" / "index.html").read_text()
    finally:
        METHODS.remove("half-pg")


def test_experiment_presets_name_valid_methods_rewards_and_seeds():
    from flowarena.harness.run import PRESETS, method_variant
    from flowarena.methods import method_names
    from flowarena.models.toy import ToyModel
    from flowarena.rewards import build_rewards, check_rewards

    experiments = ("main", "main-multi", "stability", "ablation", "sweep")
    assert set(experiments) <= set(PRESETS)
    assert set(PRESETS["main"].methods) == {"grpo", "cps", "guard", "dppo", "dppo-cps"}
    assert PRESETS["main-multi"].methods == PRESETS["main"].methods
    assert PRESETS["main-multi"].train.reward_aggregation == "normalised"
    assert PRESETS["stability"].train.inner_loops == 2
    assert PRESETS["stability"].epochs > PRESETS["main"].epochs
    assert {"dppo-sym", "dppo-sampled-kl", "grpo-noclip"} <= set(PRESETS["ablation"].methods)
    for name in experiments:
        assert PRESETS[name].seeds >= 3
    for preset in PRESETS.values():
        preset.train.validate()
        if preset.model == "toy":  # the real recipes' judges are not on this machine
            build_rewards(preset.reward, **preset.reward_options)
        else:
            check_rewards(preset.reward, preset.reward_options)
        for spec in preset.methods:
            method_variant(spec, preset)
    assert set(ToyModel.calibration) <= set(method_names())
    # the sweep brackets the calibrated δ by a decade on each side
    sweep = [method_variant(m, PRESETS["sweep"])[0].config.delta for m in PRESETS["sweep"].methods]
    delta = ToyModel.calibration["dppo"]["delta"]
    assert min(sweep) == pytest.approx(delta / 10) and max(sweep) == pytest.approx(delta * 10)


def test_export_writes_the_fine_tuned_toy_policy(tiny_path, tmp_path):
    """`bench export` of a toy cell: one weights file, LoRA merged, that loads as a plain toy
    model through --model-path and has the fine-tuned policy's velocity, not the base's."""
    from dataclasses import replace

    from typer.testing import CliRunner

    from flowarena.harness.cli import app
    from flowarena.harness.run import load_cell_policy

    run = run_experiment(plan(tmp_path / "r", ["grpo"], "toy", replace(PRESET, epochs=1), 1, tiny_path),
                         progress=False)
    cell = run / "toy" / "grpo" / "seed0"
    r = CliRunner().invoke(app, ["export", str(cell), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    exported = load_toy(tmp_path / "out" / "toy.safetensors")
    policy, config = load_cell_policy(cell)
    base = load_toy(tiny_path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    s = torch.tensor([0.9, 0.4])
    with torch.no_grad():
        e = base.encode_prompts(["a red circle", "two blue squares"])
        v_exp, v_pol, v_base = (m.velocity(x, s, e) for m in (exported, policy, base))
    assert config["method"] == "grpo"
    assert (v_pol - v_base).abs().max() > 1e-4  # training moved the policy
    torch.testing.assert_close(v_exp, v_pol, atol=1e-5, rtol=1e-5)


def test_the_manifest_names_the_code_commit():
    import subprocess
    from pathlib import Path

    from flowarena.harness.run import versions as _versions

    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    commit = _versions()["flowarena"]
    assert commit == (head or None) or commit.startswith(head + "+dirty")


def test_replay_reproduces_the_logged_rollouts(tiny_path, tmp_path):
    """benchmarks/replay_rollouts.py rebuilds a cell's trainer from its config.json and
    replays its epochs: with the base model the first epoch's reward is the logged one (the
    policy had not moved), with the final weights it is not; both reward components come back."""
    import importlib.util
    from dataclasses import replace
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "replay_rollouts", Path(__file__).parents[1] / "benchmarks" / "replay_rollouts.py")
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    preset = replace(PRESET, reward="toy-colour=1,toy-pick=0.1", reward_options={},
                     train=replace(PRESET.train, inner_loops=1, reward_aggregation="normalised"))
    run = run_experiment(plan(tmp_path / "r", ["dppo@delta=1e-9"], "toy", preset, 1, tiny_path),
                         progress=False)
    r = replay.replay(run / "toy" / "dppo@delta=1e-9" / "seed0", echo=lambda _: None)
    assert r["epoch"] == [0, 1]
    assert r["base"][0] == pytest.approx(r["logged"][0], rel=1e-6)
    assert r["final"][0] != pytest.approx(r["base"][0], rel=1e-6)  # training moved the policy
    assert r["base"][1] != pytest.approx(r["base"][0], rel=1e-3)  # another epoch, other prompts
    assert set(r["components"]) == {"toy-colour", "toy-pick"}
    colour, pick = (torch.tensor(r["components"][k])[:, 0] for k in ("toy-colour", "toy-pick"))
    assert torch.allclose(colour + 0.1 * pick, torch.tensor(r["base"]), rtol=1e-5)
