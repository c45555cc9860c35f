"""A stand-in accelerator for tests: tensors that say they live on `fakegpu:0` while their
values sit in host memory, and a dispatch mode that applies CUDA's placement rules to them.

Helpers for tests/test_fake_device.py, not tests. Why not FakeTensorMode on `cuda:0`: on a
CPU-only build of torch any autograd graph over a tensor whose device is `cuda` aborts the
process (c10 `getDeviceGuardImpl`: "PyTorch is not linked with support for cuda devices"),
even under FakeTensorMode, so no update could run; fake tensors also have no values, so the
trainer's `.item()`s, boolean masks and rewards could not. Here PrivateUse1, renamed
`fakegpu`, gets torch's Python device guard (so autograd works), and every op sees CUDA's
rules: all tensor operands on one device, except 0-dim CPU tensors (scalars) and the CPU
indices of an indexing op; `.to` / `copy_` cross devices; a factory call on the device
takes no CPU generator; `.numpy()` of a device tensor fails. The op itself runs on the host
values, so the numbers are the CPU's: an epoch runs with real rewards, losses and gradients.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

NAME = "fakegpu"
_kernels: list[torch.library.Library] = []  # kept alive: a collected Library drops its kernels


def device() -> torch.device:
    """The stand-in device (PrivateUse1 is renamed once per process; renaming is permanent)."""
    if torch._C._get_privateuse1_backend_name() != NAME:
        from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

        _setup_privateuseone_for_python_backend(NAME, backend_module=_Module())
        # `torch.tensor(..., device=)` / `as_tensor` build their tensor with the Python key off,
        # so they reach the backend's own kernels: these three make them DeviceTensors too
        lib = torch.library.Library("aten", "IMPL")
        lib.impl("empty_strided", lambda size, stride, dtype=None, **_: DeviceTensor(
            torch.empty_strided(size, stride, dtype=dtype)), "PrivateUse1")
        lib.impl("empty.memory_format", lambda size, dtype=None, **_: DeviceTensor(
            torch.empty(size, dtype=dtype)), "PrivateUse1")
        lib.impl("_copy_from", _copy_from, "PrivateUse1")
        _kernels.append(lib)
    return torch.device(NAME, 0)


class _Module:
    """`torch.fakegpu`: what torch asks of a device module, gradient checkpointing's RNG stash
    included (the device's random numbers are the host generator's: ops run on host values)."""

    def is_initialized(self) -> bool:
        return True

    def is_available(self) -> bool:
        return True

    def current_device(self) -> int:
        return 0

    def device_count(self) -> int:
        return 1

    def _is_in_bad_fork(self) -> bool:
        return False

    def manual_seed_all(self, seed: int) -> None:
        pass

    def device(self, index):
        return contextlib.nullcontext()

    def get_rng_state(self, device=None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, device=None) -> None:
        torch.set_rng_state(state)


def _copy_from(src, dst, non_blocking=False):
    (dst.elem if isinstance(dst, DeviceTensor) else dst).copy_(
        src.elem if isinstance(src, DeviceTensor) else src)
    return dst


class DeviceTensor(torch.Tensor):
    """Host values (`elem`) presented as a tensor on the stand-in device."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=torch.device(NAME, 0),
            requires_grad=elem.requires_grad)

    def __init__(self, elem: torch.Tensor):
        self.elem = elem

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a {NAME} tensor outside OnDevice()")

    def __repr__(self) -> str:
        return f"DeviceTensor({self.elem!r})"

    def numpy(self, *, force: bool = False):
        """CUDA's refusal (torch refuses any subclass, with another message)."""
        raise TypeError(f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to "
                        "copy the tensor to host memory first.")


class PlacementError(RuntimeError):
    """What CUDA would raise: an op mixes devices, or a CPU generator draws on the device."""


_CROSS = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}
_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default,
             torch.ops.aten.index_put.default, torch.ops.aten._index_put_impl_.default}


def _where(t: torch.Tensor) -> str:
    return NAME if isinstance(t, DeviceTensor) else t.device.type


class OnDevice(TorchDispatchMode):
    """Inside, tensors moved to `device()` are DeviceTensors and every op is placement-checked.
    `ops` counts the ops that ran on the device (a test can see that the work went there)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = kwargs.get("device")
        target = None if target is None else torch.device(target).type
        operands = args[:1] if func in _INDEXING else (args, kwargs)  # CPU indices are fine
        tensors = [t for t in tree_flatten(operands)[0] if isinstance(t, torch.Tensor)]
        places = {_where(t) for t in tensors if isinstance(t, DeviceTensor) or t.dim() > 0}
        if func in _INDEXING:
            values = [t for t in tree_flatten((args[2:], kwargs))[0] if isinstance(t, torch.Tensor)]
            places |= {_where(t) for t in values if isinstance(t, DeviceTensor) or t.dim() > 0}
        if func not in _CROSS and len(places) > 1:
            raise PlacementError(f"Expected all tensors to be on the same device, but found at least two "
                                 f"devices, {' and '.join(sorted(places))}! ({func})")
        on_device = target == NAME or (target is None and any(isinstance(t, DeviceTensor) for t in tensors))
        gen = kwargs.get("generator")
        if on_device and gen is not None and gen.device.type != NAME:
            raise PlacementError(f"Expected a '{NAME}' device type for generator but found "
                                 f"'{gen.device.type}' ({func})")
        if target == NAME:
            kwargs = {**kwargs, "device": torch.device("cpu")}
        inner_args, inner_kwargs = tree_map(lambda t: t.elem if isinstance(t, DeviceTensor) else t,
                                            (args, kwargs))
        out = func(*inner_args, **inner_kwargs)
        if on_device:
            self.ops += 1
        first = func._schema.returns[0] if func._schema.returns else None
        if first is not None and first.alias_info is not None and first.alias_info.is_write:
            return args[0] if "out" not in kwargs else kwargs["out"]  # in place: the caller's tensor
        if func is torch.ops.aten._to_copy.default and target is not None:
            return DeviceTensor(out) if target == NAME else out
        if on_device:
            return tree_map(lambda t: DeviceTensor(t) if isinstance(t, torch.Tensor) else t, out)
        return out
