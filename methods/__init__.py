"""RL fine-tuning methods. Every module in this package that registers a method with
`@register_method` is imported here, so a new method is one new file."""

from flowarena.core.registry import discover
from flowarena.methods.base import (
    METHODS,
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

# every method file registers itself; the trainer's own modules register nothing
discover(__name__, skip={"advantages", "base", "compute", "config", "diagnostics", "dist", "forward",
                         "memory", "optim", "rollout", "sde", "trainer"})

__all__ = ["METHODS", "Method", "MethodConfig", "MethodError", "StepLoss", "StepTensors", "build_method",
           "get_method", "method_names", "register_method"]
