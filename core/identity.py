"""What a run's cells are trained from, so that a resumed run and a report never pair cells
trained from different base weights. `models.base_identity` makes the record; this module
hashes weights and compares, describes and checks records without importing any model.

A record: {"model", "path" (None: the shipped or default weights), "source" (the file,
directory or hub id read), "sha256", "hashed" (what the hash covers)}; a cell's config.json
adds the preset's name and resolution, which are not part of the identity.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from flowarena.core.errors import FlowArenaError

HASH_LIMIT = 2**30
"""A single weights file up to this many bytes is hashed whole (the toy's 9 MB: ~20 ms)."""
SMALL = 2**20
"""A pipeline's files up to this many bytes (configs, tokenizers) are hashed; larger ones
(the weights) by name and size only, since reading gigabytes on every resume costs minutes."""

WHOLE = "the whole weights file"
SIZE_ONLY = "the file's size only (over 1 GiB)"
SMALL_FILES = "files up to 1 MiB (model_index.json, configs, tokenizers); larger ones by name and size"
NOTHING = "nothing (not on this machine)"


class BaseMismatch(FlowArenaError, ValueError):
    """Cells of one run record different base weights."""


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            h.update(chunk)
    return h.hexdigest()


def _pipeline_files(root: Path) -> list[Path]:
    """The files a diffusers pipeline loads: model_index.json and its components' folders
    (without a readable model_index.json: every folder), never hidden ones (a download cache's)."""
    try:
        index = json.loads((root / "model_index.json").read_text())
        parts = [k for k, v in index.items() if isinstance(v, list)]
    except (OSError, ValueError, AttributeError):
        parts = [d.name for d in root.iterdir() if d.is_dir()]
    files = [root / "model_index.json"] + [f for part in parts for f in sorted((root / part).rglob("*"))]
    return [f for f in files if f.is_file() and not any(p.startswith(".") for p in f.relative_to(root).parts)]


def fingerprint(source: Path | None) -> tuple[str | None, str]:
    """(sha256, what it covers) of a weights file or a pipeline directory; (None, NOTHING) where
    there is nothing to read."""
    if source is None or not source.exists():
        return None, NOTHING
    if source.is_file():
        size = source.stat().st_size
        if size > HASH_LIMIT:
            return hashlib.sha256(f"{source.name}\0{size}".encode()).hexdigest(), SIZE_ONLY
        return _sha_file(source), WHOLE
    h = hashlib.sha256()
    for f in _pipeline_files(source):
        size = f.stat().st_size
        digest = _sha_file(f) if size <= SMALL else f"{size} bytes"
        h.update(f"{f.relative_to(source).as_posix()}\0{digest}\n".encode())
    return h.hexdigest(), SMALL_FILES


def same_base(a: dict | None, b: dict | None) -> bool:
    """Whether two records name one base. A missing record (a run of older code) matches
    anything: the caller compares what that run recorded instead. Weights hashed whole match
    by content wherever the file lies; otherwise the path must match, and the hashes where
    both were taken."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return True
    if a.get("model") != b.get("model"):
        return False
    if a.get("hashed") == b.get("hashed") == WHOLE:
        return a.get("sha256") == b.get("sha256")
    return a.get("path") == b.get("path") and (
        a.get("sha256") is None or b.get("sha256") is None or a.get("sha256") == b.get("sha256"))


def describe_base(r: dict) -> str:
    """One record in a few words: "toy weights /w/toy.safetensors (sha256 1a2b3c4d5e6f)"."""
    where = r.get("path") or f"{r.get('source') or 'default'} (the default)"
    sha = f" (sha256 {r['sha256'][:12]})" if r.get("sha256") else ""
    return f"{r.get('model')} weights {where}{sha}"


def base_changed(what: str, was: dict, now: dict) -> str:
    """The one line refusing to resume `what` (a run or a cell) from other base weights."""
    fix = ("restore the weights it was trained from" if was.get("path") == now.get("path") else
          f"--model-path {was['path']}" if was.get("path") else "no --model-path (the default weights)")
    return f"{what} was trained from {describe_base(was)}; this command gives {describe_base(now)}: " \
           f"use a new --out or {fix}"


def check_bases(run_config: dict | None, cells: list[tuple[str, str, dict | None]]) -> None:
    """A run's cells, (model, where, the base its config.json records), and the manifest's
    record for its model: each model's must name one base (the report pairs them)."""
    run = run_config if isinstance(run_config, dict) else {}
    for model in sorted({m for m, _, _ in cells}):
        own = [("manifest.json", run.get("base"))] if run.get("model") == model else []
        check_one_base(own + [(where, base) for m, where, base in cells if m == model])


def check_one_base(records: list[tuple[str, dict | None]]) -> None:
    """(where, base record) of one model's cells (and its manifest): a BaseMismatch line
    naming two that differ, since their paired comparison would be meaningless."""
    known = [(w, r) for w, r in records if isinstance(r, dict)]
    for where, r in known[1:]:
        if not same_base(known[0][1], r):
            first, base = known[0]
            raise BaseMismatch(f"{where} was trained from {describe_base(r)} but {first} from "
                               f"{describe_base(base)}: a run's cells must share their base model; "
                               "move the odd cells to a run directory of their own")


def misplaced(record: dict, model: str, method: str, seed: int) -> str | None:
    """Why a cell's file does not belong to its directory (a copied cell: `cp -r seed0 seed1`),
    or None where its method, seed and model match the path."""
    wrong = [f"{k} {record.get(k)!r}" for k, v in (("model", model), ("method", method), ("seed", seed))
             if k in record and record[k] != v]
    return f"records {', '.join(wrong)}, not its directory's (a copied cell?), skipped" if wrong else None
