"""The model-adapter protocol every policy backend implements (toy, SD3.5, FLUX).

An adapter encodes prompts once, gives the (CFG-combined) velocity at (x, σ), knows
its latent shape and how to decode latents to images. Samplers, trainer and harness
see only this interface, so a new model is one adapter.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowarena.core.errors import FlowArenaError
from flowarena.core.registry import Registry
from flowarena.models.precision import PRECISIONS as PRECISIONS  # `as`: re-exported, imported from here
from flowarena.models.precision import Precision as Precision
from flowarena.models.precision import fp32_over, resolve_precision
from flowarena.models.precision import native_bf16 as native_bf16
from flowarena.models.schedule import ode_step, sd3_sigmas


class ModelError(FlowArenaError, RuntimeError):
    """A model cannot be built or loaded (missing or corrupt weights, unknown name)."""


# Model classes by `--model` name; each has a one-line `description` and a classmethod
# `load(path, device, **options)`.
MODELS: Registry[type] = Registry("model", ModelError)
register_model = MODELS.register


@dataclass
class PromptEmbeds:
    """Encoded prompts: conditional tensors and, for CFG, the unconditional ones (batch-first)."""

    cond: dict[str, Tensor]
    uncond: dict[str, Tensor] | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return next(iter(self.cond.values())).shape[0]

    def _map(self, fn) -> PromptEmbeds:
        un = None if self.uncond is None else {k: fn(v) for k, v in self.uncond.items()}
        return PromptEmbeds({k: fn(v) for k, v in self.cond.items()}, un, self.meta)

    def select(self, idx) -> PromptEmbeds:
        return self._map(lambda t: t[idx])

    def repeat_interleave(self, n: int) -> PromptEmbeds:
        return self._map(lambda t: t.repeat_interleave(n, dim=0))

    def to(self, device: torch.device | str, copy: bool = False) -> PromptEmbeds:
        moved = self._map(lambda t: t.to(device, copy=copy))
        moved.meta = {k: v.to(device, copy=copy) if isinstance(v, Tensor) else v
                      for k, v in self.meta.items()}
        return moved

    @property
    def nbytes(self) -> int:
        tensors = [*self.cond.values(), *(self.uncond or {}).values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    @staticmethod
    def cat(rows: list[PromptEmbeds]) -> PromptEmbeds:
        """Rows of one model's encoder (same shapes; `meta` is per batch, not per prompt)."""
        first = rows[0]
        def cat(part):
            return {k: torch.cat([getattr(r, part)[k] for r in rows]) for k in getattr(first, part)}
        return PromptEmbeds(cat("cond"), None if first.uncond is None else cat("uncond"), first.meta)


