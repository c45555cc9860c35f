"""Presets are data: TOML files that name a base and override fields, read back exactly,
and `--dump-config` writes what `--config` runs."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flowarena.harness.cli import app
from flowarena.harness.run import PRESETS, RunError, load_preset, resolve, to_toml

runner = CliRunner()


def test_shipped_presets_read_their_base_and_override_it():
    default, main, multi = PRESETS.get("default"), PRESETS.get("main"), PRESETS.get("main-multi")
    assert main.train == default.train and main.eval == default.eval and main.seeds == 3
    assert main.reward_options == {"aggregate": "am"}  # inherited
    assert multi.train.reward_aggregation == "normalised" and multi.train.lr == default.train.lr
    assert multi.reward_options == {}  # a new reward starts its options afresh
    assert PRESETS.get("smoke").method_overrides["dppo"] == {"delta": 1e-7}  # the toy calibration


@pytest.mark.parametrize("name", PRESETS.names())
def test_dump_config_reads_back_to_the_same_preset(name, tmp_path):
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(PRESETS.get(name)))
    assert load_preset(path) == PRESETS.get(name)


def test_cli_dump_config_applies_the_command_line(tmp_path):
    r = runner.invoke(app, ["run", "--preset", "smoke", "--epochs", "5", "--methods", "dppo@delta=1e-6",
                            "--seeds", "2", "--reward-aggregation", "normalised", "--dump-config"])
    assert r.exit_code == 0, r.output
    (tmp_path / "mine.toml").write_text(r.output)
    mine = load_preset(tmp_path / "mine.toml")
    assert (mine.epochs, mine.methods, mine.seeds) == (5, ("dppo@delta=1e-6",), 2)
    assert mine.train.reward_aggregation == "normalised" and mine.eval == PRESETS.get("smoke").eval
    assert not list(Path.cwd().glob("runs/mine"))  # nothing ran


def test_a_user_recipe_on_a_base(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text('base = "default"\nepochs = 3\n[eval]\nlimit = "none"\n[method_overrides.dppo]\n'
                    'delta = 3e-7\n')
    p = resolve(path)
    assert p.name == "recipe" and p.epochs == 3 and p.eval.limit is None
    assert p.eval.ood_limit == PRESETS.get("default").eval.ood_limit  # tables merge key by key
    assert p.method_overrides["dppo"] == {"delta": 3e-7}
    assert p.method_overrides["grpo"] == {"clip_range": 5e-6}


@pytest.mark.parametrize("text, message", [
    ('[eval]\nbenchmark = ["toy"]\n', "[eval]: unknown field 'benchmark' (allowed: benchmarks, every"),
    ('[train]\nlr = "fast"\n', "field 'lr' must be a finite number > 0, not 'fast'"),
    ('methods = "grpo"\n', "field 'methods' must be a non-empty list"),
    ('base = "main"\nseeds = 2.5\n', "field 'seeds' must be an integer"),
    ('base = "x.toml"\n', "base preset 'x.toml' does not exist"),
])
def test_bad_recipes_are_one_line_naming_file_and_field(text, message, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(RunError) as e:
        resolve(path)
    assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_overrides_are_checked_like_files():
    with pytest.raises(RunError, match="field .epochs. must be an integer >= 1, not 0"):
        resolve("smoke", epochs=0)
    assert resolve("default", reward="toy-colour").reward_options == {}
    assert resolve("default", reward_options={"x": 1}).reward_options == {"aggregate": "am", "x": 1}


def test_size_knobs_scale_a_preset_down():
    r = runner.invoke(app, ["run", "--preset", "smoke", "--prompts-per-epoch", "4", "--group-size", "2",
                            "--steps", "4", "--eval-steps", "4", "--eval-limit", "8", "--dump-config"])
    assert r.exit_code == 0, r.output
    import tomllib

    data = tomllib.loads(r.output)
    train = data["train"]
    assert (train["prompts_per_epoch"], train["group_size"], train["steps"]) == (4, 2, 4)
    assert (data["eval"]["steps"], data["eval"]["limit"]) == (4, 8)
    bad = runner.invoke(app, ["run", "--preset", "smoke", "--steps", "1"])
    assert bad.exit_code == 1 and "SDE window (2) must be at most the steps (1)" in bad.output
