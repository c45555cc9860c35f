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
    assert "Preference score" in r.output and (tmp_path / "r.json").exists()


def test_judge_check_prints_accuracy():
    r = run("judge-check", "--layouts", 1)
    assert r.exit_code == 0, r.output
    assert "position" in r.output and "falsified" in r.output


def _bad(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint")
    return [
        (["sample", "--prompt", "a red circle", "--model", "sd99"], "unknown model"),
        (["sample", "--prompt", "  "], "prompt is empty"),
        (["sample", "--prompt", "a purple banana"], "outside the toy vocabulary"),
        (["sample", "--prompt", "a red circle", "--model-path", tmp_path / "nope.safetensors"], "not found"),
        (["sample", "--prompt", "a red circle", "--model-path", corrupt], "corrupt"),
        (["sample", "--prompt", "a red circle", "--n", 0], "at least 1"),
        (["eval", "--model", "flux9"], "unknown model"),
        (["eval", "--limit", 1], "--limit"),
        (["pretrain", "banana"], "unknown pretraining target"),
        (["run", "--methods", "grpo,ppo9000", "--out", tmp_path / "r"], "unknown method"),
        (["run", "--preset", "huge", "--out", tmp_path / "r"], "unknown preset"),
        (["run", "--seeds", 0, "--out", tmp_path / "r"], "--seeds"),
        (["run", "--methods", " , ", "--out", tmp_path / "r"], "--methods is empty"),
        (["report", tmp_path / "nope"], "not a run directory"),
        (["export", tmp_path, "--out", tmp_path / "x"], "not a trained cell"),
        (["run", "--epochs", 0, "--out", tmp_path / "r"], "--epochs"),
        (["run", "--device", "tpu9", "--out", tmp_path / "r"], "device"),
        (["run", "--resolution", 512, "--out", tmp_path / "r"], "32 x 32 images only"),
        (["sample", "--prompt", "a red circle", "--resolution", 0], "--resolution"),
        (["sample", "--prompt", "a red circle", "--device", "cuda:7"], "device"),
        (["run", "--methods", "dppo@gamma=1", "--out", tmp_path / "r"], "setting 'gamma'"),
        (["run", "--reward", "aesthetic9000", "--out", tmp_path / "r"], "unknown reward"),
        (["run", "--reward", "toy-tifa=one", "--out", tmp_path / "r"], "not a number"),
        (["run", "--aggregation", "mean", "--out", tmp_path / "r"], "reward_aggregation"),
        (["run", "--preset", "smoke", "--out", "/proc/forbidden/r"], "error"),
        (["sample", "--prompt", "a red circle", "--steps", 1, "--out", "/proc/forbidden/x.png"], "error"),
    ]


def test_bad_input_gets_one_line_and_exit_1(tmp_path):
    for args, msg in _bad(tmp_path):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 1, (args, r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, r.output)
        assert msg in lines[0], (args, lines[0])
        assert "Traceback" not in r.output


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
    assert "beats base" in r.stdout and "grpo" in r.stdout and "dppo" in r.stdout
    for f in ("report/tables.md", "report/tables.csv", "report/index.html", "manifest.json",
              "toy/grpo/seed0/result.json", "toy/dppo/seed0/metrics.jsonl"):
        assert (out / f).exists(), f
