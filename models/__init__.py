"""Policy backends behind one protocol (`models.base.FlowModel`), looked up by short name."""

from __future__ import annotations

from pathlib import Path

from flowarena.core.registry import discover
from flowarena.models.base import MODELS, FlowModel, ModelError, register_model

# each adapter registers itself; the skipped modules are helpers that register nothing
discover(__name__, skip={"base", "diffusers_io", "precision", "schedule", "text", "toy_pretrain"})


def check_device(device: str) -> None:
    """A device string torch understands and this machine has, or one clear ModelError."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r}: no CUDA GPU is visible on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
    elif dev.type != "cpu":
        raise ModelError(f"device {device!r} is not supported (use cpu, cuda or cuda:N)")


def check_options(name: str, options: dict) -> None:
    """Options a model cannot take, before any weights are read."""
    resolution = options.get("resolution")
    if resolution is not None and resolution < 1:  # 0 would silently mean "the pipeline's default"
        raise ModelError("--resolution must be a positive number of pixels")
    MODELS.get(name).check_options(options)


def load_model(name: str, path: str | None = None, device: str = "cpu", **options) -> FlowModel:
    """`path`: the toy's weights file, or a diffusers pipeline directory or hub id. `options` go
    to the diffusers adapters (`dtype`, `resolution`, `shift`, `max_sequence_length`, `max_batch`,
    `gradient_checkpointing`; see models.diffusers_flow)."""
    check_device(device)
    check_options(name, options)
    return MODELS.get(name).load(path, device, **options)


def base_identity(model_name: str, model_path: str | None = None, model_options: dict | None = None,
                  content: bool = True) -> dict:
    """What cells are trained from (flowarena.core.identity): the model, where its weights are
    read (`path` None: the shipped or default ones), and a sha256 of them, as `load_model`
    finds them: the toy's weights file hashed whole; a diffusers directory, or a hub id in the
    local cache, by its small files (`hashed` says). `content=False`: the path alone (what
    runs of older code recorded). `model_options` that change what is loaded are recorded too."""
    from flowarena.core.identity import fingerprint

    model = MODELS.get(model_name)
    default, where = model.weights_source(None), model.weights_source(model_path)
    source = None
    if Path(where).expanduser().exists():
        source = Path(where).expanduser().resolve()
        where = str(source)
    elif content:
        source = _cached_snapshot(where)
    sha, hashed = fingerprint(source) if content else (None, "nothing (the path alone)")
    shipped = where in (default, str(Path(default).expanduser().resolve()))
    record = {"model": model_name, "path": None if model_path is None or shipped else where,
              "source": where, "sha256": sha, "hashed": hashed}
    if dtype := (model_options or {}).get("dtype"):  # shown, not compared: the manifest compares options
        record["dtype"] = str(dtype)
    return record


def _cached_snapshot(hub_id: str) -> Path | None:
    """A hub id's folder in the local cache, without going online (None: not downloaded)."""
    from flowarena.core.hub import HUB_ID

    if not HUB_ID.match(hub_id):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or no hub library): nothing to hash
        return None


__all__ = ["FlowModel", "ModelError", "MODELS", "register_model", "check_device", "check_options",
           "load_model", "base_identity"]
