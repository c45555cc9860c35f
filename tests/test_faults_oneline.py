"""Every fault a user meets is one `error:` line, and nothing on disk is lost: a full disk in
the middle of a checkpoint, SIGTERM, weights gone non-finite, damaged or binary input files."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from typer.testing import CliRunner

import flowarena.core.io as io_module
from flowarena.core.io import load_tensors, save_tensors, write_json
from flowarena.harness.cli import app
from flowarena.harness.run import (
    EvalSettings,
    Preset,
    load_cell_policy,
    plan,
    read_checkpoint_state,
    run_experiment,
)
from flowarena.methods.trainer import TrainConfig, Trainer, TrainingFault
from tests.test_run import _trainer

REPO = Path(__file__).resolve().parents[1]
# one thread in-process as in the subprocesses (OMP_NUM_THREADS=1): the tiny model gains nothing from two
pytestmark = pytest.mark.usefixtures("offline_single_thread")
CELL = Path("toy") / "grpo" / "seed0"
# a smoke run on the tiny model: epochs of well under a second each, a checkpoint after each
RECIPE = """base = "smoke"
[eval]
every = 3
limit = 4
ood_limit = 4
steps = 3
kl_prompts = 2
samples = 2
"""
# what safetensors raises when the disk fills (found on a 64 KiB tmpfs): its own type, no OSError
ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"
_PROGRESS = re.compile(r"^\[\d+/\d+\] \S+ seed\d+:")  # a cell's progress bar, on stderr as well


def error_line(stderr: str) -> str:
    """The one line a fault leaves on stderr, besides the progress bars."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]", stderr) if ln.strip()]
    lines = [ln for ln in lines if not _PROGRESS.match(ln)]
    assert "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def failed(r) -> str:
    """A CliRunner result that is a one-line failure (not an uncaught exception): its line."""
    assert r.exit_code not in (0, None) and isinstance(r.exception, SystemExit), r.output[-3000:]
    return error_line(r.stderr)


def run_args(tiny_path, tmp_path, out: Path, epochs: int = 6) -> list[str]:
    """`bench run` of RECIPE; six epochs leave a signal time to land between two checkpoints."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    return ["run", "--config", recipe, "--model-path", tiny_path, "--methods", "grpo", "--seeds", 1,
            "--epochs", epochs, "--out", out]


def epoch_of(out: Path) -> int:
    """The epoch of the cell's checkpoint (0: none yet); state.json is replaced atomically."""
    state = out / CELL / "checkpoints" / "latest" / "state.json"
    return json.loads(state.read_text())["epoch"] if state.exists() else 0


def intact(out: Path, epoch: int | None = None) -> None:
    """The cell's last checkpoint loads, finite, with no temp file left beside any file."""
    ckpt = out / CELL / "checkpoints" / "latest"
    assert epoch is None or read_checkpoint_state(ckpt)["epoch"] == epoch
    model, _ = load_cell_policy(out / CELL)
    assert all(torch.isfinite(v).all() for v in model.trainable_state_dict().values())
    assert not list(out.rglob("*.tmp"))


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    """A real, tiny disk: a tmpfs mounted for the test (we run as root)."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                           capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here to make a full disk")
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


# --- 1. a full disk ------------------------------------------------------------------------------

def test_a_full_tmpfs_is_an_oserror_and_keeps_the_old_file(tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        path, doc = disk / "w.safetensors", disk / "doc.json"
        save_tensors(path, {"w": torch.ones(8)})
        write_json(doc, {"ok": True})
        with pytest.raises(OSError) as e:  # 400 KB on a 64 KiB disk: safetensors' own error type
            save_tensors(path, {"w": torch.zeros(100_000)})
        assert e.value.errno == 28 and e.value.filename == str(path) and "\n" not in str(e.value)
        with pytest.raises(OSError) as e:
            write_json(doc, {"big": "x" * 200_000})
        assert e.value.errno == 28 and e.value.filename == str(doc)  # the file, not its temp file
        assert torch.equal(load_tensors(path)["w"], torch.ones(8)) and json.loads(doc.read_text())["ok"]
        assert sorted(p.name for p in disk.iterdir()) == ["doc.json", "w.safetensors"]


def test_safetensors_full_disk_error_becomes_enospc(tmp_path, monkeypatch):
    """The same without a mount: safetensors' exact error on a full disk."""
    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise SafetensorError(ENOSPC)

    path = tmp_path / "w.safetensors"
    save_tensors(path, {"w": torch.ones(8)})
    monkeypatch.setattr(io_module, "save_file", full)
    with pytest.raises(OSError) as e:
        save_tensors(path, {"w": torch.zeros(8)})
    assert (e.value.errno, e.value.strerror, e.value.filename) == (28, os.strerror(28), str(path))
    assert torch.equal(load_tensors(path)["w"], torch.ones(8)) and [p.name for p in tmp_path.iterdir()] == [
        "w.safetensors"]


