"""The foundation every package stands on: errors, the registry, atomic I/O, the hub,
prompt formats, the scoring rules (Soft-TIFA, GenEval), the typed result files and the
layout of a run directory (rundir.py).

Nothing here imports from the rest of the project, so models, rewards, methods,
benchmarks, reports and the run can all build on it (tests/test_layers.py checks).
"""
