"""Policy backends behind one protocol (`models.base.FlowModel`), looked up by short name."""

from __future__ import annotations

from harness.core.registry import discover
from models.base import MODELS, FlowModel, ModelError, register_model

discover(__name__, skip={"base", "schedule", "text", "toy_pretrain"})  # each adapter registers itself


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
    if name == "toy" and options.get("resolution") not in (None, 32):
        raise ModelError("the toy model draws 32 x 32 images only; --resolution is for diffusers models")


def load_model(name: str, path: str | None = None, device: str = "cpu", **options) -> FlowModel:
    """`path`: the toy's weights file, or a diffusers pipeline directory or hub id. `options` go
    to the diffusers adapters (`dtype`, `resolution`, `shift`, `max_sequence_length`, `max_batch`,
    `gradient_checkpointing`; see models.diffusers_flow)."""
    check_device(device)
    check_options(name, options)
    return MODELS.get(name).load(path, device, **options)


__all__ = ["FlowModel", "ModelError", "MODELS", "register_model", "check_device", "check_options",
           "load_model"]
