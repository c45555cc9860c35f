"""A run's identity on disk: what its cells are trained from (models.base_identity), recorded in
the manifest and each cell's config.json; resuming from other weights is refused before any
work; a report never pairs cells of different bases, nor counts a copied cell as a seed."""

import hashlib
import json
import shutil

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from flowarena.core.identity import SMALL_FILES, BaseMismatch, fingerprint, same_base
from flowarena.harness.cli import app
from flowarena.harness.run import RunError, plan, run_experiment
from flowarena.models import base_identity
from flowarena.reports.run_reader import load_run
from flowarena.reports.tables import comparison
from tests.test_run import PRESET

pytestmark = pytest.mark.usefixtures("offline_single_thread")  # tiny networks: one thread is fastest
runner = CliRunner()
SMALL = ["--preset", "smoke", "--methods", "grpo", "--epochs", "1", "--eval-limit", "4",
         "--eval-ood-limit", "4"]


def _other_weights(path, out):
    """The weights file at `path` with one tensor changed: another base model."""
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(out), metadata=meta)
    return str(out)


@pytest.fixture(scope="module")
def made(tiny_path, tmp_path_factory):
    """A finished one-cell run (toy, grpo, seed 0) of the tiny model, through `bench run`."""
    root = tmp_path_factory.mktemp("identity")
    weights = shutil.copyfile(tiny_path, root / "toy.safetensors")
    r = runner.invoke(app, ["run", *SMALL, "--model-path", str(weights), "--out", str(root / "run")])
    assert r.exit_code == 0, r.output
    return root / "run", str(weights)


@pytest.fixture
def run(made, tmp_path):
    """A copy of the finished run, for a test to change."""
    return shutil.copytree(made[0], tmp_path / "run"), made[1]


def _snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _error(r) -> str:
    """The output of a command that failed on a user's mistake: its one `error:` line."""
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def _write(path, data):
    path.write_text(json.dumps(data))


def test_the_manifest_and_each_cell_record_the_base(made):
    run, weights = made
    base = json.loads((run / "toy/grpo/seed0/config.json").read_text())["base"]
    digest = hashlib.sha256(open(weights, "rb").read()).hexdigest()
    assert base == {"model": "toy", "path": weights, "source": weights, "sha256": digest,
                    "hashed": "the whole weights file", "preset": "smoke"}
    manifest = json.loads((run / "manifest.json").read_text())["config"]
    assert manifest["base"] == {k: v for k, v in base.items() if k != "preset"}
    # the shipped weights: no path, whichever way they are named
    shipped = base_identity("toy", None)
    assert shipped["path"] is None and shipped["sha256"]
    assert base_identity("toy", shipped["source"]) == shipped


def test_resuming_from_other_weights_is_refused_before_any_work(run, tmp_path):
    run, weights = run
    before = _snapshot(run)
    other = _other_weights(weights, tmp_path / "other.safetensors")
    line = _error(runner.invoke(app, ["run", *SMALL, "--methods", "grpo,dppo", "--model-path", other,
                                      "--out", str(run)]))
    assert f"{run} was trained from toy weights {weights} (sha256 " in line
    assert f"this command gives toy weights {other} (sha256 " in line
    assert line.endswith(f"use a new --out or --model-path {weights}")
    # the default weights instead of the run's file
    line = _error(runner.invoke(app, ["run", *SMALL, "--out", str(run)]))
    assert "(the default)" in line and line.endswith(f"--model-path {weights}")
    assert _snapshot(run) == before  # nothing written, not even the manifest or a lock
    # the same path whose weights changed since
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["base"]["sha256"] = "0" * 64
    _write(run / "manifest.json", manifest)
    line = _error(runner.invoke(app, ["run", *SMALL, "--model-path", weights, "--out", str(run)]))
    assert line.endswith("use a new --out or restore the weights it was trained from")


def test_the_same_weights_moved_elsewhere_still_resume():
    a = {"model": "toy", "path": "/a/toy.safetensors", "sha256": "1", "hashed": "the whole weights file"}
    assert same_base(a, {**a, "path": "/b/toy.safetensors"})
    assert not same_base(a, {**a, "sha256": "2"})
    assert same_base(a, None)  # a run of older code: the caller compares its model path
    small = {**a, "hashed": SMALL_FILES}  # a pipeline's small files alone: the path must match too
    assert not same_base(small, {**small, "path": "/b"}) and same_base(small, {**small, "sha256": None})


def test_a_run_of_older_code_still_resumes(tiny_path, tmp_path, interrupted):
    """Its manifest, config.json and checkpoint record no base: the same model path resumes
    (the interrupted cell from its checkpoint), another is refused."""
    out = tmp_path / "r"
    with interrupted():
        run_experiment(plan(out, ["grpo"], "toy", PRESET, 1, tiny_path), progress=False)
    cell = out / "toy/grpo/seed0"
    for path, where in ((out / "manifest.json", ("config",)), (cell / "config.json", ()),
                        (cell / "checkpoints/latest/state.json", ("config",))):
        data = json.loads(path.read_text())
        inner = data
        for key in where:
            inner = inner[key]
        del inner["base"]
        _write(path, data)
    other = _other_weights(tiny_path, tmp_path / "other.safetensors")
    with pytest.raises(RunError, match=f"was trained from toy weights {tiny_path}; this command gives "):
        run_experiment(plan(out, ["grpo"], "toy", PRESET, 1, other), progress=False)
    run_experiment(plan(out, ["grpo"], "toy", PRESET, 1, tiny_path), progress=False)
    assert json.loads((cell / "result.json").read_text())["epochs"] == PRESET.epochs
    assert json.loads((cell / "config.json").read_text())["base"]["path"] == tiny_path


