"""One experiment across processes (`bench run --shard I/N`) and the locks that keep two
processes from writing the same run or cell (core/locks.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from flowarena.core.locks import LockError, holder, release, try_lock
from flowarena.harness.cli import app
from flowarena.harness.run import plan, run_experiment
from tests.test_run import PRESET

METHODS = ["grpo", "dppo"]


def _finals(run) -> dict:
    """Each cell's final evaluation and training reward, the results that must not depend on sharding."""
    out = {}
    for path in sorted(run.glob("toy/*/seed*/result.json")):
        r = json.loads(path.read_text())
        out[(r["method"], r["seed"])] = (r["final"]["metrics"], r["train_reward"])
    return out


def test_two_shards_equal_one_unsharded_run(tiny_path, tmp_path):
    # one seed: the two cells fall one to each shard
    whole = run_experiment(plan(tmp_path / "whole", METHODS, "toy", PRESET, 1, tiny_path), progress=False)
    for i in (1, 2):
        sharded = run_experiment(plan(tmp_path / "sharded", METHODS, "toy", PRESET, 1, tiny_path),
                                 progress=False, shard=(i, 2))
        manifest = json.loads((sharded / "manifest.json").read_text())
        assert manifest["shards"] == ({"1/2": "done"} if i == 1 else {"1/2": "done", "2/2": "done"})
        assert manifest["status"] == ("running" if i == 1 else "done")  # shard 2 has yet to run
    assert len(_finals(whole)) == 2 and _finals(sharded) == _finals(whole)
    assert len(manifest["sessions"]) == 2  # one per shard, both counted in the run's seconds
    assert manifest["seconds"] == pytest.approx(sum(s["seconds"] for s in manifest["sessions"]), abs=0.2)
    assert (sharded / "report" / "tables.md").read_text().count("| toy ") == 3  # base, dppo, grpo
    assert not list((sharded / ".locks").glob("*.lock"))  # every lock released
    assert not list(sharded.glob("toy/*/seed*/.lock"))


def test_a_second_run_on_a_directory_in_use_is_one_line(tiny_path, tmp_path):
    out = tmp_path / "run"
    held = out / ".locks" / "run.lock"
    assert try_lock(held)  # this test process stands in for a bench run that is still going
    try:
        who = f"{socket.gethostname()} \\(pid {os.getpid()}, since .*\\); if that process is gone, delete"
        with pytest.raises(LockError, match=f"is in use by a bench run on {who}"):
            run_experiment(plan(out, METHODS, "toy", PRESET, 1, tiny_path), progress=False)
        with pytest.raises(LockError, match="in use"):  # a shard may not join an unsharded run either
            run_experiment(plan(out, METHODS, "toy", PRESET, 1, tiny_path), progress=False, shard=(1, 2))
        args = ["run", "--preset", "smoke", "--model-path", tiny_path, "--out", str(out)]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 1 and r.output.count("\n") == 1 and r.output.startswith("error: ")
        assert not (out / "manifest.json").exists()  # nothing written
    finally:
        release(held)
    assert not held.exists()


def test_a_stale_lock_is_taken_over_and_a_busy_cell_is_skipped(tiny_path, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True)
    stale = {"host": socket.gethostname(), "pid": int(dead.stdout), "since": "2026-12-01 00:00:00"}
    out = tmp_path / "run"
    (out / ".locks").mkdir(parents=True)
    (out / ".locks" / "run.lock").write_text(json.dumps(stale))  # a killed run's
    assert holder(out / ".locks" / "run.lock") is None
    busy = out / "toy" / "dppo" / "seed0" / ".lock"  # another machine trains this cell
    busy.parent.mkdir(parents=True)
    busy.write_text(json.dumps({"host": "node-7", "pid": 1, "since": "2026-12-03 10:00:00"}))
    run_experiment(plan(out, METHODS, "toy", PRESET, 1, tiny_path), progress=False)
    assert (out / "toy" / "grpo" / "seed0" / "result.json").exists()
    assert not (out / "toy" / "dppo" / "seed0" / "result.json").exists()  # left to its owner
    assert busy.exists() and not (out / ".locks" / "run.lock").exists()
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"  # its owner finishes it


def test_the_shard_option_is_checked():
    for bad in ("3/2", "0/2", "1of2", "a/b"):
        r = CliRunner().invoke(app, ["run", "--shard", bad])
        assert r.exit_code == 1 and f"--shard '{bad}' must be I/N with 1 <= I <= N" in r.output


