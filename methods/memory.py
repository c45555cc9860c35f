"""GPU memory per phase of the work (rollout, decode, reward, update, evaluation), per device.

A phase measures every CUDA device this process has touched: the policy's card, and the
reward models' where `--reward-device` puts them on another. Peaks belong to one cell: the
trainer of a cell starts them afresh (`reset_peaks`), so an epoch row never carries an
earlier cell's or the base evaluation's peak. Out of memory inside a phase is one line
naming the phase and the knob that lowers it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from flowarena.core.errors import FlowArenaError


class OutOfMemory(FlowArenaError, RuntimeError):
    """The accelerator ran out of memory; the message names the phase and the knob that lowers it."""


LOWER = {"rollout": "lower --rollout-batch", "decode": "lower --rollout-batch",
         "reward": "score with a smaller judge batch or give the reward models their own device",
         "update": "lower --micro-batch or add --gradient-checkpointing",
         "evaluation": "lower --eval-limit / --eval-ood-limit / --eval-final-limit"}


PEAK_MEMORY_GB: dict[str, dict[str, float]] = {}
"""Phase → device (`cuda:0`, …) → the most memory the phase held there in this cell (GB; a
phase includes the phases inside it: the rollout its decode). Epoch rows carry it as
`peak_gb/<phase>/<device>`."""
_open_phases: list[tuple[str, dict[int, int]]] = []  # (phase, device → bytes so far), innermost last


def _devices() -> list[int]:
    """The CUDA devices to measure: all of them once CUDA is in use (a device this process never
    allocated on reads 0 and is left out)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return []
    return list(range(torch.cuda.device_count()))


def reset_peaks() -> None:
    """A new cell: its rows report its own peaks only."""
    PEAK_MEMORY_GB.clear()


def peak_metrics() -> dict[str, float]:
    return {f"peak_gb/{phase}/{device}": round(gb, 2)
            for phase, per_device in PEAK_MEMORY_GB.items() for device, gb in per_device.items()}


@contextmanager
def memory_phase(phase: str):
    """A CUDA out-of-memory error inside becomes one line naming `phase` and its knob; on CUDA
    the phase's peak on each device goes to PEAK_MEMORY_GB."""
    devices = _devices()
    if devices:  # the peak counters restart here: the enclosing phase keeps what it had
        if _open_phases:
            outer = _open_phases[-1][1]
            for d in devices:
                outer[d] = max(outer.get(d, 0), torch.cuda.max_memory_allocated(d))
        for d in devices:
            torch.cuda.reset_peak_memory_stats(d)
        _open_phases.append((phase, {}))
    try:
        yield
    except torch.OutOfMemoryError:
        raise OutOfMemory(f"out of GPU memory in the {phase}: {LOWER[phase]}") from None
    finally:
        if devices:
            name, peaks = _open_phases.pop()
            for d in devices:
                peak = max(peaks.get(d, 0), torch.cuda.max_memory_allocated(d))
                if _open_phases:
                    _open_phases[-1][1][d] = max(_open_phases[-1][1].get(d, 0), peak)
                if peak > 0:
                    per_device = PEAK_MEMORY_GB.setdefault(name, {})
                    per_device[f"cuda:{d}"] = max(per_device.get(f"cuda:{d}", 0.0), peak / 2**30)