def test_a_checkpoint_of_other_weights_is_refused(tiny_path, tmp_path):
    """A cell's checkpoint that records another base (a cell copied in from another run)."""
    from flowarena.harness.run import CellRun, Evaluation, base_eval

    ev = Evaluation(PRESET.eval)
    ckpt = tmp_path / "r/toy/grpo/seed0/checkpoints/latest"
    ckpt.mkdir(parents=True)
    base = base_identity("toy", tiny_path)
    config = {"config": {"base": {**base, "sha256": "0" * 64}}, "epoch": 1, "optimizer": {}}
    _write(ckpt / "state.json", config)
    base_record = base_eval(tmp_path / "r", "toy", tiny_path, 0, ev, PRESET.train)
    cell = CellRun(tmp_path / "r", "toy", tiny_path, "grpo", 0, PRESET, ev, base=base)
    with pytest.raises(RunError, match="seed0 was trained from toy weights .* use a new --out or restore"):
        cell.run(*base_record, progress=False)


def test_the_report_refuses_cells_of_different_bases(run):
    run, _ = run
    shutil.copytree(run / "toy/grpo/seed0", run / "toy/grpo/seed1")
    for name in ("config.json", "result.json"):
        data = json.loads((run / "toy/grpo/seed1" / name).read_text())
        data["seed"] = 1
        if name == "config.json":
            data["base"] = {**data["base"], "path": "/elsewhere/toy.safetensors", "sha256": "0" * 64}
        _write(run / "toy/grpo/seed1" / name, data)
    line = _error(runner.invoke(app, ["report", str(run)]))
    assert "toy/grpo/seed1 was trained from toy weights /elsewhere/toy.safetensors (sha256 000000000000) " \
           "but manifest.json from toy weights " in line
    assert line.endswith("move the odd cells to a run directory of their own")
    with pytest.raises(BaseMismatch, match="seed1 was trained from"):  # the tables alone too
        comparison(run)


def test_a_copied_cell_is_not_another_seed(run):
    run, _ = run
    shutil.copytree(run / "toy/grpo/seed0", run / "toy/grpo/seed1")
    r = runner.invoke(app, ["report", str(run)])
    assert r.exit_code == 0, r.output
    assert "missing: toy/grpo/seed1/config.json: records seed 0, not its directory's (a copied cell?), " \
           "skipped" in r.output
    read = load_run(run, figures=False)  # what the tables read: the same cells
    assert [c.seed for c in read.cells] == [0] and [c.seed for c in load_run(run).cells] == [0]
    assert [r.seed for r in read.results()[("toy", "grpo")]] == [0]
    assert read.missing == ["toy/grpo/seed1/config.json: records seed 0, not its directory's "
                            "(a copied cell?), skipped"]
    assert comparison(read).records == comparison(run).records
    table = (run / "report/tables.md").read_text().splitlines()
    assert any(line.startswith("| toy ") and "| grpo " in line and "| 1 " in line for line in table)


@pytest.mark.parametrize("text", ['"x"', "[1]", None])
def test_a_result_file_that_is_no_object_is_skipped_without_a_traceback(run, text, caplog):
    """The file itself, or an object whose records hold a string where an object belongs
    (None: a metric "x"): listed as skipped, never a traceback."""
    run, _ = run
    path = run / "toy/grpo/seed0/result.json"
    if text is None:
        data = json.loads(path.read_text())
        data["final"]["metrics"][0] = "x"
        text = json.dumps(data)
    path.write_text(text)
    r = runner.invoke(app, ["report", str(run)])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output + caplog.text
    assert "missing: toy/grpo/seed0/result.json: " in r.output
    assert "not written" not in r.output and "failed" not in r.output, r.output
    assert "no finished method x seed cells yet" in (run / "report/tables.md").read_text()


def test_a_pipeline_is_fingerprinted_by_its_small_files(tmp_path):
    d = tmp_path / "pipe"
    (d / "transformer").mkdir(parents=True)
    (d / ".cache").mkdir()
    _write(d / "model_index.json", {"_class_name": "X", "transformer": ["diffusers", "T"]})
    _write(d / "transformer/config.json", {"layers": 2})
    (d / "transformer/model.safetensors").write_bytes(b"\0" * (2**20 + 1))
    sha, hashed = fingerprint(d)
    assert hashed == SMALL_FILES
    (d / ".cache/anything").write_text("a download tool's own files")
    (d / "transformer/model.safetensors").write_bytes(b"\1" * (2**20 + 1))  # same size: not read
    assert fingerprint(d)[0] == sha
    _write(d / "transformer/config.json", {"layers": 3})
    assert fingerprint(d)[0] != sha
    record = base_identity("sd35", str(d))
    assert record["path"] == str(d.resolve()) and record["hashed"] == SMALL_FILES
    assert base_identity("sd35", None)["path"] is None  # the default hub id
