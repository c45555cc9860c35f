"""Outputs that cannot destroy (issue 29, item 2): every write goes through
`flowarena.core.io.atomic_write`, which replaces a regular file or creates one and refuses
anything else; a path a user names for an output is never inside a cell's checkpoints nor
one of the command's inputs, and is refused before any work, in one line."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flowarena.core.io import OutputError, check_output, write_json
from flowarena.harness.cli import app


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_write_replaces_regular_files_only(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    write_json(tmp_path / "a.json", {"x": 2})  # a regular file is replaced
    assert (tmp_path / "a.json").read_text().strip().endswith("}")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a.json")
    os.mkfifo(tmp_path / "fifo")
    for name, kind in (("dir", "a directory"), ("link", "a symbolic link"), ("fifo", "a named pipe")):
        with pytest.raises(OutputError, match=f"it is {kind}, not a regular file"):
            write_json(tmp_path / name, {})
    assert (tmp_path / "link").is_symlink() and stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    # (no write is aimed at /dev/null here: were the guard gone, a root test would replace it; the
    # CLI tests below name it with the model loading stubbed out, so nothing gets that far)
    assert not list(tmp_path.glob(".*.tmp"))  # refused before a temporary file exists


def test_an_output_inside_a_cells_checkpoints_or_equal_to_an_input_is_refused(tmp_path):
    ckpt = tmp_path / "run" / "toy" / "grpo" / "seed0" / "checkpoints" / "latest"
    ckpt.mkdir(parents=True)
    (ckpt.parents[1] / "config.json").write_text("{}")
    (ckpt / "weights_00001.safetensors").write_bytes(b"weights")
    with pytest.raises(OutputError, match="inside the checkpoints of the cell"):
        check_output(ckpt / "weights_00001.safetensors")
    with pytest.raises(OutputError, match="inside the checkpoints"):
        check_output(ckpt, file=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    with pytest.raises(OutputError, match="an input of this command"):
        check_output(tmp_path / "." / "prompts.txt", [None, prompts])
    check_output(tmp_path / "new.json", [prompts])  # anything else is fine
    (tmp_path / "checkpoints").mkdir()  # a folder of that name outside a cell is not protected
    check_output(tmp_path / "checkpoints" / "x.png")


@pytest.mark.parametrize("args, message", [
    (["sample", "--prompt", "a red circle", "--out", "/dev/null"], "it is a character device"),
    (["eval", "--limit", "2", "--json", "/dev/null"], "it is a character device"),
])
def test_the_cli_refuses_a_destructive_output_in_one_line_before_any_work(args, message, monkeypatch):
    import flowarena.harness.cli as cli

    def no_work(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")
    monkeypatch.setattr(cli, "_load", no_work)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("error: refusing to write /dev/null") and message in r.output


def test_bench_export_never_writes_over_the_cells_checkpoint(tiny_path, tmp_path):
    from dataclasses import replace

    from flowarena.harness.run import plan, run_experiment
    from tests.test_run import PRESET

    run = run_experiment(plan(tmp_path / "r", ["grpo"], "toy", replace(PRESET, epochs=1), 1, tiny_path),
                         progress=False)
    cell = run / "toy" / "grpo" / "seed0"
    before = _digest(cell)
    weights = next((cell / "checkpoints" / "latest").glob("weights_*.safetensors"))
    for out in (weights, weights.parent, cell):
        r = CliRunner().invoke(app, ["export", str(cell), "--out", str(out)])
        assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
        assert r.output.startswith(f"error: refusing to write {out}")
    assert _digest(cell) == before
