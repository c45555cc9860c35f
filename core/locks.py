"""Locks in a run directory, for processes on one machine or many sharing a file system.

A lock is a small file holding who took it: host, process id, time. It is written whole to a
temporary file, then hard-linked to its name (atomic, and fails if the name exists, on NFS too),
so this code never leaves a lock half-written: an empty or unreadable one older than GRACE was
left by a crash or a full disk, and is taken over.

Waiting for a lock must end, so a lock nobody can be holding is stale and taken over, with one
warning line: on this host, when its process no longer runs; of another host, whose processes
cannot be checked from here, when its holder stopped renewing it. While a process holds a lock a
thread touches its mtime every HEARTBEAT seconds; a foreign lock untouched for LEASE seconds
(env FLOWARENA_LOCK_LEASE) belongs to a dead or cut-off machine. The lease is long enough to
absorb NFS attribute caching and modest clock skew; a machine paused for longer loses its locks.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from flowarena.core.errors import FlowArenaError

HEARTBEAT = 30.0  # seconds between touches of a held lock's mtime
LEASE = 300.0  # a foreign lock untouched this long is stale (default of FLOWARENA_LOCK_LEASE)
GRACE = 5.0  # an unreadable lock younger than this may be an older version's, being written

_HOST = socket.gethostname()
_TOKEN = uuid.uuid4().hex  # this process: a lock with our host and pid but not this is a dead namesake's
_beats: dict[str, threading.Event] = {}  # locks this process holds → their heartbeat's stop


class LockError(FlowArenaError, RuntimeError):
    """A run directory, or part of it, is in use by another process."""


def _lease() -> float:
    """LEASE, or FLOWARENA_LOCK_LEASE, read at each use so tests and users can change it."""
    text = os.environ.get("FLOWARENA_LOCK_LEASE")
    try:
        return LEASE if text is None else float(text)
    except ValueError:
        raise LockError(f"FLOWARENA_LOCK_LEASE={text!r} must be a number of seconds") from None


def _inspect(path: Path) -> tuple[dict | None, os.stat_result | None, str | None]:
    """The lock at `path`: (record, stat, why it is stale, or None while it may be held);
    all None when there is no lock."""
    try:
        with open(path, "rb") as f:  # stat and content of one file, even if it is replaced meanwhile
            st, raw = os.fstat(f.fileno()), f.read()
    except FileNotFoundError:
        return None, None, None
    age = time.time() - st.st_mtime
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if not (isinstance(info, dict) and isinstance(info.get("host"), str) and isinstance(info.get("pid"), int)
            and info["pid"] > 0):  # pid 0 or -1 would make kill() test a process group
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))
        what = "empty (left by a crash or a full disk)" if not raw.strip() else "not a lock record"
        return {"host": "?", "pid": "?", "since": since}, st, (f"it was {what}" if age > GRACE else None)
    if info["host"] != _HOST:
        lease = _lease()
        if age > lease:
            return info, st, (f"{info['host']} (pid {info['pid']}) stopped renewing it {age:.0f} s ago "
                              f"(lease {lease:.0f} s)")
        return info, st, None
    if info["pid"] == os.getpid():  # ours, or left by an earlier process that had our pid (a container)
        return info, st, None if info.get("token") == _TOKEN else "an earlier process with this pid left it"
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return info, st, f"its process {info['pid']} has ended"
    except (PermissionError, OverflowError):
        pass  # runs as another user (or an absurd pid): counts as held
    return info, st, None


def holder(path: Path) -> dict | None:
    """Who holds the lock at `path`: its record, or None when it is free or stale."""
    info, _, stale = _inspect(Path(path))
    return None if stale else info


def _who(info: dict | None) -> str:
    """'host (pid N, since T)' on one line, whatever the record holds."""
    def field(key: str) -> str:
        return " ".join(str((info or {}).get(key, "?")).split())[:80]  # a foreign file: no newlines
    return f"{field('host')} (pid {field('pid')}, since {field('since')})"


def describe(info: dict | None, path: Path) -> str:
    """Who holds the lock at `path` and what to do about it, in one line."""
    return f"{_who(info)}; if that process is gone, delete {path}"


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_mtime_ns, a.st_size) == (b.st_dev, b.st_ino, b.st_mtime_ns, b.st_size)


def _remove_stale(path: Path, seen: os.stat_result) -> bool:
    """Remove the stale lock `seen` at `path`; False when another taker got there first. Renaming is
    atomic, so of several takers one moves it; one that moved a successor instead (another taker's
    new lock, or one renewed since it was judged) puts it back."""
    grave = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return False
    try:
        if _same(os.stat(grave), seen):
            return True
        try:
            os.link(grave, path)
        except FileExistsError:
            pass  # a third taker slipped in meanwhile: nothing left to restore into
        return False
    finally:
        grave.unlink(missing_ok=True)


def _heartbeat(path: Path, ino: int, every: float, stop: threading.Event) -> None:
    """Touch the held lock's mtime until `stop`, so other hosts see its holder alive."""
    while not stop.wait(every):
        try:
            if os.stat(path).st_ino == ino:  # not one that replaced ours after a takeover
                os.utime(path)
        except OSError:
            pass  # gone, or a network hiccup: the next beat tries again


def try_lock(path: Path) -> bool:
    """Take the lock at `path` if it is free or stale; False when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": _HOST, "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), "token": _TOKEN}
    every = min(HEARTBEAT, _lease() / 4)  # several beats per lease, whatever the lease
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(me))  # whole before it appears under the lock's name
        for _ in range(3):
            try:
                os.link(tmp, path)
            except FileExistsError:
                _, seen, stale = _inspect(path)
                if seen is None:
                    continue  # released meanwhile
                if stale is None:
                    return False
                if _remove_stale(path, seen):
                    print(f"warning: took over {path}: {stale}", file=sys.stderr, flush=True)
                continue
            stop = threading.Event()
            _beats[os.path.abspath(path)] = stop
            threading.Thread(target=_heartbeat, args=(path, os.stat(tmp).st_ino, every, stop), daemon=True,
                             name=f"heartbeat {path}").start()
            return True
        return False
    finally:
        tmp.unlink(missing_ok=True)


def release(path: Path) -> None:
    """Remove the lock at `path` if this process holds it."""
    path = Path(path)
    stop = _beats.pop(os.path.abspath(path), None)
    if stop is not None:
        stop.set()
    info, _, _ = _inspect(path)
    if info and info.get("host") == _HOST and info.get("pid") == os.getpid() and info.get("token") == _TOKEN:
        path.unlink(missing_ok=True)


def wait_lock(path: Path, what: str | None = None, timeout: float | None = None, poll: float = 2.0) -> None:
    """Take the lock at `path` (`what` it guards, for messages), waiting while another process holds
    it: one line when the wait starts, LockError after `timeout` seconds. A dead holder's lock
    turns stale (see the module's docstring), so only a live holder is waited for without end."""
    path = Path(path)
    what = what or f"the lock {path}"
    start, told = time.monotonic(), False
    while not try_lock(path):
        info = holder(path)
        if info is not None and not told:
            print(f"waiting for {what}, held by {_who(info)} ...", file=sys.stderr, flush=True)
            told = True
        if timeout is not None and time.monotonic() - start >= timeout:
            raise LockError(f"gave up after {timeout:.0f} s waiting for {what}, held by "
                            f"{describe(info, path)}")
        time.sleep(poll if timeout is None else max(0.0, min(poll, start + timeout - time.monotonic())))
