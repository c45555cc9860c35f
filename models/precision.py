"""Precision helpers: which dtype a precision setting means on a device, and fp32 arithmetic
over low-precision weights without an fp32 copy (`FlowModel.precision` / `_autocast` use them)."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn

Precision = Literal["auto", "bf16", "bf16-native"]
PRECISIONS = typing.get_args(Precision)
"""A precision setting (eval.precision, train.ode_precision): "auto" as the model computes,
"bf16" under bf16 autocast, "bf16-native" bf16 only where the hardware has bf16 units."""


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 in hardware: a CUDA card that supports it, or a CPU with
    AVX-512-BF16 or AMX units. Elsewhere torch emulates bf16 (measured on an AVX2 EPYC: the toy
    UNet's forward 20–24x slower than in fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(setting: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype a precision setting asks for on `device` (None: the model's own)."""
    if setting not in PRECISIONS:
        raise ValueError(f"a precision is one of {', '.join(PRECISIONS)}, not {setting!r}")
    if setting == "bf16" or (setting == "bf16-native" and native_bf16(device)):
        return torch.bfloat16
    return None


def _low_precision(t: Tensor | None) -> bool:
    return t is not None and t.is_floating_point() and t.dtype != torch.float32


@contextmanager
def fp32_over(net: nn.Module) -> Iterator[None]:
    """Inside, `net` computes in fp32 although its weights are bf16 (or fp16), without an fp32
    copy of it: each module's own low-precision parameters and buffers are upcast for the
    span of its forward only (one layer's fp32 copy at a time), and its floating inputs cast
    to fp32. The values are the bf16 weights' exactly, so this is the same policy computed
    without rounding. Only without gradient: autograd would keep the swapped tensors."""
    if torch.is_grad_enabled():
        raise RuntimeError("fp32_over computes without gradient only")
    stashed: dict[int, list[tuple[dict, str, Tensor]]] = {}  # per module: (its table, name, original)

    def up(t):
        return t.float() if isinstance(t, Tensor) and _low_precision(t) else t

    def before(module, args, kwargs):
        mine = stashed.setdefault(id(module), [])
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if _low_precision(t):
                    mine.append((table, name, t))
                    table[name] = nn.Parameter(t.float(), False) if isinstance(t, nn.Parameter) else t.float()
        return tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}

    def restore(module, *_):  # this module's own only: an enclosing module is still in its forward
        for table, name, t in reversed(stashed.pop(id(module), [])):
            table[name] = t

    owners = [m for m in net.modules()
              if any(_low_precision(t) for t in (*m._parameters.values(), *m._buffers.values()))]
    handles = [h for m in owners for h in (m.register_forward_pre_hook(before, with_kwargs=True),
                                           m.register_forward_hook(restore, always_call=True))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for entries in stashed.values():  # after an exception inside a forward
            for table, name, t in reversed(entries):
                table[name] = t

