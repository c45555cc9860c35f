"""The published recipes as presets: each for its model, its numbers as sourced, no toy
setting on a real model; and the prompt sets and shared scorers a real run uses."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from typer.testing import CliRunner

from flowarena.harness.cli import app
from flowarena.harness.run import PRESETS, RunError, load_preset, method_variant, recipe
from flowarena.methods import build_method, method_names
from flowarena.models.toy import ToyModel
from flowarena.tasks.prompts import DATA, load_prompts, subset

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REAL = {n: p for n, p in PRESETS.items() if p.model != "toy"}


def test_every_real_model_has_its_recipes():
    assert set(REAL) == {"sd35-geneval2", "sd35-pickscore", "sd35-multi", "flux1-dev-geneval2",
                         "flux2-klein-geneval2", "sd35-nft", "sd35-awm", "sd35-dgpo"}
    for model, default in (("toy", "default"), ("sd35", "sd35-geneval2"), ("flux1-dev", "flux1-dev-geneval2"),
                           ("flux2-klein", "flux2-klein-geneval2")):
        name, p = recipe(model, None)  # --model X without --preset: the model's own recipe
        assert (name, p.name) == (model, default)
    assert recipe(None, "flux1-dev-geneval2")[0] == "flux1-dev"  # --preset P without --model
    assert recipe(None, None) == ("toy", PRESETS.get("default"))


def test_dump_config_of_sd35_shows_the_papers_setting(tmp_path):
    """`bench run --model sd35 --model-path DIR --dump-config`: the recipe's numbers."""
    r = CliRunner().invoke(app, ["run", "--model", "sd35", "--model-path", str(tmp_path), "--dump-config"])
    assert r.exit_code == 0, r.output
    d = tomllib.loads(r.output)
    assert (d["name"], d["model"], d["resolution"], d["reward"], d["train_prompts"]) == (
        "sd35-geneval2", "sd35", 512, "geneval2", "geneval2-train")
    t, e = d["train"], d["eval"]
    assert (t["group_size"], t["prompts_per_epoch"], t["steps"], t["sde_window"], t["window_fraction"]) == (
        16, 64, 10, 3, 0.5)
    assert (t["guidance"], t["lr"], t["lora_rank"], t["lora_alpha"]) == (1.0, 3e-4, 32, 64.0)
    assert t["adv_std"] == "global" and t["beta"] == 0.0  # the no-CFG recipes: no KL term
    assert t["minibatch_size"] * 2 == t["group_size"] * t["prompts_per_epoch"]  # 2 updates per epoch
    assert e["benchmarks"] == ["geneval2", "pickscore"] and e["steps"] == 40 and e["final_limit"] == "none"
    assert d["method_overrides"] == {"guard": {"lr": 1e-4}}


@pytest.mark.parametrize("name", sorted(REAL))
def test_no_toy_setting_reaches_a_real_model(name):
    p = REAL[name]
    toy = PRESETS.get("default")
    assert not (set(p.method_overrides) & set(ToyModel.calibration) - {"guard"})
    assert p.train.lr != toy.train.lr and p.train.group_noise == "independent"
    assert p.train.window_fraction == 0.5 and p.train.lora_rank in (32, 64)
    assert "toy" not in p.eval.benchmarks and not p.train_prompts.startswith("toy")
    assert not p.reward.startswith("toy") and p.resolution == 512
    for m in method_names():  # the published thresholds: the method files' defaults
        method, train = method_variant(m, p)
        assert method.config == build_method(m).config
        assert train.lr == (1e-4 if m == "guard" else 3e-4)


@pytest.mark.parametrize("name,method,batch,steps,beta", [
    ("sd35-nft", "nft", (48, 24), 10, 1e-4), ("sd35-awm", "awm", (72, 24), 14, 1e-3),
    ("sd35-dgpo", "dgpo", (8, 16), 10, 0.02)])
