"""A second small model is one file: dropped into models/, it is listed, trained and scored
with no other edit (the harness asks the model, never its name, for its calibration, its
vocabulary and its options); a preset is one TOML file, listed by size."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MINI = textwrap.dedent('''
    """A second toy-sized model: the toy generator with its own name, trained on the toy's recipes."""

    from flowarena.models.base import register_model
    from flowarena.models.toy import ToyModel


    @register_model("mini")
    class MiniModel(ToyModel):
        description = "a second small model (a test's)"
        recipes_of = "toy"  # the toy world's presets fit it
''')

TINY = 'base = "smoke"\ndescription = "smaller than smoke"\nepochs = 1\n[eval]\nlimit = 2\nood_limit = 2\n'


def _project(tmp_path: Path) -> tuple[Path, dict]:
    """The project with a copy of models/ plus mini.py and of the presets plus tiny.toml."""
    dst = tmp_path / "code" / "flowarena"
    dst.mkdir(parents=True)
    for package in ("core", "tasks", "rewards", "methods", "reports"):
        (dst / package).symlink_to(ROOT / package)
    shutil.copytree(ROOT / "models", dst / "models", ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "models" / "mini.py").write_text(MINI)
    shutil.copytree(ROOT / "harness", dst / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "harness" / "run" / "presets" / "tiny.toml").write_text(TINY)
    return dst.parent, {**os.environ, "PYTHONPATH": str(dst.parent), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def test_a_second_small_model_and_a_preset_are_one_file_each(tmp_path):
    code, env = _project(tmp_path)

    def bench(*args):
        return subprocess.run([sys.executable, "-m", "flowarena.harness", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    listed = bench("models")
    assert listed.returncode == 0, listed.stderr
    assert "mini" in listed.stdout and "a second small model" in listed.stdout
    presets = [ln.split()[0] for ln in bench("presets").stdout.splitlines() if ln and not ln[0].isspace()]
    assert presets[:2] == ["tiny", "smoke"]  # the smallest first
    out = tmp_path / "run"
    ran = bench("run", "--model", "mini", "--preset", "tiny", "--methods", "grpo", "--out", str(out))
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert (out / "mini" / "grpo" / "seed0" / "result.json").is_file()
    refused = bench("run", "--model", "mini", "--preset", "tiny", "--train-prompts", "parti-train",
                    "--out", str(tmp_path / "other"))
    assert refused.returncode == 1 and "outside its vocabulary" in refused.stderr
