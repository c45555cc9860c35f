"""What a diffusers adapter reads and writes: the pipeline (a hub id or a local directory, in the
dtype the device wants, of the right family) and its LoRA in diffusers' own file format, which a
plain pipeline of the family loads with `load_lora_weights`. Mixed into
`models.diffusers_flow.DiffusersFlowModel`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from flowarena.core.hub import load_pretrained
from flowarena.core.io import check_replaceable
from flowarena.models.base import MODELS, FlowModel, ModelError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for


def as_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype, or its name as a run's JSON model options hold it."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise ModelError(f"unknown dtype {value!r} (use {', '.join(DTYPES)})")
    return DTYPES[value]


class DiffusersFiles:
    """Loading and LoRA files for an adapter with `name`, `pipeline_class`, `default_path`, and
    once loaded `pipe` and `get_denoiser()`."""

    name: str
    pipeline_class: str
    default_path: str

    # --- loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | None = None, device: str = "cpu", dtype: torch.dtype | None = None,
             **options) -> FlowModel:
        """From a local pipeline directory or a hub id (offline under HF_HUB_OFFLINE), in `dtype`
        (default bf16 on CUDA, fp32 elsewhere); any failure is a one-line ModelError."""
        import diffusers

        source = path or cls.default_path
        local = Path(source).expanduser()
        if local.exists():
            cls._check_directory(local)
        device = torch.device(device)
        default_weights, default_compute = cls.default_dtypes(device)
        dtype = as_dtype(dtype) or default_weights
        pipe = load_pretrained(getattr(diffusers, cls.pipeline_class).from_pretrained, source,
                               cls.name, ModelError, weights=True, dtype=dtype)
        # fp32 weights on a GPU (for fp32 trained steps) still compute in bf16 elsewhere
        compute = options.pop("compute_dtype", None) or (
            default_compute if default_compute != torch.float32 else dtype)
        return cls(pipe, device, compute_dtype=compute, **options)

    @staticmethod
    def default_dtypes(device: torch.device) -> tuple[torch.dtype, torch.dtype]:
        """(weights, computation) a pipeline loads in on `device`: bf16 weights under bf16
        autocast on a GPU, fp32 on the CPU. The GPU-configuration tests run the GPU's answer
        on the CPU (tests/test_gpu_config.py)."""
        if device.type == "cuda":
            return torch.bfloat16, torch.bfloat16
        return torch.float32, torch.float32

    @classmethod
    def _check_directory(cls, local: Path) -> None:
        """A local pipeline of another family would load with random or mismatched parts."""
        index = local / "model_index.json"
        if not index.is_file():
            raise ModelError(f"{cls.name}: {local} is not a diffusers pipeline directory "
                             "(no model_index.json)")
        try:
            found = json.loads(index.read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError):
            raise ModelError(f"{cls.name}: {index} is unreadable or not JSON") from None
        if found != cls.pipeline_class:
            other = [n for n, c in MODELS.items() if getattr(c, "pipeline_class", None) == found]
            hint = f" (that is model {other[0]!r})" if other else ""
            raise ModelError(f"{cls.name}: {local} holds a {found} pipeline, not {cls.pipeline_class}{hint}")

    # --- LoRA files ---------------------------------------------------------------------
    def load_lora(self, path: str | Path) -> None:
        """A LoRA as `bench export` writes it (a directory with pytorch_lora_weights.safetensors,
        or the file), or any diffusers LoRA of this family, through the pipeline's own
        `load_lora_weights`; a missing or mismatched file is one ModelError line."""
        path = Path(path)
        file = path / LORA_FILE if path.is_dir() else path
        if not file.is_file():
            raise ModelError(f"{self.name}: no LoRA at {path} (expected {LORA_FILE} in the directory, as "
                             "bench export writes it)")
        try:
            self.pipe.load_lora_weights(str(file.parent), weight_name=file.name)
        except Exception as e:  # noqa: BLE001 - a file of another family or a damaged one
            raise ModelError(f"{self.name}: cannot load the LoRA {file}: {type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:160]}") from None

    def export(self, out: str | Path) -> Path:
        """The LoRA as `OUT/pytorch_lora_weights.safetensors` (`write_lora`)."""
        if getattr(self, "lora_rank", 0) <= 0:
            raise ModelError(f"{self.name}: only a LoRA fine-tune can be exported (this policy has "
                             "no adapter)")
        from peft import get_peft_model_state_dict

        net = self.get_denoiser()
        return self.write_lora(get_peft_model_state_dict(net), net.peft_config["default"], out)

    @classmethod
    def write_lora(cls, layers: dict[str, Tensor], config, out: str | Path) -> Path:
        """LoRA layers (peft's state-dict names, as a checkpoint holds them) and their peft
        LoraConfig as `OUT/pytorch_lora_weights.safetensors`, written by the pipeline class's own
        `save_lora_weights` with the config as metadata, so a plain diffusers pipeline of the same
        family takes it with `pipe.load_lora_weights(OUT)`. No pipeline is loaded for this."""
        import tempfile

        pipeline = getattr(__import__("diffusers"), cls.pipeline_class)
        layers = {k: v.detach().float().cpu() for k, v in layers.items()}
        out = Path(out)
        check_replaceable(out / LORA_FILE)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out, prefix=".export.") as tmp:  # atomic: rename in place
            pipeline.save_lora_weights(tmp, transformer_lora_layers=layers, weight_name=LORA_FILE,
                                       transformer_lora_adapter_metadata=config.to_dict())
            os.replace(Path(tmp) / LORA_FILE, out / LORA_FILE)
        return out / LORA_FILE
