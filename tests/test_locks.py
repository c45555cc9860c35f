"""Locks that cannot hang (core/locks.py): what a crash, a full disk or a dead machine
leaves behind is taken over with one warning line, and a wait on a live holder ends when asked to.
Each wait runs in a thread joined with a timeout, so a regression fails instead of hanging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from flowarena.core import locks
from flowarena.core.locks import LockError, describe, holder, release, try_lock, wait_lock
from flowarena.harness.cli import app


def _within(seconds: float, fn, *args, **kwargs):
    """fn(*args, **kwargs) in a thread: its result, or the exception it raised; fails the test
    if it is still running after `seconds`."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["result"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} still running after {seconds} s"
    return box["result"]


def _backdate(path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def _foreign(path, age: float) -> None:
    """A lock another machine took, last renewed `age` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": "node-7", "pid": 1, "since": "2026-12-03 10:00:00"}))
    _backdate(path, age)


def _heartbeats(path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"heartbeat {path}" and t.is_alive()]


def test_an_empty_lock_is_taken_over_once_past_its_grace(tmp_path, capsys):
    path = tmp_path / "manifest.lock"
    path.touch()  # what a crash, or a full disk, leaves while a lock is written
    assert holder(path) is not None and not try_lock(path)  # so young it may be being written
    _backdate(path, locks.GRACE + 5)
    assert holder(path) is None
    assert _within(10, try_lock, path) is True
    err = capsys.readouterr().err
    assert err == f"warning: took over {path}: it was empty (left by a crash or a full disk)\n"
    assert holder(path)["pid"] == os.getpid()
    release(path)
    assert not path.exists()


@pytest.mark.parametrize("record", ["{not json", '{"host": "me"}', '{"host": "me", "pid": -1}', "[1, 2]"])
def test_an_unreadable_lock_is_not_held_forever(tmp_path, record, capsys):
    path = tmp_path / "x.lock"
    path.write_text(record)
    _backdate(path, locks.GRACE + 5)
    assert holder(path) is None and try_lock(path)
    assert capsys.readouterr().err == f"warning: took over {path}: it was not a lock record\n"
    release(path)


def test_a_foreign_lock_with_an_old_heartbeat_is_taken_over(tmp_path, capsys, monkeypatch):
    path = tmp_path / "run" / "toy" / "base" / "seed0" / ".lock"
    _foreign(path, locks.LEASE - 30)
    assert holder(path)["host"] == "node-7" and not try_lock(path)  # within its lease: held
    _backdate(path, locks.LEASE + 30)
    assert holder(path) is None and _within(10, try_lock, path) is True
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: took over {path}: node-7 (pid 1) stopped ")
    release(path)
    _foreign(path, 20)  # the lease is the users' (and tests') to set
    monkeypatch.setenv("FLOWARENA_LOCK_LEASE", "10")
    assert holder(path) is None and try_lock(path)
    release(path)
    monkeypatch.setenv("FLOWARENA_LOCK_LEASE", "ten")
    _foreign(path, 20)
    with pytest.raises(LockError, match="FLOWARENA_LOCK_LEASE='ten' must be a number of seconds"):
        holder(path)


def test_a_live_foreign_holder_is_waited_for_until_the_timeout(tmp_path, capsys):
    path = tmp_path / ".locks" / "manifest.lock"
    _foreign(path, 1)  # its heartbeat is fresh: its machine is alive
    t0 = time.monotonic()
    e = _within(10, wait_lock, path, "the manifest", timeout=1, poll=0.1)
    assert isinstance(e, LockError) and 1 <= time.monotonic() - t0 < 5
    assert str(e) == (f"gave up after 1 s waiting for the manifest, held by node-7 (pid 1, since "
                      f"2026-12-03 10:00:00); if that process is gone, delete {path}")
    err = capsys.readouterr().err
    assert err == "waiting for the manifest, held by node-7 (pid 1, since 2026-12-03 10:00:00) ...\n"
    assert path.exists()  # still the other machine's


def test_a_wait_ends_when_the_holder_releases(tmp_path, capsys):
    path = tmp_path / "base.lock"
    path.write_text(json.dumps({"host": "node-7", "pid": 1, "since": "then"}))
    threading.Timer(0.5, path.unlink).start()  # its holder finishes
    assert _within(10, wait_lock, path, "the base model", poll=0.1) is None
    assert holder(path)["pid"] == os.getpid()
    release(path)
    assert capsys.readouterr().err.startswith("waiting for the base model, held by node-7")


def test_a_heartbeat_keeps_a_held_lock_fresh_until_released(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT", 0.05)
    path = tmp_path / "cell.lock"
    assert try_lock(path)
    try:
        _backdate(path, locks.LEASE + 30)  # as a machine on the other side would see it, unrenewed
        deadline = time.monotonic() + 5
        while time.time() - path.stat().st_mtime > 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.time() - path.stat().st_mtime < 10  # renewed
        assert len(_heartbeats(path)) == 1
    finally:
        release(path)
    time.sleep(0.2)
    assert not path.exists() and _heartbeats(path) == []  # release stops it


def test_two_takers_of_one_stale_lock_one_wins(tmp_path, capsys):
    path = tmp_path / "manifest.lock"
    for _ in range(20):  # at once: exactly one wins, and one warning line says so
        path.touch()
        _backdate(path, locks.GRACE + 5)
        start, wins = threading.Barrier(2), []

        def take(start=start, wins=wins):
            start.wait()
            wins.append(try_lock(path))

        takers = [threading.Thread(target=take) for _ in range(2)]
        for t in takers:
            t.start()
        for t in takers:
            t.join(10)
        assert sorted(wins) == [False, True]
        assert capsys.readouterr().err.count("warning: took over") == 1
        release(path)
    # one judged it stale, then the other took it over before the first acted: the first must not
    # remove the new lock
    path.touch()
    _backdate(path, locks.GRACE + 5)
    _, seen, stale = locks._inspect(path)
    assert stale and try_lock(path)
    mine = path.read_text()
    assert not locks._remove_stale(path, seen)
    assert path.read_text() == mine and holder(path)["pid"] == os.getpid()
    release(path)
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def test_a_dead_process_lock_on_this_host_is_taken_over(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True)
    path = tmp_path / "run.lock"
    path.write_text(json.dumps({"host": locks._HOST, "pid": int(dead.stdout), "since": "then"}))
    assert holder(path) is None and try_lock(path)  # fresh mtime: the pid decides, not the lease
    assert capsys.readouterr().err == f"warning: took over {path}: its process {int(dead.stdout)} has ended\n"
    release(path)
    # a container restarted in place: same host name, and this process got the dead one's pid
    path.write_text(json.dumps({"host": locks._HOST, "pid": os.getpid(), "since": "then"}))
    assert holder(path) is None and try_lock(path)
    assert not try_lock(path)  # but one this process holds is held
    release(path)


def test_describe_is_one_line_whatever_the_record():
    line = describe({"host": "node\n7", "pid": "1\r\n2", "since": "x" * 500}, "/r/.lock")
    assert "\n" not in line and "\r" not in line and len(line) < 250
    assert describe(None, "/r/.lock") == "? (pid ?, since ?); if that process is gone, delete /r/.lock"


def test_a_run_left_with_empty_locks_completes(tiny_path, tmp_path):
    """`bench run` on a directory where a crash left an empty manifest lock and base-model lock:
    it takes them over, one line each, and finishes (it used to wait forever, silently)."""
    out = tmp_path / "run"
    empty = [out / ".locks" / "manifest.lock", out / "toy" / "base" / "seed0" / ".lock"]
    for path in empty:
        path.parent.mkdir(parents=True)
        path.touch()
        _backdate(path, 60)
    args = ["run", "--preset", "smoke", "--methods", "dppo", "--epochs", "1", "--steps", "4",
            "--eval-steps", "4", "--eval-limit", "2", "--eval-ood-limit", "2",
            "--model-path", tiny_path, "--out", str(out)]
    r = _within(300, CliRunner().invoke, app, args)
    assert r.exit_code == 0, r.output[-2000:]
    for path in empty:
        assert r.stderr.count(f"warning: took over {path}: it was empty") == 1
    assert json.loads((out / "manifest.json").read_text())["status"] == "done"
    assert not any(p.exists() for p in empty) and not any(_heartbeats(p) for p in empty)