def test_a_full_disk_mid_checkpoint_is_one_line_and_resumes(tiny_path, tmp_path, monkeypatch):
    """Epoch 2's weights land, its optimizer state does not: state.json still names epoch 1's."""
    out = tmp_path / "run"
    real = io_module.save_file

    def full_at_epoch_2(tensors, filename, metadata=None):
        if "optimizer_00002" in Path(filename).name:
            raise SafetensorError(ENOSPC)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(io_module, "save_file", full_at_epoch_2)
    line = failed(bench(*run_args(tiny_path, tmp_path, out, epochs=3)))
    optimizer = out / CELL / "checkpoints" / "latest" / "optimizer_00002.safetensors"
    assert line == f"error: No space left on device: {optimizer}"
    intact(out, epoch=1)
    assert json.loads((out / "manifest.json").read_text())["status"] == "stopped"
    monkeypatch.setattr(io_module, "save_file", real)  # space freed: the same command resumes
    r = bench(*run_args(tiny_path, tmp_path, out, epochs=3))
    assert r.exit_code == 0, r.output[-3000:]
    assert (out / CELL / "result.json").exists() and epoch_of(out) == 3


def test_a_real_full_disk_during_bench_run(tiny_path, tmp_path):
    """`bench run` writing to a tmpfs that fills up after its first checkpoint."""
    out = tmp_path / "disk" / "run"
    cmd = [sys.executable, "-m", "flowarena.harness", *map(str, run_args(tiny_path, tmp_path, out))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tmpfs(tmp_path / "disk", "16m") as disk:
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        try:
            while p.poll() is None and epoch_of(out) < 1:
                time.sleep(0.02)
            with open(disk / "ballast", "wb") as f, contextlib.suppress(OSError):
                while True:  # every byte left
                    f.write(b"\0" * 65536)
                    f.flush()
            _, err = p.communicate(timeout=300)
        finally:
            p.kill()
        assert p.returncode == 1, err[-3000:]
        assert error_line(err).startswith("error: No space left on device: ")
        assert 1 <= epoch_of(out) < 6
        intact(out)
        (disk / "ballast").unlink()
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (out / CELL / "result.json").exists() and epoch_of(out) == 6


# --- 2. SIGTERM ----------------------------------------------------------------------------------

def test_sigterm_is_one_line_exit_143_and_resumes(tiny_path, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flowarena.harness", *map(str, run_args(tiny_path, tmp_path, out))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while p.poll() is None and epoch_of(out) < 1:
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 143
    assert error_line(err) == "error: stopped by SIGTERM; the same command resumes the run"
    assert json.loads((out / "manifest.json").read_text())["status"] == "stopped"
    stopped_at = epoch_of(out)
    assert 1 <= stopped_at < 6
    intact(out, stopped_at)
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]  # the same command
    assert json.loads((out / "manifest.json").read_text())["status"] == "done"
    metrics = (out / CELL / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in metrics] == list(range(6))  # resumed, not started over


# --- 3. non-finite weights ------------------------------------------------------------------------

def test_non_finite_weights_stop_the_trainer(tiny_path, monkeypatch):
    """Finite gradients, an infinite step: the first update's weights are NaN, and the trainer
    stops there instead of training on (its losses then skipped, not counted as a fault)."""
    tr = _trainer(tiny_path, "grpo")
    monkeypatch.setattr(tr, "lr_at", lambda step: float("inf"))  # what `lr = inf` in a TOML did
    with pytest.raises(TrainingFault, match="weights became non-finite in an update of epoch 1"):
        tr.train_epoch(0)
    assert tr.ema is None and tr.skips_in_row == 0


def test_non_finite_weights_are_never_checkpointed(tiny_path, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = Trainer.lr_at
    # the learning rate turns infinite in epoch 3, after the checkpoint of epoch 2
    monkeypatch.setattr(Trainer, "lr_at", lambda self, step: float("inf") if step >= 2 * self.steps_per_epoch
                        else real(self, step))
    line = failed(bench(*run_args(tiny_path, tmp_path, out, epochs=3)))
    assert re.fullmatch(r"error: grpo seed 0: the weights became non-finite in an update of epoch 3 "
                        r"\(learning rate inf\); lower the learning rate\. The last checkpoint \(epoch 2\) "
                        r"is intact in .*", line), line
    intact(out, epoch=2)
    assert not (out / CELL / "result.json").exists()
    assert json.loads((out / "manifest.json").read_text())["status"] == "stopped"


# --- 4. damaged or binary input files -------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    preset = Preset("short", "", epochs=1,
                    train=TrainConfig(prompts_per_epoch=2, group_size=4, minibatch_size=4, steps=4,
                                      sde_window=2, lr=1e-2, lora_rank=4, lora_alpha=8),
                    eval=EvalSettings(every=1, limit=4, ood_limit=4, steps=3, kl_prompts=2, samples=2),
                    reward="toy-colour")
    run_experiment(plan(out, ["grpo"], "toy", preset, 1, tiny_path), progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", ["truncated-weights", "truncated-config", "garbage-config"])
@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_damaged_cell_is_one_line_for_eval_and_export(trained, tmp_path, damage, command):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    cell = run / CELL
    state = read_checkpoint_state(cell / "checkpoints" / "latest")
    if damage == "truncated-weights":
        weights = cell / "checkpoints" / "latest" / state["files"]["weights"]
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        config = cell / "config.json"
        text = config.read_bytes()
        config.write_bytes(text[: len(text) // 2] if damage == "truncated-config" else b"\x89PNG\0\xff" * 9)
    before = _files(run)
    if command == "eval":
        r = bench("eval", "--run", cell, "--limit", 2, "--steps", 2, "--json", tmp_path / "r.json")
    else:
        r = bench("export", cell, "--out", tmp_path / "exported")
    line = failed(r)
    assert "is damaged" in line and str(cell) in line, line
    assert _files(run) == before  # the command changed nothing there
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "exported").exists()
    assert read_checkpoint_state(cell / "checkpoints" / "latest") == state  # the checkpoint still reads


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\0\0\xff\xfe" * 4, b"a red cube\0\0\0\n"],
                         ids=["not-utf8", "nul-bytes"])
def test_a_binary_prompt_file_is_one_line(tmp_path, content):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(content)
    out = tmp_path / "run"
    line = failed(bench("run", "--preset", "smoke", "--train-prompts", prompts, "--out", out))
    assert line.startswith(f"error: prompt file {prompts} is not a UTF-8 text file"), line
    assert not out.exists()  # refused before any work


def test_a_toml_with_a_byte_order_mark_says_so(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_bytes(b"\xef\xbb\xbf" + RECIPE.encode())  # "UTF-8 with BOM", as Notepad saves it
    out = tmp_path / "run"
    line = failed(bench("run", "--config", recipe, "--out", out))
    assert line == (f"error: config file {recipe} is not valid TOML (the file starts with a byte-order "
                    "mark; save it as UTF-8 without BOM)")
    assert not out.exists()


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_checkpoint_of_other_shapes_is_one_line(trained, tmp_path, command):
    """A valid safetensors file whose tensors do not fit the model (torch's shape report runs to
    many lines): one line for `bench eval --run`; the toy's export loads the policy the same way."""
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    cell = run / CELL
    state = read_checkpoint_state(cell / "checkpoints" / "latest")
    weights = cell / "checkpoints" / "latest" / state["files"]["weights"]
    tensors = load_file(weights)
    tensors[next(iter(tensors))] = torch.zeros(3, 3)
    save_file(tensors, weights)
    if command == "eval":
        r = bench("eval", "--run", cell, "--limit", 2, "--steps", 2)
    else:
        r = bench("export", cell, "--out", tmp_path / "exported")
    line = failed(r)
    assert "does not fit the toy model it names" in line and str(weights) in line, line