def test_jobs_1_and_jobs_2_give_the_same_tables(tiny_path, tmp_path):
    """`--jobs N`: N shards at once, one thread each, so the cells' results do not depend on N."""
    import pandas as pd

    args = [sys.executable, "-m", "flowarena.harness", "run", "--preset", "smoke", "--epochs", "1",
            "--seeds", "1", "--model-path", tiny_path]
    runs = {}
    for jobs in (1, 2):  # as a user types it: the jobs rerun this command line
        out = tmp_path / f"jobs{jobs}"
        r = subprocess.run([*args, "--jobs", str(jobs), "--out", str(out)], capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "| dppo " in r.stdout and "2/2 cells done" in r.stderr
        assert len(list((out / "logs").glob("job-*.log"))) == jobs
        runs[jobs] = out
    assert _finals(runs[1]) == _finals(runs[2]) and len(_finals(runs[1])) == 2
    tables = [pd.read_csv(runs[j] / "report" / "tables.csv").drop(columns=["wall_min"]) for j in (1, 2)]
    pd.testing.assert_frame_equal(*tables)  # every column but the training time
    manifest = json.loads((runs[2] / "manifest.json").read_text())
    assert manifest["status"] == "done" and set(manifest["shards"]) == {"1/2", "2/2"}
    r = CliRunner().invoke(app, ["run", "--jobs", "2", "--shard", "1/2"])
    assert r.exit_code == 1 and "--jobs starts shards of its own" in r.output
    # another configuration on the same directory: refused in one line, the jobs' logs kept
    logs = {path: path.read_text() for path in (runs[2] / "logs").glob("job-*.log")}
    r = subprocess.run([*args, "--epochs", "2", "--jobs", "2", "--out", str(runs[2])], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 1 and "holds a run with another configuration" in r.stderr
    assert all(path.read_text().startswith(text) and len(path.read_text()) > len(text)
               for path, text in logs.items())
    assert _finals(runs[2]) == _finals(runs[1])


def _jobs_of(out) -> list[int]:
    """Pids of the `--jobs` workers of the run in `out` (from /proc: the test runs on Linux)."""
    pids = []
    for proc in os.scandir("/proc"):
        try:
            cmd = open(f"/proc/{proc.name}/cmdline", "rb").read().split(b"\0")
        except (OSError, ValueError):
            continue  # not a process, or one that just ended
        if b"flowarena.harness.launch" in cmd and any(c.startswith(str(out).encode()) for c in cmd):
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopping_a_jobs_run_stops_its_jobs(tiny_path, tmp_path, sig):
    """Ctrl-C or a scheduler's SIGTERM sent to `bench run --jobs 2` alone ends its jobs too, with
    one line that says how to resume, instead of leaving them training on."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flowarena.harness", "run", "--preset", "smoke", "--seeds", "2",
           "--model-path", tiny_path, "--jobs", "2", "--out", str(out)]
    parent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_jobs_of(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        assert len(_jobs_of(out)) == 2, "the jobs did not start"
        parent.send_signal(sig)
        _, err = parent.communicate(timeout=60)
        assert parent.returncode == 130
        assert err.strip().splitlines()[-1].startswith("error: stopped with ")
        assert "the same command resumes the run" in err
        assert _jobs_of(out) == []
    finally:  # a failing run leaves no process behind
        parent.kill()
        for pid in _jobs_of(out):
            os.kill(pid, signal.SIGKILL)


def test_a_stop_while_a_job_starts_stops_that_job_too(tmp_path, monkeypatch):
    """The race CI once hit: Ctrl-C lands inside `Popen` after the second job has started but
    before `bench run --jobs` holds it. That job must be stopped with the others, not orphaned."""
    import typer

    from flowarena.harness import launch

    started = []
    real_popen = subprocess.Popen

    def popen_then_ctrl_c(cmd, **kwargs):  # a stand-in job that would outlive a forgotten stop
        started.append(real_popen([sys.executable, "-c", "import time; time.sleep(120)"], **kwargs))
        if len(started) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Python acts on it before this call returns
            time.sleep(0.1)
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen_then_ctrl_c)
    try:
        with pytest.raises(typer.Exit) as stop:
            launch.run_jobs(plan(tmp_path, preset="smoke"), 2)
        assert stop.value.exit_code == 130
        assert len(started) == 2 and all(p.poll() is not None for p in started)
    finally:
        for p in started:
            p.kill()
