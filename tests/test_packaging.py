"""One installed name: the wheel holds `flowarena` and its dist-info, nothing else at the top,
with every package of the repository and the files they read at run time."""

import subprocess
import sys
import zipfile
from pathlib import Path

from flowarena.harness.run.config import read_toml

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    """pyproject's explicit list (the folders map into `flowarena`) misses no package."""
    listed = set(read_toml(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"])
    found = {"flowarena." + ".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("*/**/__init__.py")
             if p.parts[len(ROOT.parts)] not in ("tests", "benchmarks", ".venv", "build")}
    assert listed == found


def test_the_wheel_holds_only_flowarena(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("flowarena-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(tmp_path / "site")
    assert {n.split("/")[0] for n in names} == {"flowarena", wheel.name.split("-py")[0] + ".dist-info"}
    for data in ("models/weights/toy.safetensors", "rewards/weights/toy_pick.safetensors",
                 "harness/run/presets/quick.toml", "tasks/data/toy_eval.jsonl", "tasks/data/geneval2/LICENSE",
                 "tasks/data/parti/PartiPrompts.tsv", "tasks/data/geneval/evaluation_metadata.jsonl"):
        assert f"flowarena/{data}" in names, data
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "bench = flowarena.harness.cli:app" in zipfile.ZipFile(wheel).read(entry).decode()
    # installed, the packages are flowarena's: no top-level `models` to shadow a user's
    probe = ("import importlib.util as u, flowarena.harness.run.config as c; "
             "print(c.__file__); print(u.find_spec('models'), u.find_spec('harness'))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    where, missing = out.stdout.splitlines()
    assert where.startswith(str(tmp_path / "site")) and missing == "None None"
