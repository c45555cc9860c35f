"""GPU memory per phase of the work (rollout, decode, reward, update, evaluation), per device.

A phase measures every CUDA device this process has touched: the policy's card, and the
reward models' where `--reward-device` puts them on another. Peaks belong to one cell: each
trainer owns a `MemoryMeter`, so an epoch row never carries an earlier cell's or the base
evaluation's peak. Out of memory inside a phase is one line naming the phase and the knob
that lowers it (`memory_phase`, which records nothing: a meter's phase adds the peaks).
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


def _devices() -> list[int]:
    """The CUDA devices to measure: all of them once CUDA is in use (a device this process never
    allocated on reads 0 and is left out)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return []
    return list(range(torch.cuda.device_count()))


@contextmanager
def memory_phase(phase: str):
    """A CUDA out-of-memory error inside becomes one line naming `phase` and its knob."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise OutOfMemory(f"out of GPU memory in the {phase}: {LOWER[phase]}") from None


class MemoryMeter:
    """One cell's peaks: `peaks` maps phase → device (`cuda:0`, …) → the most memory the phase
    held there (GB; a phase includes the phases inside it: the rollout its decode). Epoch rows
    carry them as `peak_gb/<phase>/<device>` (`metrics`)."""

    def __init__(self) -> None:
        self.peaks: dict[str, dict[str, float]] = {}
        self._open: list[tuple[str, dict[int, int]]] = []  # (phase, device → bytes so far), innermost last

    def metrics(self) -> dict[str, float]:
        return {f"peak_gb/{phase}/{device}": round(gb, 2)
                for phase, per_device in self.peaks.items() for device, gb in per_device.items()}

    @contextmanager
    def phase(self, phase: str):
        """`memory_phase`, and on CUDA the phase's peak on each device goes to `peaks`."""
        devices = _devices()
        if devices:  # the peak counters restart here: the enclosing phase keeps what it had
            if self._open:
                outer = self._open[-1][1]
                for d in devices:
                    outer[d] = max(outer.get(d, 0), torch.cuda.max_memory_allocated(d))
            for d in devices:
                torch.cuda.reset_peak_memory_stats(d)
            self._open.append((phase, {}))
        try:
            with memory_phase(phase):
                yield
        finally:
            if devices:
                name, peaks = self._open.pop()
                for d in devices:
                    peak = max(peaks.get(d, 0), torch.cuda.max_memory_allocated(d))
                    if self._open:
                        self._open[-1][1][d] = max(self._open[-1][1].get(d, 0), peak)
                    if peak > 0:
                        per_device = self.peaks.setdefault(name, {})
                        per_device[f"cuda:{d}"] = max(per_device.get(f"cuda:{d}", 0.0), peak / 2**30)
