"""Device placement without a GPU: tests/fake_device_cases.py, run in a fresh process.

A process registers the stand-in accelerator once and for good (PrivateUse1 renamed
`fakegpu`, its device guard and kernels), and autograd sizes its per-device queues at the
process's first backward: in the suite's process, where other tests ran a backward first, a
backward on the stand-in would fail, and the registration would stay for every later test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_model_computation_of_an_epoch_runs_on_the_device():
    cases = "tests/fake_device_cases.py"
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", cases], cwd=ROOT,
                       capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    tail = "\n".join(line for line in r.stdout.splitlines()[-30:] if "registered at" not in line)
    assert r.returncode == 0, tail
    summary = r.stdout.strip().splitlines()[-1]
    assert re.search(r"\b6 passed\b", summary) and "failed" not in summary and "skipped" not in summary, tail
