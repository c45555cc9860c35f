"""The run of an experiment, by responsibility:

- `config.py`: presets as TOML data, `--methods` variants, resolution; `preset_toml.py` writes one
- `evaluation.py`: the preset's benchmarks and the KL to the pretrained model
- `cell.py`: one method × seed: training, checkpoints, resume
- `spec.py`: a run resolved before any work (`plan` → `RunSpec`)
- `experiment.py`: methods × seeds, the base model, the manifest, the report
- `export.py`: a trained cell read back
"""

from flowarena.harness.run.cell import CellRun, checkpoint_files, read_checkpoint_state, save_checkpoint
from flowarena.harness.run.config import (
    PRESETS,
    EvalSettings,
    Preset,
    RunError,
    get_preset,
    load_preset,
    method_variant,
    resolve,
)
from flowarena.harness.run.evaluation import EVAL_SEED, Evaluation, kl_to_pretrained
from flowarena.harness.run.experiment import base_eval, run_experiment, versions
from flowarena.harness.run.export import export_cell, load_cell_policy, read_cell
from flowarena.harness.run.preset_toml import to_toml
from flowarena.harness.run.spec import RunSpec, plan, recipe

__all__ = ["CellRun", "EVAL_SEED", "EvalSettings", "Evaluation", "PRESETS", "Preset", "RunError", "RunSpec",
           "base_eval", "checkpoint_files", "export_cell", "get_preset", "kl_to_pretrained",
           "load_cell_policy", "load_preset", "method_variant", "plan", "read_cell", "recipe",
           "read_checkpoint_state", "resolve", "run_experiment", "save_checkpoint", "to_toml", "versions"]
