"""RL fine-tuning methods. Every module in this package that registers a method with
`@register_method` is imported here, so a new method is one new file."""

import importlib
import pkgutil

from methods.base import (
    Method,
    MethodConfig,
    MethodError,
    StepLoss,
    StepTensors,
    build_method,
    get_method,
    method_names,
    register_method,
)

_INFRASTRUCTURE = {"base", "dist", "sde", "trainer"}
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _INFRASTRUCTURE and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["Method", "MethodConfig", "MethodError", "StepLoss", "StepTensors", "build_method",
           "get_method", "method_names", "register_method"]
