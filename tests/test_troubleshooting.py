"""The README's troubleshooting table, row by row: each command exits with code 1 and one
`error:` line containing the row's message. The table is the test's only list of cases."""

import errno
import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flowarena.core.io
from flowarena.harness.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


def readme_rows() -> list[tuple[str, str]]:
    section = README.read_text().split("\n## Troubleshooting\n")[1].split("\n## ")[0]
    rows = []
    for line in section.splitlines():
        m = re.match(r"\| `bench (.+?)` \| `(.+?)` \|", line)
        if m:
            rows.append((m.group(1), m.group(2)))
    return rows


def test_the_table_is_there():
    assert len(readme_rows()) >= 40


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    d = tmp_path_factory.mktemp("scratch")
    (d / "corrupt.safetensors").write_bytes(b"not a checkpoint")
    (d / "pickled").mkdir()
    (d / "pickled" / "pytorch_model.bin").write_bytes(b"never unpickled")
    good = {"prompt": "a red circle", "atom_count": 2, "skills": ["object"],
            "vqa_list": [["Is there a circle?", "Yes"]]}
    (d / "bad.jsonl").write_text(json.dumps(good) + '\n{"prompt": "x"\n')
    (d / "plain.txt").write_text("a photo of a cat\na red bicycle\n")
    (d / "bad_geneval.jsonl").write_text(json.dumps({"tag": "counting", "prompt": "x",
                                                     "include": [{"class": "unicorn", "count": 1}]}) + "\n")
    (d / "bad.toml").write_text("epochs = \n")
    (d / "typo.toml").write_text('base = "smoke"\n[train]\nlrr = 1e-3\n')
    (d / "typed.toml").write_text('base = "smoke"\nepochs = "many"\n')
    (d / "based.toml").write_text('base = "nosuch"\n')
    (d / "inf.toml").write_text('base = "smoke"\n[train]\nlr = inf\n')
    (d / "overrides.toml").write_text('base = "smoke"\n[method_overrides.dpo]\ndelta = 1e-6\n')
    (d / "bom.toml").write_bytes(b'\xef\xbb\xbfbase = "smoke"\n')
    (d / "binary.txt").write_bytes(b"a red\x00circle\n\xff\xfe")
    (d / "other.safetensors").write_bytes(b"other weights than the run's")
    # a one-epoch run whose checkpoint is then damaged, its cell unfinished again
    r = runner.invoke(app, ["run", "--preset", "smoke", "--methods", "grpo", "--seeds", "1", "--epochs", "1",
                            "--out", str(d / "run")])
    assert r.exit_code == 0, r.output
    cell = d / "run" / "toy" / "grpo" / "seed0"
    (cell / "result.json").unlink()
    (cell / "checkpoints" / "latest" / "weights_00001.safetensors").write_bytes(b"garbage")
    return d


@pytest.mark.parametrize("command, message", readme_rows(), ids=[c for c, _ in readme_rows()])
def test_troubleshooting_row(command, message, scratch, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything a command would write by default lands here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = shlex.split(command.replace("DIR", str(scratch)))
    r = runner.invoke(app, args)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert message.replace("DIR", str(scratch)) in lines[0], lines[0]
    assert "Traceback" not in r.output


def test_a_full_disk_is_one_line(tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))
    monkeypatch.setattr(flowarena.core.io.os, "replace", full)
    r = runner.invoke(app, ["sample", "--prompt", "a red circle", "--steps", "1", "--n", "1",
                            "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 1 and r.output.strip().startswith("error: No space left on device"), r.output
    assert r.output.count("\n") == 1 and not list(tmp_path.glob("*.tmp"))  # no half-written file left


def test_the_readme_is_a_user_guide_of_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300
