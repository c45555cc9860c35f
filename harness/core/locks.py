"""Locks in a run directory, for processes on one machine or many sharing a file system.

A lock is a small file created with O_CREAT | O_EXCL (atomic on local disks and on NFS v3
and later) holding who took it: host, process id, time. A lock whose process is gone (on
this host, the pid no longer runs) is stale and is taken over; a lock of another host
cannot be checked from here, so it counts as held until its owner removes it (the message
names the file to delete if that process is known to be dead).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from harness.core.errors import FlowArenaError


class LockError(FlowArenaError, RuntimeError):
    """A run directory, or part of it, is in use by another process."""


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def holder(path: Path) -> dict | None:
    """Who holds the lock at `path`: its record, or None when it is free or stale."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None if not Path(path).exists() else {"host": "?", "pid": -1, "since": "?"}  # being written
    if info.get("host") != socket.gethostname():
        return info  # another machine's: cannot tell whether it still runs
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return None  # stale: its process has gone
    except (PermissionError, KeyError, ValueError, TypeError):
        pass
    return info


def describe(info: dict, path: Path) -> str:
    return (f"{info.get('host')} (pid {info.get('pid')}, since {info.get('since')}); if that process is "
            f"gone, delete {path}")


def try_lock(path: Path) -> bool:
    """Take the lock at `path` if it is free or stale; False when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _me()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if holder(path) is not None:
                return False
            path.unlink(missing_ok=True)  # stale: take it over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        try:  # two takers of one stale lock: the file that stayed decides
            return json.loads(path.read_text()) == me
        except (OSError, ValueError):
            return False
    return False


def release(path: Path) -> None:
    """Remove the lock at `path` if this process holds it."""
    path = Path(path)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if info.get("host") == socket.gethostname() and info.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def wait_lock(path: Path, poll: float = 2.0) -> None:
    """Take the lock at `path`, waiting while another process holds it."""
    while not try_lock(path):
        time.sleep(poll)