class PromptCache:
    """Encoded prompts in host memory, one row per (prompt, CFG on), at most `max_bytes`:
    the least recently used prompt leaves first. A prompt set revisited every epoch (the
    evaluation's, a small training set) is encoded once; a large one as often as it must."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._rows: OrderedDict[tuple[str, bool], PromptEmbeds] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: tuple[str, bool]) -> PromptEmbeds | None:
        row = self._rows.get(key)
        if row is None:
            self.misses += 1
        else:
            self.hits += 1
            self._rows.move_to_end(key)
        return row

    def put(self, key: tuple[str, bool], row: PromptEmbeds) -> None:
        if key in self._rows or row.nbytes > self.max_bytes:
            return
        self._rows[key] = row
        self.bytes += row.nbytes
        while self.bytes > self.max_bytes:
            self.bytes -= self._rows.popitem(last=False)[1].nbytes


class FlowModel(ABC):
    """A text-to-image flow-matching policy (velocity parameterisation)."""

    name: str = "model"
    shift: float = 3.0  # SD3 schedule shift
    default_steps: int = 20  # evaluation steps (ODE)
    default_guidance: float = 4.5
    sigma_min: float | None = None  # see models.schedule.sd3_sigmas
    device: torch.device = torch.device("cpu")
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    lora_init: bool | str = True  # peft's init_lora_weights: True = Kaiming-uniform A, B = 0
    default_lora_rank: int = 16  # when the training config leaves the rank to the model
    default_preset: str = "default"  # what `bench run --model NAME` trains without --preset
    default_path: str = ""  # the weights `load` reads without a path (a diffusers model: a hub id)
    # What a recipe for this model starts from, under every preset file's own settings:
    calibration: dict[str, dict] = {}  # per-method settings (the toy's trust-region thresholds)
    train_defaults: dict = {"lora_rank": None, "lora_alpha": None}  # None: the adapter's rank, α = 2r
    recipes_of: str | None = None  # another model whose presets this one trains with (None: its own)
    casts_weights: bool = True  # `load(dtype=...)` casts the weights (trained_precision "fp32" asks it)

    @classmethod  # noqa: B027 - a hook: most models take every option
    def check_options(cls, options: dict) -> None:
        """Refuse load options this model cannot take (before any weights are read)."""

    @classmethod
    def unknown_words(cls, prompts: list[str]) -> list[str]:
        """Words of `prompts` this model cannot read (a closed vocabulary's); [] for open text."""
        return []

    def skip_unknown_words(self) -> None:  # noqa: B027 - a hook: open text has nothing to skip
        """Read prompts with unknown words by the words known (a closed vocabulary only)."""

    @classmethod
    def weights_source(cls, path: str | Path | None = None) -> str:
        """Where `load(path)` reads the weights from (a run records and hashes it)."""
        return str(path or cls.default_path)
    _frozen_reference: nn.Module | None = None
    prompt_cache: PromptCache | None = None  # set by offload_text_encoders
    compute_dtype: torch.dtype = torch.float32
    """What `velocity` computes in: float32, or bfloat16 under autocast (the diffusers models on
    CUDA); `precision` changes it for a block."""

    @property
    def weights_dtype(self) -> torch.dtype:
        return torch.float32

    @contextmanager
    def precision(self, dtype: torch.dtype) -> Iterator[None]:
        """Inside, `velocity` computes in `dtype`. fp32 over bf16 weights (a GPU run's) is for
        measurements without gradient (`fp32_over`); trained fp32 steps need fp32 weights."""
        saved, self.compute_dtype = self.compute_dtype, dtype
        try:
            yield
        finally:
            self.compute_dtype = saved

    def precision_of(self, setting: str):
        """The block's precision for a setting of PRECISIONS (see resolve_precision)."""
        dtype = resolve_precision(setting, self.device)
        return nullcontext() if dtype is None else self.precision(dtype)

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            if self.weights_dtype == torch.float32 or torch.is_grad_enabled():
                return nullcontext()
            return fp32_over(self.get_denoiser())  # bf16 weights (a GPU run), fp32 arithmetic
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    @abstractmethod
    def encode_prompts(self, prompts: list[str], guidance: float = 1.0) -> PromptEmbeds:
        """Encode once per batch; the unconditional branch only when guidance > 1."""

    def text_encoders(self) -> list[nn.Module]:
        """The modules `encode_prompts` runs, which `offload_text_encoders` keeps off the device."""
        return []

    def offload_text_encoders(self, cache_bytes: int) -> None:
        """Text encoders to host memory, moved to the device only to encode the prompts that
        a cache of `cache_bytes` of embeddings does not hold (`embed`)."""
        for module in self.text_encoders():
            module.to("cpu")
        self.prompt_cache = PromptCache(cache_bytes)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def embed(self, prompts: list[str], guidance: float = 1.0) -> PromptEmbeds:
        """`encode_prompts`, through the prompt cache once the text encoders are offloaded."""
        cache = self.prompt_cache
        if cache is None:
            return self.encode_prompts(prompts, guidance)
        cfg = guidance > 1.0  # the unconditional branch is the only thing guidance changes
        rows = {p: cache.get((p, cfg)) for p in dict.fromkeys(prompts)}
        missing = [p for p, row in rows.items() if row is None]
        if missing:
            encoders = self.text_encoders()
            for module in encoders:
                module.to(self.device)
            try:
                fresh = self.encode_prompts(missing, guidance)
            finally:
                for module in encoders:
                    module.to("cpu")
            for i, p in enumerate(missing):  # a clone: a row must not keep its whole batch alive
                rows[p] = fresh.select(slice(i, i + 1)).to("cpu", copy=True)
                cache.put((p, cfg), rows[p])
        return PromptEmbeds.cat([rows[p] for p in prompts]).to(self.device)

    @abstractmethod
    def velocity(self, x: Tensor, sigma: Tensor, embeds: PromptEmbeds, guidance: float = 1.0) -> Tensor:
        """`v = v_u + w·(v_c − v_u)` at per-sample noise levels `sigma` [B]."""

    @property
    @abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent (without batch)."""

    @abstractmethod
    def decode(self, x: Tensor) -> Tensor:
        """Latents -> images [B, 3, H, W] in [0, 1]."""

    # --- what the trainer needs ---------------------------------------------------------
    @abstractmethod
    def get_denoiser(self) -> nn.Module:
        """The network RL fine-tunes (UNet / transformer); text encoders stay frozen."""

    @abstractmethod
    def set_denoiser(self, module: nn.Module) -> None:
        ...

    def setup_training(self, lora_rank: int | None = None, lora_alpha: float | None = None,
                       targets: tuple[str, ...] | None = None) -> list[nn.Parameter]:
        """LoRA through peft (rank > 0) or full fine-tuning (rank 0); returns the trainable
        parameters. The pretrained policy stays reachable through `reference()`. None: the
        adapter's default rank, α = 2 × rank and its target modules."""
        lora_rank = self.default_lora_rank if lora_rank is None else lora_rank
        net = self.get_denoiser()
        net.requires_grad_(False)
        if lora_rank > 0:
            try:
                net.add_adapter(self.lora_config(lora_rank, lora_alpha, targets))
            except ValueError as e:  # peft: a target naming no module, or one LoRA cannot adapt
                if targets is None:
                    raise
                why = ("no module has such a name" if "not found" in str(e)
                       else "a module they name is not one LoRA adapts")
                raise ModelError(f"lora_targets {list(targets)} do not fit the {type(net).__name__}: {why}; "
                                 "name its Linear or Conv layers") from None
            params = [p for n, p in net.named_parameters() if "lora_" in n]
            for p in params:
                p.requires_grad_(True)
        else:
            self._frozen_reference = copy.deepcopy(net).requires_grad_(False)
            net.requires_grad_(True)
            params = list(net.parameters())
        self.lora_rank = lora_rank
        return params

    @classmethod
    def lora_config(cls, lora_rank: int | None = None, lora_alpha: float | None = None,
                    targets: tuple[str, ...] | None = None):
        """peft's LoraConfig of a training config's LoRA fields (None: this adapter's defaults)."""
        from peft import LoraConfig

        rank = cls.default_lora_rank if lora_rank is None else lora_rank
        return LoraConfig(r=rank, lora_alpha=lora_alpha or 2 * rank, init_lora_weights=cls.lora_init,
                          target_modules=list(targets or cls.lora_targets))

    @contextmanager
    def reference(self) -> Iterator[None]:
        """Inside, `velocity` is the pretrained policy: the LoRA adapter disabled, or the
        frozen copy kept for full fine-tuning (no second copy with LoRA)."""
        net = self.get_denoiser()
        if self._frozen_reference is not None:
            self.set_denoiser(self._frozen_reference)
            try:
                yield
            finally:
                self.set_denoiser(net)
        elif getattr(self, "lora_rank", 0) > 0:
            net.disable_adapters()
            try:
                yield
            finally:
                net.enable_adapters()
        else:
            yield

    def trainable_state_dict(self) -> dict[str, Tensor]:
        net = self.get_denoiser()
        if getattr(self, "lora_rank", 0) > 0:
            from peft import get_peft_model_state_dict

            return {k: v.detach().clone() for k, v in get_peft_model_state_dict(net).items()}
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        net = self.get_denoiser()
        if getattr(self, "lora_rank", 0) > 0:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(net, state)
            if getattr(result, "unexpected_keys", None):
                raise ModelError(f"checkpoint does not fit the LoRA adapter: {result.unexpected_keys[:3]}")
        else:
            net.load_state_dict(state)

    def export(self, out: str | Path) -> Path:
        """Write the fine-tuned policy in the format its users load without FlowArena (the
        diffusers adapters: a LoRA for `pipeline.load_lora_weights`; the toy: a weights file
        for `--model-path`). Returns the file written."""
        raise ModelError(f"{type(self).__name__} has no export format")

    def enable_gradient_checkpointing(self) -> None:
        """Activations of the denoiser recomputed in the backward pass (diffusers' own switch)."""
        net = self.get_denoiser()
        if not hasattr(net, "enable_gradient_checkpointing"):
            raise ModelError(f"{self.name}: its denoiser ({type(net).__name__}) has no gradient "
                             "checkpointing")
        net.enable_gradient_checkpointing()

    def load_lora(self, path: str | Path) -> None:
        """An exported LoRA onto the pretrained denoiser (`bench eval --lora DIR`)."""
        raise ModelError(f"{self.name}: --lora is for the diffusers models; the toy's export is a "
                         "weights file: give it with --model-path FILE")

    def sigmas(self, steps: int) -> Tensor:
        return sd3_sigmas(steps, self.shift, self.sigma_min)

    def initial_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn((n, *self.latent_shape), generator=generator).to(self.device)

    @torch.no_grad()
    def generate(self, prompts: list[str], *, steps: int | None = None, guidance: float | None = None,
                 noise: Tensor | None = None, seed: int = 0, batch_size: int = 64,
                 progress: bool = False) -> Tensor:
        """ODE (Euler) sampling -> images [B, 3, H, W] in [0, 1], on the CPU."""
        steps = steps or self.default_steps
        guidance = self.default_guidance if guidance is None else guidance
        if noise is None:
            noise = self.initial_noise(len(prompts), torch.Generator().manual_seed(seed))
        sig = self.sigmas(steps)
        out = []
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="sampling", disable=not progress, leave=False):
            chunk = prompts[start:start + batch_size]
            x = noise[start:start + batch_size].to(self.device)
            embeds = self.embed(chunk, guidance)
            for k in range(steps):
                s = torch.full((len(chunk),), float(sig[k]), device=self.device)
                v = self.velocity(x, s, embeds, guidance)
                x = ode_step(x, v, sig[k].item(), sig[k + 1].item())
            out.append(self.decode(x).float().cpu())
        return torch.cat(out)