def test_the_forward_process_recipes_are_their_authors(name, method, batch, steps, beta):
    """One optimizer step an epoch on the whole batch, CFG-free, the authors' sizes and KL weight."""
    p = REAL[name]
    t = p.train
    assert p.methods == (method,) and (t.prompts_per_epoch, t.group_size) == batch and t.steps == steps
    assert t.minibatch_size == t.prompts_per_epoch * t.group_size and t.beta == beta
    assert t.guidance == p.eval.guidance == 1.0 and t.weight_decay == 1e-4


def test_flux1_dev_trains_and_is_measured_at_its_distilled_guidance():
    p = PRESETS.get("flux1-dev-geneval2")
    assert p.train.guidance == p.eval.guidance == 3.5
    assert (p.train.lora_rank, p.train.lora_alpha) == (64, 128.0)


def test_a_recipe_runs_on_its_own_model_only(tmp_path):
    with pytest.raises(RunError, match="preset smoke is a recipe for the toy model, not sd35; recipes for "
                                       "sd35: sd35-dgpo, sd35-nft, sd35-pickscore, sd35-multi, sd35-awm, "
                                       "sd35-geneval2"):
        recipe("sd35", "smoke")
    with pytest.raises(RunError, match="preset sd35-geneval2 is a recipe for the sd35 model, not toy"):
        recipe("toy", "sd35-geneval2")
    mixed = tmp_path / "mixed.toml"
    mixed.write_text('base = "default"\nmodel = "sd35"\n')  # would carry the toy calibration
    with pytest.raises(RunError, match="a recipe for sd35 cannot start from 'default', a recipe for toy"):
        load_preset(mixed)
    own = tmp_path / "own.toml"  # a user's recipe on a real base keeps it
    own.write_text('base = "sd35-geneval2"\nepochs = 3\n[method_overrides.dppo]\ndelta = 3e-6\n')
    p = load_preset(own)
    assert p.model == "sd35" and method_variant("dppo", p)[0].config.delta == 3e-6
    own.write_text('base = "sd35-geneval2"\n[method_overrides.dppo]\ndeltaa = 3e-6\n')
    with pytest.raises(RunError, match=r"\[method_overrides.dppo\]: neither dppo nor the trainer has"):
        method_variant("dppo", load_preset(own))


def test_lora_settings_left_to_the_model_take_its_defaults(tiny_path):
    from flowarena.models import load_model

    model = load_model("toy", tiny_path)
    model.setup_training(None, None, None)
    assert model.lora_rank == model.default_lora_rank == 16


def test_the_partiprompts_splits_are_disjoint_and_licensed():
    train, test = load_prompts("parti-train"), load_prompts("parti-test")
    assert (len(train), len(test)) == (1093, 539)
    assert not {r["prompt"].lower() for r in train} & {r["prompt"].lower() for r in test}
    assert len({r["category"] for r in test}) == 12  # every category on both sides
    assert "Apache License" in (DATA / "parti" / "LICENSE").read_text()


def test_the_val_subset_spreads_over_atom_counts():
    records = subset(load_prompts("geneval2-val"), 16)
    assert Counter(r["atom_count"] for r in records) == {k: 2 for k in range(3, 11)}


def test_a_runs_judge_and_pickscore_load_once_for_evaluation_and_reward(tmp_path, offline_single_thread):
    from flowarena.harness.run import EvalSettings, Evaluation
    from flowarena.rewards import build_rewards
    from flowarena.rewards.vqa import VQAJudge
    from tests.tiny_scorers import save_clip, save_qwen3_vl

    options = {"judge": str(save_qwen3_vl(tmp_path / "judge")),
               "pickscore": str(save_clip(tmp_path / "pick"))}
    evaluation = Evaluation(EvalSettings(benchmarks=("geneval2", "pickscore")), "cpu", options)
    reward = build_rewards("geneval2=1,pickscore=1", "cpu", evaluation.options, **options)
    geneval2, pickscore = (b.scorer for b in evaluation.benchmarks)

    def held(scorer, kind):
        return next(c.cell_contents for c in scorer.__closure__ if isinstance(c.cell_contents, kind))

    from flowarena.rewards.pickscore import PickScoreReward

    assert held(geneval2, VQAJudge) is reward.parts[0][2].judge
    assert held(pickscore, PickScoreReward).clip is reward.parts[1][2].clip
