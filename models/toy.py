"""The embedded toy generator: a 32x32 pixel-space text-to-image flow model.

A diffusers `UNet2DConditionModel` (channels 32/64/128, cross-attention to a word-level
text encoder, pooled text vector added to the time embedding) predicts the velocity
`ε − x0` in pixel space ([-1, 1]). Its attention layers carry diffusers' module names
(`to_q`, `to_k`, `to_v`, `to_out.0`), so LoRA targets the same names as SD3.5.
The pretrained weights ship inside the package (`models/weights/toy.safetensors`,
fp16, config in the file's metadata).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from flowarena.core.io import atomic_write
from flowarena.models.base import FlowModel, ModelError, PromptEmbeds, register_model
from flowarena.models.text import TextEncoder, WordTokenizer
from flowarena.tasks.toyworld.grammar import tokenize_words, vocabulary

WEIGHTS = Path(__file__).parent / "weights" / "toy.safetensors"
# On a CPU the toy UNet is fastest 32 rows at a time, its activations then staying in cache
# (docs/results.md: 0.90 of the time of 64 rows, 0.73 of 128, one thread; 0.92 / 0.73 on
# two); the rollout's 64 and CFG's doubled evaluation batches are cut to that size.
ROWS_PER_FORWARD = 32


@dataclass
class ToyConfig:
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    text_dim: int = 128
    text_layers: int = 2
    max_length: int = 16
    heads: int = 4
    vocab: tuple[str, ...] = tuple(vocabulary())
    shift: float = 3.0
    default_steps: int = 14  # ODE steps for evaluation: within 0.5 GM of 20 steps, 25 % faster
    default_guidance: float = 4.5


class ToyNet(nn.Module):
    def __init__(self, cfg: ToyConfig):
        from diffusers import UNet2DConditionModel  # here: `bench --help` should not wait for diffusers

        super().__init__()
        self.cfg = cfg
        self.tokenizer = WordTokenizer(list(cfg.vocab), cfg.max_length)
        self.text = TextEncoder(len(self.tokenizer), cfg.text_dim, cfg.text_layers, cfg.heads,
                                cfg.max_length)
        c = tuple(cfg.channels)
        self.unet = UNet2DConditionModel(
            sample_size=cfg.image_size, in_channels=3, out_channels=3, block_out_channels=c,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1, cross_attention_dim=cfg.text_dim, attention_head_dim=cfg.heads,
            norm_num_groups=8, class_embed_type="projection",
            projection_class_embeddings_input_dim=cfg.text_dim,
        )

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        ids, pad = self.tokenizer(prompts)
        dev = self.text.embed.weight.device
        return self.text(ids.to(dev), pad.to(dev))

    def forward(self, x: Tensor, sigma: Tensor, tokens: Tensor, pooled: Tensor) -> Tensor:
        return self.unet(x, sigma * 1000, encoder_hidden_states=tokens, class_labels=pooled).sample


@register_model("toy")
class ToyModel(FlowModel):
    description = "the embedded 32x32 toy generator (default, CPU-friendly)"
    # The toy world's trust-region thresholds: on the `default` setting (I = 1, so the second
    # mini-batch of each epoch is the off-policy one), each removes the gradient of about 10 %
    # of the off-policy steps (docs/toy-world.md asks for 5–30 %). Measured on runs whose trust
    # region never binds, with `benchmarks/calibrate.py` (docs/results.md, "Calibration", has the
    # command and the shares). The published values (SD3.5 latents: 1e-4, 2e-6, 1e-5) clip or
    # mask nothing here except cps's, which makes grpo, guard and dppo the same algorithm.
    calibration = {
        "grpo": {"clip_range": 5e-6},  # removes 14.1 % of off-policy steps
        "mixgrpo": {"clip_range": 5e-6},  # grpo's loss on grpo's SDE: its ε (share not measured yet)
        "cps": {"clip_range": 1e-5},  # 10.0 % (the published value happens to fit)
        "guard": {"clip_range": 5e-6},  # 9.3 %
        "dppo": {"delta": 1e-7},  # 7.7 %
        "dppo-cps": {"delta": 1e-7},  # 8.9 %: the CPS KL scale matches (methods/sde.py)
        "dppo-sym": {"delta": 1e-7},  # dppo's δ, both sides: 15.0 %
        "dppo-sampled-kl": {"delta": 3e-11},  # ½(log ρ)² is ~KL/D: δ giving dppo's share, 7.5 %
    }
    train_defaults = {}  # the trainer's LoRA rank 16 and α 32
    casts_weights = False  # fp32 weights always

    @classmethod
    def check_options(cls, options: dict) -> None:
        if options.get("resolution") not in (None, 32):
            raise ModelError("the toy model draws 32 x 32 images only; --resolution is for diffusers models")

    @classmethod
    def unknown_words(cls, prompts: list[str]) -> list[str]:
        known = set(vocabulary())
        return [w for p in prompts for w in tokenize_words(p) if w not in known]

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", **options) -> ToyModel:
        return load_toy(path, device)

    @classmethod
    def weights_source(cls, path: str | Path | None = None) -> str:
        """The weights file: the shipped one, a file, or a directory's toy.safetensors."""
        path = Path(path).expanduser() if path else WEIGHTS
        return str(path / "toy.safetensors" if path.is_dir() else path)

    def __init__(self, net: ToyNet, device: str | torch.device = "cpu"):
        self.net = net.to(device)
        self.device = torch.device(device)
        if self.device.type == "cpu":  # oneDNN's own layout: the convolutions 3–9 % faster, same maths
            self.net.unet.to(memory_format=torch.channels_last)
        self.rows_per_forward = ROWS_PER_FORWARD if self.device.type == "cpu" else None
        cfg = net.cfg
        self.shift = cfg.shift
        self.default_steps = cfg.default_steps
        self.default_guidance = cfg.default_guidance

    @property
    def config(self) -> ToyConfig:
        return self.net.cfg

    def skip_unknown_words(self) -> None:
        """Read prompts from outside the toy world (GenEval2's, GenEval's) by the words the
        model knows: the real benchmarks' plumbing runs on the toy model, their scores mean little."""
        self.net.tokenizer.skip_unknown = True

    def text_encoders(self) -> list[nn.Module]:
        return [self.net.text]

    def encode_prompts(self, prompts: list[str], guidance: float = 1.0) -> PromptEmbeds:
        tokens, pooled = self.net.encode(list(prompts))
        uncond = None
        if guidance > 1.0:
            ut, up = self.net.encode([""])
            uncond = {"tokens": ut.expand_as(tokens), "pooled": up.expand_as(pooled)}
        return PromptEmbeds({"tokens": tokens, "pooled": pooled}, uncond)

    def velocity(self, x: Tensor, sigma: Tensor, embeds: PromptEmbeds, guidance: float = 1.0) -> Tensor:
        c = embeds.cond
        with self._autocast():
            if guidance <= 1.0 or embeds.uncond is None:
                return self._forward(x, sigma, c["tokens"], c["pooled"]).float()
            u = embeds.uncond
            v = self._forward(torch.cat([x, x]), torch.cat([sigma, sigma]),
                              torch.cat([u["tokens"], c["tokens"]]), torch.cat([u["pooled"], c["pooled"]]))
        v_u, v_c = v.float().chunk(2)
        return v_u + guidance * (v_c - v_u)

    def _forward(self, *inputs: Tensor) -> Tensor:
        """The UNet over at most `rows_per_forward` rows at a time (autograd flows through the
        pieces): rows do not interact, so only the speed changes."""
        n = self.rows_per_forward
        if n is None or len(inputs[0]) <= n:
            return self.net(*inputs)
        return torch.cat([self.net(*(t[i:i + n] for t in inputs)) for i in range(0, len(inputs[0]), n)])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        s = self.config.image_size
        return (3, s, s)

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    def get_denoiser(self) -> nn.Module:
        return self.net.unet

    def set_denoiser(self, module: nn.Module) -> None:
        self.net.unet = module

    def export(self, out: str | Path) -> Path:
        """The policy as one toy weights file (LoRA merged into the base weights), for
        `bench sample/eval --model toy --model-path OUT`. `out`: a .safetensors path, or a
        directory (OUT/toy.safetensors). fp32, unlike the shipped fp16 file: an RL update is
        often below fp16's resolution of the weight it is merged into."""
        out = Path(out)
        path = out if out.suffix == ".safetensors" else out / "toy.safetensors"
        net = copy.deepcopy(self.net)
        if getattr(self, "lora_rank", 0) > 0:
            from peft.tuners.tuners_utils import BaseTunerLayer

            state = {}
            for module in net.unet.modules():
                if isinstance(module, BaseTunerLayer):
                    module.merge()
            for key, value in net.state_dict().items():
                if "lora_" not in key:  # the merged base weights under their original names
                    state[key.replace(".base_layer.", ".")] = value
            net = ToyNet(net.cfg)
            net.load_state_dict(state)
        save_toy(net, path, dtype=torch.float32)
        return path


def save_toy(net: ToyNet, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
    """Write weights + config to one safetensors file, atomically."""
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}
    meta = {"config": json.dumps(asdict(net.cfg))}
    # atomic_write also gives the file the umask's permissions (safetensors writes 0600)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_toy(path: str | Path | None = None, device: str = "cpu") -> ToyModel:
    """The shipped toy model (or weights written by `bench pretrain toy`), in fp32."""
    path = Path(ToyModel.weights_source(path))
    if not path.exists():
        raise ModelError(f"toy model weights not found at {path} (run `bench pretrain toy`)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        cfg_dict = json.loads(meta["config"])
        cfg_dict["channels"] = tuple(cfg_dict["channels"])
        cfg_dict["vocab"] = tuple(cfg_dict["vocab"])
        net = ToyNet(ToyConfig(**cfg_dict))
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        net.load_state_dict(state)
    except (SafetensorError, KeyError, ValueError, TypeError, RuntimeError, OSError) as e:
        raise ModelError(f"toy model checkpoint {path} is corrupt or incompatible: "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    net.eval().requires_grad_(False)
    return ToyModel(net, device)
