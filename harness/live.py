"""Live logging for people who watch long runs in the tools they already use:
`bench run --log-to tensorboard` or `--log-to wandb` (optional extras).

Every epoch's row of `metrics.jsonl` goes out under the same names (`reward_mean`,
`k0/ratio_mean`, `k0/i1/trust_frac`, …) at step = epochs done, and each evaluation as
`eval/gm`, `eval/am`, `eval/preference_ood`, `eval/kl_to_pretrained`. One logged run per
method × seed:

- TensorBoard: event files under `<run>/tensorboard/<model>/<method>/seed<k>`, so
  `tensorboard --logdir <run>/tensorboard` shows every cell side by side.
- W&B: one wandb run per cell, grouped by the run directory's name, files under `<run>/`.
  Offline unless `WANDB_MODE` says otherwise or `WANDB_API_KEY` is set; offline runs need
  no account (`wandb sync <run>/wandb/offline-run-*` uploads them later).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from flowarena.core.errors import FlowArenaError
from flowarena.core.results import EvalRecord
from flowarena.core.rundir import RunDir

LOG_TO = ("tensorboard", "wandb")


class LiveLogError(FlowArenaError, ValueError):
    """--log-to names an unknown backend, or its package is not installed."""


def scalars(row: dict) -> dict[str, float]:
    """The finite numbers of a metrics row (lists such as `window` and text stay out)."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def eval_scalars(ev: EvalRecord) -> dict[str, float]:
    """An evaluation's headline metrics (not the breakdown) and the KL, as `eval/<name>`."""
    out = {f"eval/{m.log_name or m.key}": m.value for m in ev.metrics if m.role != "detail"}
    if ev.kl is not None:
        out["eval/kl_to_pretrained"] = ev.kl
    return out


class TensorBoardLog:
    def __init__(self, log_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```")

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLog:
    def __init__(self, run_dir: Path, name: str, config: dict):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "flowarena"), name=name,
                              group=run_dir.resolve().name, config=config, dir=str(run_dir), mode=mode)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def check_log_to(kind: str | None) -> None:
    """Fail before any work when the backend is unknown or not installed."""
    if kind is None:
        return
    if kind not in LOG_TO:
        raise LiveLogError(f"--log-to {kind!r}: use one of {', '.join(LOG_TO)}")
    module = "tensorboard" if kind == "tensorboard" else "wandb"
    try:
        __import__(module)
    except ImportError:
        raise LiveLogError(f"--log-to {kind} needs the {module} package: "
                           f"pip install 'flowarena[{kind}]'") from None


def open_live_log(kind: str | None, run_dir: Path, model: str, method: str, seed: int,
                  config: dict) -> TensorBoardLog | WandbLog | None:
    if kind is None:
        return None
    check_log_to(kind)
    if kind == "tensorboard":
        return TensorBoardLog(RunDir(run_dir).tensorboard(model, method, seed), config)
    return WandbLog(run_dir, f"{model}/{method}/seed{seed}", config)
