"""A trained cell read back: its config, its run's model, its last checkpoint's weights
(`bench export`, `benchmarks/replay_rollouts.py`)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.core.io import load_tensors
from harness.run.cell import checkpoint_files, read_checkpoint_state
from harness.run.config import RunError
from models import load_model


def read_cell(cell_dir: str | Path) -> tuple[dict, dict, Path]:
    """A trained cell (`runs/<name>/<model>/<method>/seed<k>`): its config, its run's config
    (model path and options; empty without a manifest) and its last checkpoint's weights."""
    cell_dir = Path(cell_dir)
    cfg_path, ckpt = cell_dir / "config.json", cell_dir / "checkpoints" / "latest"
    if not cfg_path.is_file() or not (ckpt / "state.json").is_file():
        raise RunError(f"{cell_dir} is not a trained cell of a run (no config.json or "
                       "checkpoints/latest); give a directory like runs/default/toy/grpo/seed0")
    manifest = cell_dir.parents[2] / "manifest.json" if len(cell_dir.parents) > 2 else None
    run_config = {}
    if manifest is not None and manifest.is_file():
        run_config = json.loads(manifest.read_text()).get("config", {})
    weights = checkpoint_files(ckpt, read_checkpoint_state(ckpt))["weights"]
    return json.loads(cfg_path.read_text()), run_config, weights


def load_cell_policy(cell_dir: str | Path, device: str = "cpu", resolution: int | None = None):
    """The fine-tuned policy of a cell at its last checkpoint: the model of its run (at its
    resolution unless given), the adapter of its config, the trained weights."""
    config, run_config, weights = read_cell(cell_dir)
    options = dict(run_config.get("model_options", {}))
    if resolution is not None:
        options["resolution"] = resolution
    model = load_model(config["model"], run_config.get("model_path"), device, **options)
    t = config["train"]
    model.setup_training(t["lora_rank"], t["lora_alpha"],
                         tuple(t["lora_targets"]) if t.get("lora_targets") else None)
    model.load_trainable_state_dict(load_tensors(weights))
    return model, config
