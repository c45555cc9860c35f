"""Atomic, pickle-free persistence: JSON and safetensors written via temp file + rename."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flowarena.core.errors import FlowArenaError
from flowarena.core.rundir import CellPaths


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputError(FlowArenaError, OSError):
    """An output path whose write would destroy something: a device, a directory, a link, a
    cell's checkpoint or one of the command's own inputs."""


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


def check_replaceable(path: str | Path) -> None:
    """A write may create `path` or replace a regular file there, nothing else (renaming over
    /dev/null as root would replace the machine's /dev/null)."""
    if os.path.lexists(path):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise OutputError(f"refusing to write {path}: it is {kind}, not a regular file")


def check_output(out: str | Path, inputs: Iterable[str | Path | None] = (), *, file: bool = True) -> None:
    """A path a user names for a command's output, checked before any work: never inside a
    cell's checkpoints (the files a run resumes from), never one of the command's inputs, and
    (a `file`, not a directory to write into) nothing but a regular file to replace."""
    target = Path(out).resolve()
    for d in (target, *target.parents):
        if d == (cell := CellPaths(d.parent)).checkpoints and cell.config.is_file():
            raise OutputError(f"refusing to write {out}: it is inside the checkpoints of the cell "
                              f"{d.parent}; write elsewhere")
    for given in inputs:
        if given is not None and os.path.lexists(given) and Path(given).resolve() == target:
            raise OutputError(f"refusing to write {out}: it is an input of this command")
    if file:
        check_replaceable(out)


def atomic_write(path: str | Path, write) -> None:
    """Write via a temp file in the same directory and rename: readers never see half a file,
    and only a regular file (or nothing) is ever replaced (`check_replaceable`)."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        err = _write_error(e, path, tmp) if isinstance(e, Exception) else e  # Ctrl-C stays Ctrl-C
        if err is e:
            raise
        raise err from e


# the Rust io::Error in a library's message (safetensors' own error type, even on a full disk):
# "... (os error 28)" now, "IoError(Os { code: 28, ... })" in older releases
_OS_ERROR = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def _write_error(e: Exception, path: Path, tmp: str) -> BaseException:
    """A failed write as one line the CLI prints: an OSError naming the file written (not its
    temp file), with the errno the library's message carries (ENOSPC: "No space left on device").
    Other errors pass unchanged."""
    if isinstance(e, FlowArenaError):
        return e
    if isinstance(e, OSError):
        if e.errno is None or e.filename not in (None, tmp):
            return e
        return OSError(e.errno, e.strerror, str(path))  # the errno's subclass (PermissionError…)
    if m := _OS_ERROR.search(str(e)):
        code = int(m[1] or m[2])
        return OSError(code, os.strerror(code), str(path))
    return e  # anything else is a bug, and keeps its traceback


def write_json(path: str | Path, obj) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
    atomic_write(path, w)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    atomic_write(path, w)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer's state into tensors + a JSON-able remainder (no pickle)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
