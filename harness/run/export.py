"""A trained cell read back: its config, its run's model, its last checkpoint's weights
(`bench export`, `benchmarks/replay_rollouts.py`)."""

from __future__ import annotations

import json
from pathlib import Path

from flowarena.core.io import load_tensors
from flowarena.core.rundir import CellPaths
from flowarena.harness.run.cell import checkpoint_files, read_checkpoint_state
from flowarena.harness.run.config import RunError
from flowarena.models import MODELS, ModelError, load_model


def read_cell(cell_dir: str | Path) -> tuple[dict, dict, Path]:
    """A trained cell (`runs/<name>/<model>/<method>/seed<k>`): its config, its run's config
    (model path and options; empty without a manifest) and its last checkpoint's weights: their
    EMA where the cell kept one (`train.ema_decay`), the policy its evaluations measured."""
    cell_dir = Path(cell_dir)
    cell = CellPaths(cell_dir)
    cfg_path, ckpt = cell.config, cell.checkpoint
    if not cfg_path.is_file() or not (ckpt / "state.json").is_file():
        raise RunError(f"{cell_dir} is not a trained cell of a run (no config.json or "
                       "checkpoints/latest); give a directory like runs/default/toy/grpo/seed0")
    manifest = cell.run.manifest if cell.run is not None else None
    run_config = {}
    if manifest is not None and manifest.is_file():
        run_config = _read_object(manifest).get("config", {})
    files = checkpoint_files(ckpt, read_checkpoint_state(ckpt))
    weights = files.get("ema", files["weights"])
    config = _read_object(cfg_path)
    if not {"model", "train"} <= config.keys():
        raise RunError(f"{cfg_path} is damaged (it names no model or training settings)")
    return config, run_config, weights


def _read_object(path: Path) -> dict:
    """A JSON object file of the cell or its run; a truncated or garbled one is one line."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # bad JSON or bad UTF-8 (an unreadable file: the OSError's own line)
        raise RunError(f"{path} is damaged ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is damaged (not a JSON object)")
    return data


def _load_weights(weights: Path, cell_dir: Path) -> dict:
    """The checkpoint's tensors; a truncated or garbled file is one line, whatever the library says."""
    try:
        return load_tensors(weights)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
        raise RunError(f"checkpoint {weights} is damaged ({type(e).__name__}: "
                       f"{(str(e).splitlines() or [''])[0][:120]}); delete {cell_dir} to retrain "
                       "this cell") from None


def load_cell_policy(cell_dir: str | Path, device: str = "cpu", resolution: int | None = None):
    """The fine-tuned policy of a cell at its last checkpoint: the model of its run (at its
    resolution unless given), the adapter of its config, the trained weights."""
    config, run_config, weights = read_cell(cell_dir)
    options = dict(run_config.get("model_options", {}))
    if resolution is not None:
        options["resolution"] = resolution
    base = config.get("base") if isinstance(config.get("base"), dict) else {}
    path = base.get("path", run_config.get("model_path"))  # the weights the cell was trained from
    model = load_model(config["model"], path, device, **options)
    t = config["train"]
    model.setup_training(t["lora_rank"], t["lora_alpha"],
                         tuple(t["lora_targets"]) if t.get("lora_targets") else None)
    tensors = _load_weights(weights, Path(cell_dir))
    try:
        model.load_trainable_state_dict(tensors)
    except (RuntimeError, KeyError, ValueError) as e:  # torch's shape report runs to many lines
        raise RunError(f"checkpoint {weights} does not fit the {config['model']} model it names "
                       f"({(str(e).splitlines() or [''])[0][:120]}); was its config.json edited?") from None
    return model, config


def export_cell(cell_dir: str | Path, out: str | Path) -> tuple[Path, dict]:
    """`bench export`: a cell's fine-tuned policy where users load it without FlowArena. A
    diffusers model's LoRA is written from the checkpoint's tensors alone (no pipeline is
    loaded: SD3.5's would be ≈ 33 GB in fp32 on the CPU); the toy merges it into its weights."""
    config, _, weights = read_cell(cell_dir)
    model_cls, t = MODELS.get(config["model"]), config["train"]
    if not hasattr(model_cls, "write_lora"):
        model, config = load_cell_policy(cell_dir)
        return model.export(out), config
    if t["lora_rank"] == 0:
        raise ModelError(f"{model_cls.name}: only a LoRA fine-tune can be exported (this cell trained "
                         "the whole denoiser)")
    lora = model_cls.lora_config(t["lora_rank"], t["lora_alpha"],
                                 tuple(t["lora_targets"]) if t.get("lora_targets") else None)
    return model_cls.write_lora(_load_weights(weights, Path(cell_dir)), lora, out), config
