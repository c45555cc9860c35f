"""Policy backends behind one protocol (`models.base.FlowModel`), looked up by short name."""

from __future__ import annotations

from models.base import FlowModel, ModelError

MODELS = {"toy": "the embedded 32x32 toy generator (default, CPU-friendly)"}


def load_model(name: str, path: str | None = None, device: str = "cpu") -> FlowModel:
    if name == "toy":
        from models.toy import load_toy

        return load_toy(path, device)
    raise ModelError(f"unknown model {name!r} (known: {', '.join(MODELS)})")


__all__ = ["FlowModel", "ModelError", "MODELS", "load_model"]
