"""Weights the way users keep them: a hub id or a local directory, loaded through the
library's own `from_pretrained`, offline under HF_HUB_OFFLINE; any failure is one line."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class _NoTorchvisionNotice(logging.Filter):
    """Without torchvision, transformers notes on stderr that an image processor falls back to
    PIL, which is harmless (and what this project installs); it would precede the one line a
    user's mistake gets."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def load_pretrained(load: Callable, source: str, what: str, error: type[Exception], how: str = "",
                    weights: bool = False, **kw):
    """`load(source, local_files_only=…, **kw)`; a missing directory, a bad id or any loading
    failure raises `error` with one line naming `what`, the source and `how` to give another.
    `weights=True` (models, not tokenizers): safetensors only, never a pickle."""
    local = Path(source).expanduser()
    hint = f" ({how})" if how else ""
    if not local.exists() and not HUB_ID.match(source):
        raise error(f"{what}: directory not found: {local}{hint}")
    if weights:
        kw["use_safetensors"] = True
        pickles = [p for ext in ("bin", "pt", "pth", "ckpt") for p in local.rglob(f"*.{ext}")] \
            if local.is_dir() else []
        if pickles and not any(local.rglob("*.safetensors")):
            raise error(f"{what}: {local} holds pickled weights only ({pickles[0].name}); FlowArena loads "
                        "safetensors only: convert them (load and save_pretrained once, where you trust "
                        "the file)")
    try:
        return load(str(local) if local.exists() else source,
                    local_files_only=offline() or local.exists(), **kw)
    except Exception as e:  # noqa: BLE001 - any loading failure is the user's weights or path
        first = (str(e).strip().splitlines() or [""])[0][:200]
        if offline() and not local.exists():
            hint = f" (HF_HUB_OFFLINE is set: only the local cache is searched{'; ' + how if how else ''})"
        raise error(f"{what}: cannot load {source}{hint}: {type(e).__name__}: {first}") from None


_SHARED: dict[tuple, object] = {}


def shared(build: Callable, *key):
    """`build(*key)`, made once per process and key: the judge or PickScore that a run's every
    cell, its evaluation and its reward all use is loaded once (these models are read-only)."""
    k = (getattr(build, "__qualname__", repr(build)), *key)
    if k not in _SHARED:
        _SHARED[k] = build(*key)
    return _SHARED[k]
