"""core/rundir.py: the one owner of a run directory's layout. Its names are the files on disk
(old runs read and resume), its iteration finds exactly the cells and base evaluations of a
hand-made directory, and the reader's one rule for the base model's files."""

import json

import pytest

from flowarena.core.rundir import BasePaths, CellPaths, RunDir
from flowarena.reports.run_reader import load_run
from flowarena.reports.tables import comparison
from tests.test_report import make_run


def _touch(path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_cells_paths_are_the_layout_on_disk(tmp_path):
    run = RunDir(tmp_path)
    cell = run.cell("toy", "grpo", 3)
    names = {k: str(p.relative_to(tmp_path)) for k, p in [
        ("root", cell.root), ("config", cell.config), ("metrics", cell.metrics), ("result", cell.result),
        ("eval_dir", cell.eval_dir), ("eval", cell.eval(5)), ("final", cell.final_eval),
        ("checkpoints", cell.checkpoints), ("checkpoint", cell.checkpoint),
        ("diagnostics", cell.diagnostics(12)), ("samples", cell.samples), ("lock", cell.lock)]}
    assert names == {
        "root": "toy/grpo/seed3", "config": "toy/grpo/seed3/config.json",
        "metrics": "toy/grpo/seed3/metrics.jsonl", "result": "toy/grpo/seed3/result.json",
        "eval_dir": "toy/grpo/seed3/eval", "eval": "toy/grpo/seed3/eval/5.json",
        "final": "toy/grpo/seed3/eval/final.json", "checkpoints": "toy/grpo/seed3/checkpoints",
        "checkpoint": "toy/grpo/seed3/checkpoints/latest",
        "diagnostics": "toy/grpo/seed3/diagnostics/epoch_0012.safetensors",
        "samples": "toy/grpo/seed3/samples/final.png", "lock": "toy/grpo/seed3/.lock"}
    assert (cell.model, cell.method, cell.seed) == ("toy", "grpo", 3)
    assert cell.run == run and CellPaths(cell.root) == cell
    assert not cell.done
    _touch(cell.result)
    assert cell.done


def test_the_runs_other_paths(tmp_path):
    run = RunDir(tmp_path)
    rel = {k: str(p.relative_to(tmp_path)) for k, p in [
        ("manifest", run.manifest), ("run_lock", run.run_lock), ("shard", run.shard_lock(2, 4)),
        ("manifest_lock", run.manifest_lock), ("log", run.job_log(1, 3)), ("report", run.report),
        ("figures", run.figures), ("tb", run.tensorboard("toy", "dppo", 1))]}
    assert rel == {"manifest": "manifest.json", "run_lock": ".locks/run.lock",
                   "shard": ".locks/shard-2-of-4.lock", "manifest_lock": ".locks/manifest.lock",
                   "log": "logs/job-1-of-3.log", "report": "report", "figures": "report/figures",
                   "tb": "tensorboard/toy/dppo/seed1"}
    assert run.shard_locks() == []
    for i in (2, 1):
        _touch(run.shard_lock(i, 2))
    _touch(run.run_lock)
    assert [p.name for p in run.shard_locks()] == ["shard-1-of-2.lock", "shard-2-of-2.lock"]


def test_the_cells_and_bases_of_a_hand_made_directory(tmp_path):
    run = RunDir(tmp_path)
    assert run.cells() == [] and run.bases() == [] and run.finished() == 0 and not run.has_results()
    for rel in ("toy/grpo/seed10", "toy/grpo/seed2", "toy/dppo/seed0", "toy/base/seed0", "toy/base/seed1",
                "flux/grpo/seed0", "toy/grpo/seedx", "toy/grpo/old_seed0",  # not cells
                "report/figures/seed0", "tensorboard/toy/grpo/seed0", "logs/x/seed0", ".locks/x/seed0"):
        (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "toy/grpo/seed4").write_text("a file, not a cell")
    cells = [(c.model, c.method, c.seed) for c in run.cells()]
    assert cells == [("flux", "grpo", 0), ("toy", "dppo", 0), ("toy", "grpo", 2), ("toy", "grpo", 10)]
    assert [(b.model, b.seed) for b in run.bases()] == [("toy", 0), ("toy", 1)]
    assert not run.has_results()  # folders alone: a run that can start over
    _touch(run.base("toy", 1).eval)
    assert run.has_results() and run.finished() == 0
    _touch(run.cell("toy", "grpo", 10).result)
    _touch(run.cell("toy", "grpo", 2).metrics)
    assert run.finished() == 1
    # a command that adds dppo to the run counts its own cells (`--jobs`' "1/1 cells done")
    _touch(run.cell("toy", "dppo", 0).result)
    assert run.finished() == 2 and run.finished({("toy", "dppo", 0), ("toy", "dppo", 1)}) == 1


def test_a_cells_evaluations_and_diagnostics_on_disk(tmp_path):
    cell = RunDir(tmp_path).cell("toy", "grpo", 0)
    assert cell.evals() == {} and cell.diagnostic_files() == {}
    for name in ("0.json", "10.json", "2.json", "final.json", "notes.txt"):
        _touch(cell.eval_dir / name)
    for epoch in (2, 1):
        _touch(cell.diagnostics(epoch))
    _touch(cell.diagnostics_dir / "epoch_x.safetensors")
    assert list(cell.evals()) == [0, 2, 10] and cell.evals()[10] == cell.eval(10)
    assert cell.diagnostic_files() == {1: cell.diagnostics(1), 2: cell.diagnostics(2)}


def test_the_base_files(tmp_path):
    base = RunDir(tmp_path).base("toy", 2)
    assert isinstance(base, BasePaths) and (base.model, base.seed) == ("toy", 2)
    files = (base.eval, base.final, base.samples, base.prompts, base.lock)
    rel = [str(p.relative_to(tmp_path)) for p in files]
    assert rel == ["toy/base/seed2/eval.json", "toy/base/seed2/final.json", "toy/base/seed2/samples.png",
                   "toy/base/seed2/prompts.json", "toy/base/seed2/.lock"]
    assert base.scores(False) == [base.eval] and base.scores(True) == [base.eval, base.final]
    assert base.final_scores == base.eval  # no test sets: the evaluation prompts' scores
    _touch(base.final)
    assert base.final_scores == base.final


def test_the_reader_has_one_rule_for_the_base_files(tmp_path):
    """eval.json is the curves' epoch 0; final.json, where it exists, the tables' base row;
    an unreadable final.json leaves the seed's base out (named), never falls back."""
    root = make_run(tmp_path / "run")
    run = load_run(root, figures=False)
    (b,) = run.bases
    assert b.final is b.eval and b.samples is None  # without test sets: one record
    base_gm = b.eval.metric("gm").value
    final = json.loads((root / "toy/base/seed0/eval.json").read_text())
    final["soft_tifa"]["gm"] = base_gm + 10
    (root / "toy/base/seed0/final.json").write_text(json.dumps(final))
    run = load_run(root)
    (b,) = run.bases
    assert b.eval.metric("gm").value == base_gm and b.final.metric("gm").value == pytest.approx(base_gm + 10)
    assert b.samples == root / "toy/base/seed0/samples.png"
    row = next(r for r in comparison(run).records if r["method"].startswith("base"))
    assert row["gm"] == pytest.approx(base_gm + 10)
    (root / "toy/base/seed0/final.json").write_text("{")
    run = load_run(root, figures=False)
    assert run.bases == []
    assert run.missing == ["toy/base/seed0/final.json: unreadable, skipped (JSONDecodeError)"]
    assert {c.method for c in run.cells} == {"grpo", "dppo"} and all(c.result for c in run.cells)
