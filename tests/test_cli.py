import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from flowarena.harness.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_sample_writes_a_png_grid(tmp_path):
    out = tmp_path / "grid.png"
    r = run("sample", "--prompt", "two red circles left of a blue square", "--n", 3, "--steps", 2,
            "--out", out)
    assert r.exit_code == 0, r.output
    img = Image.open(out)
    assert img.size[0] > 3 * 32 * 4 and img.size[1] >= 32 * 4


def test_eval_prints_the_tables(tmp_path):
    r = run("eval", "--limit", 4, "--steps", 2, "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert "Soft-TIFA GM" in r.output and "skill: attribute" in r.output
    assert "ood preference" in r.output and (tmp_path / "r.json").exists()


def test_judge_check_prints_accuracy():
    r = run("judge-check", "--layouts", 1)
    assert r.exit_code == 0, r.output
    assert "position" in r.output and "falsified" in r.output


@pytest.mark.parametrize("args", [["--help"], ["eval", "--help"]])
def test_console_script_help(args):
    r = subprocess.run([sys.executable, "-m", "flowarena.harness", *args], capture_output=True, text=True)
    assert r.returncode == 0 and "Usage" in r.stdout


def test_smoke_run_in_a_subprocess(tmp_path):
    """`bench run --preset smoke` on the shipped toy model, as a user types it."""
    out = tmp_path / "smoke"
    r = subprocess.run([sys.executable, "-m", "flowarena.harness", "run", "--preset", "smoke",
                        "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Δ vs grpo [95 % CI]" in r.stdout and "| grpo " in r.stdout and "| dppo " in r.stdout
    assert max(len(line) for line in r.stdout.splitlines() if line.startswith("|")) <= 100
    assert "[2/2] dppo seed0" in r.stderr and "cell 2/2 done" in r.stderr  # the run's progress
    for f in ("report/tables.md", "report/tables.csv", "report/index.html", "manifest.json",
              "toy/grpo/seed0/result.json", "toy/dppo/seed0/metrics.jsonl"):
        assert (out / f).exists(), f


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, tmp_path):
    """A Ctrl-C mid-command ends with one `error:` line (no traceback) and the shell's 130."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    import flowarena.harness.cli

    monkeypatch.setattr(flowarena.harness.cli, "_load", interrupted)
    r = run("sample", "--prompt", "a red circle", "--out", tmp_path / "grid.png")
    assert r.exit_code == 130
    assert r.output.strip().splitlines() == [
        "error: interrupted; `bench run` and `bench pretrain` continue where they stopped when run again"]


@pytest.mark.parametrize("args", [
    ["sample", "--prompt", "a red circle", "--n", "abc"],  # not a number
    ["sample"],  # a required option missing
    ["run", "--no-such-option"],
    ["no-such-command"],
])
def test_a_malformed_command_line_is_one_line_with_clicks_exit_code(args):
    """The README's convention: one `error:` line naming the command's help, exit code 2."""
    r = run(*args)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "--help" in lines[0] and "╭" not in r.output


def test_the_issues_examples_are_refused_before_any_work(tmp_path):
    """Values that used to train, hang or print a traceback: each one line, exit 1, nothing written."""
    (tmp_path / "betas.toml").write_text('base = "smoke"\n[train]\nadam_betas = [0.9, 1.5]\n')
    (tmp_path / "samples.toml").write_text('base = "smoke"\n[eval]\nsamples = -3\n')
    (tmp_path / "guidance.toml").write_text('base = "smoke"\n[eval]\nguidance = nan\n')
    (tmp_path / "empty.toml").write_text('base = "smoke"\nmethods = []\n')
    out = tmp_path / "run"
    cases = [
        (["run", "--methods", "grpo@group_size=2.5"], "group_size must be an integer >= 2, not '2.5'"),
        (["run", "--config", tmp_path / "betas.toml"], "adam_betas'[1] must be a finite number in [0, 1)"),
        (["run", "--config", tmp_path / "samples.toml"], "field 'samples' must be an integer >= 1, not -3"),
        (["run", "--config", tmp_path / "guidance.toml"], "field 'guidance' must be a finite number >= 0"),
        (["run", "--config", tmp_path / "empty.toml"], "field 'methods' must be a non-empty list"),
        (["run", "--methods", "grpo,dppo@delta=1e-6,grpo"], "method 'grpo' is named twice"),
        (["run", "--methods", "dppo@delta=1e-6@delta=2e-6"], "'delta' is set twice"),
        (["run", "--methods", "ppo9000", "--dump-config"], "unknown method 'ppo9000'"),
        (["run", "--epochs", -2], "--epochs must be an integer >= 1, not -2"),
        (["sample", "--prompt", "a red circle", "--steps", 10**6], "--steps must be an integer in [1, 1000]"),
        (["sample", "--prompt", "a red circle", "--seed", 2**40], "--seed must be an integer >= 0 (at most"),
        (["sample", "--prompt", "a red circle", "--n", -1], "--n must be an integer in [1, 4096], not -1"),
        (["pretrain", "toy", "--steps", -1, "--out", out], "--steps must be an integer >= 1, not -1"),
    ]
    for args, message in cases:
        r = run(*args, *(["--out", out] if args[0] == "run" else []))
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 1 and len(lines) == 1 and message in lines[0], (args, r.output)
        assert not out.exists(), args


def test_a_method_setting_reads_as_its_type():
    """`grpo@lr=.001` is a number (it used to be a string and a traceback); lists are JSON, and a
    comma inside brackets does not split --methods."""
    from flowarena.harness.run.config import get_preset, method_variant, split_methods

    specs = split_methods("grpo@lr=.001,dppo@adam_betas=[0.8, 0.9]")
    assert specs == ["grpo@lr=.001", "dppo@adam_betas=[0.8, 0.9]"]
    assert method_variant(specs[0], get_preset("smoke"))[1].lr == 0.001
    assert method_variant(specs[1], get_preset("smoke"))[1].adam_betas == (0.8, 0.9)
    noclip = method_variant("grpo-noclip@clip_range=inf", get_preset("smoke"))[0]
    assert noclip.config.clip_range == float("inf")  # inf is allowed where it means "none"
