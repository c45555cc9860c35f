"""A setting is declared once: `bench run`'s options come from the configuration dataclasses'
fields, types and docstrings (harness/options.py)."""

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from flowarena.harness.benchmarks.base import EvalRequest
from flowarena.harness.cli import EVAL, RECIPE, REQUEST, TRAIN, app
from flowarena.harness.options import field_docs
from flowarena.harness.run.config import EvalSettings
from flowarena.methods.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_every_setting_is_an_option_with_its_docstring_as_help():
    import typer

    params = {p.opts[0]: p for p in typer.main.get_command(app).commands["run"].params}
    help_text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "250"}).output
    for s in RECIPE + TRAIN + EVAL:
        assert s.doc, f"{s.name} has no docstring: its option would have no help"
        assert s.flag in help_text, s.flag
        assert params[s.flag].help.startswith(f"{s.section + '.' if s.section else ''}{s.name}: {s.doc}")
    assert {s.name for s in TRAIN} == set(TrainConfig.__dataclass_fields__)
    assert {s.name for s in EVAL} == set(EvalSettings.__dataclass_fields__)
    assert field_docs(TrainConfig)["group_size"].startswith("G: samples per prompt")


def test_bench_eval_takes_the_evaluation_request_s_fields():
    import typer

    params = {p.name: p for p in typer.main.get_command(app).commands["eval"].params}
    for s in REQUEST:
        assert s.doc and params[s.key].help.startswith(s.doc), s.name
    assert {s.name for s in REQUEST} == set(EvalRequest.__dataclass_fields__)
    bad = runner.invoke(app, ["eval", "--limit", "1"])
    assert bad.exit_code == 1
    assert bad.output.strip() == 'error: --limit must be an integer >= 2 or "none", not 1'
    bad = runner.invoke(app, ["eval", "--images-per-prompt", "many"])
    assert bad.exit_code == 1 and "--images-per-prompt must be an integer in [1, 4096]" in bad.output


def test_options_reach_the_preset_as_its_fields():
    r = runner.invoke(app, ["run", "--preset", "smoke", "--lr", "1e-3", "--adam-betas", "[0.9, 0.99]",
                            "--eval-benchmarks", "toy", "--micro-batch", "none", "--gradient-checkpointing",
                            "--eval-limit", "16", "--dump-config"])
    assert r.exit_code == 0, r.output
    for line in ("lr = 0.001", "adam_betas = [0.9, 0.99]", 'micro_batch = "none"',
                 "gradient_checkpointing = true", "limit = 16", 'benchmarks = ["toy"]'):
        assert line in r.output.splitlines(), line
    bad = runner.invoke(app, ["run", "--preset", "smoke", "--lr", "fast"])
    assert bad.exit_code == 1 and bad.output.strip() == "error: --lr must be a finite number > 0, not 'fast'"


def _project_with_a_new_field(tmp_path: Path) -> Path:
    """The project with one field added to TrainConfig (the copy's trainer.py), nothing else."""
    dst = tmp_path / "code" / "flowarena"
    dst.mkdir(parents=True)
    for package in ("core", "tasks", "models", "rewards", "reports", "harness"):
        (dst / package).symlink_to(ROOT / package)
    shutil.copytree(ROOT / "methods", dst / "methods", ignore=shutil.ignore_patterns("__pycache__"))
    trainer = dst / "methods" / Path(inspect.getsourcefile(TrainConfig)).name  # where TrainConfig lives
    text = trainer.read_text()
    anchor = '    lr: Positive = 3e-4\n'
    assert anchor in text
    trainer.write_text(text.replace(anchor, '    probe_knob: Count = 3\n    """A knob this test adds.""""\n'
                                    .replace('""""', '"""') + anchor))
    return dst.parent


def test_a_new_trainer_field_is_an_option_a_preset_key_and_a_dump_config_line(tmp_path):
    code = _project_with_a_new_field(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(code), "COLUMNS": "200"}

    def bench(*args):
        return subprocess.run([sys.executable, "-m", "flowarena.harness", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    helped = bench("run", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--probe-knob" in helped.stdout and "A knob this test adds." in helped.stdout
    dumped = bench("run", "--preset", "smoke", "--probe-knob", "5", "--dump-config")
    assert dumped.returncode == 0, dumped.stderr
    assert "probe_knob = 5" in dumped.stdout.split("[train]")[1].split("[eval]")[0]
    (tmp_path / "mine.toml").write_text('base = "smoke"\n[train]\nprobe_knob = 7\n')
    read = bench("run", "--config", str(tmp_path / "mine.toml"), "--dump-config")
    assert read.returncode == 0, read.stderr
    assert "probe_knob = 7" in read.stdout
    refused = bench("run", "--preset", "smoke", "--probe-knob", "0")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: --probe-knob must be an integer >= 1, not 0"
