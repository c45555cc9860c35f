import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app

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
    r = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True)
    assert r.returncode == 0 and "Usage" in r.stdout


def test_smoke_run_in_a_subprocess(tmp_path):
    """`bench run --preset smoke` on the shipped toy model, as a user types it."""
    out = tmp_path / "smoke"
    r = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--preset", "smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Δ vs grpo [95 % CI]" in r.stdout and "| grpo " in r.stdout and "| dppo " in r.stdout
    assert max(len(line) for line in r.stdout.splitlines() if line.startswith("|")) <= 100
    assert "[2/2] dppo seed0" in r.stderr and "cell 2/2 done" in r.stderr  # the run's progress
    for f in ("report/tables.md", "report/tables.csv", "report/index.html", "manifest.json",
              "toy/grpo/seed0/result.json", "toy/dppo/seed0/metrics.jsonl"):
        assert (out / f).exists(), f


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, tmp_path):
    """A Ctrl-C mid-command ends with one `error:` line (no traceback) and the shell's 130."""
    import harness.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness.cli, "_load", interrupted)
    r = run("sample", "--prompt", "a red circle", "--out", tmp_path / "grid.png")
    assert r.exit_code == 130
    assert r.output.strip().splitlines() == [
        "error: interrupted; `bench run` and `bench pretrain` continue where they stopped when run again"]
