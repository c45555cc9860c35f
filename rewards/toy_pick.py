"""The toy world's PickScore: a small CLIP-style image-text model.

A CNN image tower (spatial features kept, so relations are visible) and the toy
word-level text tower, trained contrastively on clean renders and varied captions,
with hard negatives on both sides: perturbed captions (another colour, count, shape or
the opposite relation) and spoiled images (an object missing or added, noise, blur, an
empty scene). So it scores alignment and cleanliness in a learned way that differs from the
analytic judge. `score = exp(logit_scale) · cos(text, image)`, like PickScore.
The checkpoint ships as `rewards/weights/toy_pick.safetensors`; `bench pretrain
toy-pick` retrains it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowarena.core.fields import Count, NonNegative, Positive, Whole, check_fields
from flowarena.core.io import save_tensors, write_json
from flowarena.models.base import ModelError
from flowarena.models.text import TextEncoder, WordTokenizer
from flowarena.rewards.base import Reward, RewardOutput, register_reward
from flowarena.tasks.toyworld.grammar import (
    MAX_OBJECTS,
    OPPOSITE,
    Spec,
    canonical_specs,
    random_phrasing,
    vocabulary,
)
from flowarena.tasks.toyworld.scene import COLOURS, SHAPES, Obj, render, sample_layout, to_toy_size

WEIGHTS = Path(__file__).parent / "weights" / "toy_pick.safetensors"


@dataclass
class ToyPickConfig:
    image_size: int = 32
    dim: int = 128  # text width
    embed_dim: int = 128  # joint embedding width
    text_layers: int = 2
    max_length: int = 16
    vocab: tuple[str, ...] = tuple(vocabulary())


class ToyPick(nn.Module):
    def __init__(self, cfg: ToyPickConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = WordTokenizer(list(cfg.vocab), cfg.max_length)
        self.text = TextEncoder(len(self.tokenizer), cfg.dim, cfg.text_layers, 4, cfg.max_length)
        self.text_proj = nn.Linear(cfg.dim, cfg.embed_dim)

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(),
                                 nn.Conv2d(o, o, 3, stride=2, padding=1), nn.GroupNorm(8, o), nn.SiLU())
        self.image = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128))
        side = cfg.image_size // 16
        self.image_proj = nn.Linear(128 * side * side, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def embed_images(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> unit vectors [B, D]."""
        h = self.image(images * 2 - 1).flatten(1)
        return F.normalize(self.image_proj(h), dim=-1)

    def embed_texts(self, prompts: list[str]) -> Tensor:
        ids, pad = self.tokenizer(prompts)
        dev = self.text_proj.weight.device
        _, pooled = self.text(ids.to(dev), pad.to(dev))
        return F.normalize(self.text_proj(pooled), dim=-1)

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(max=np.log(100)).exp()

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        images = to_toy_size(images, self.cfg.image_size)  # other models' images are larger
        return self.scale() * (self.embed_images(images) * self.embed_texts(prompts)).sum(-1)


# --- training data: scenes with hard negatives on both sides ------------------------------
def perturb_spec(spec: Spec, rng: np.random.Generator) -> Spec:
    """A caption that is wrong for the scene of `spec` in one attribute."""
    groups = [list(g) for g in spec.groups]
    rel = spec.relation
    choices = ["colour", "shape", "count"] + (["relation"] if rel else [])
    kind = choices[rng.integers(len(choices))]
    g = groups[rng.integers(len(groups))]
    if kind == "colour":
        g[1] = rng.choice([c for c in COLOURS if c != g[1]])
    elif kind == "shape":
        used = {x[2] for x in groups}
        g[2] = rng.choice([s for s in SHAPES if s not in used])
    elif kind == "count":
        room = MAX_OBJECTS - sum(x[0] for x in groups) + g[0]
        options = [n for n in range(1, room + 1) if n != g[0]]
        if not options:
            g[1] = rng.choice([c for c in COLOURS if c != g[1]])
        else:
            g[0] = int(rng.choice(options))
    else:
        rel = OPPOSITE[rel]
    new = Spec(tuple(tuple(x) for x in groups), rel)
    return random_phrasing(new, rng) if rng.random() < 0.5 else new


def spoil_scene(objs: list[Obj], rng: np.random.Generator, size: int) -> np.ndarray:
    """The same scene, spoiled: one object removed or added, noise and blur, or every object
    gone (without empty scenes among the negatives a blank image scored like a wrong caption)."""
    kind = rng.integers(4)
    if kind == 3:
        return render([], size)
    if kind == 0 and len(objs) > 1:
        drop = rng.integers(len(objs))
        return render([o for i, o in enumerate(objs) if i != drop], size)
    if kind <= 1 and len(objs) < MAX_OBJECTS + 1:
        extra = sample_layout([(1, rng.choice(list(COLOURS)), rng.choice(SHAPES))], None, rng, size)[0]
        return render([*objs, extra], size)
    img = render(objs, size).astype(np.float32)
    img = img + rng.normal(0, rng.uniform(20, 60), img.shape)
    k = np.ones(3) / 3  # separable box blur
    for axis in (0, 1):
        img = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), axis, img)
    return np.clip(img, 0, 255).astype(np.uint8)


def pick_batch(rng: np.random.Generator, n: int, size: int = 32):
    specs_all = canonical_specs()
    cats, probs = list(specs_all), (0.15, 0.2, 0.25, 0.4)
    clean, spoiled, caps, negs = [], [], [], []
    for _ in range(n):
        cat = specs_all[cats[rng.choice(4, p=probs)]]
        spec = cat[rng.integers(len(cat))]
        objs = sample_layout(list(spec.groups), spec.relation, rng, size)
        clean.append(render(objs, size))
        spoiled.append(spoil_scene(objs, rng, size))
        caps.append((random_phrasing(spec, rng) if rng.random() < 0.5 else spec).text)
        negs.append(perturb_spec(spec, rng).text)

    def t(a):
        return torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 255
    return t(clean), t(spoiled), caps, negs


@dataclass
class ToyPickTrainConfig:
    steps: Count = 800
    batch_size: Count = 96
    lr: Positive = 1e-3
    weight_decay: NonNegative = 1e-4
    seed: Whole = 0


def pretrain_toy_pick(out: str | Path, cfg: ToyPickTrainConfig = ToyPickTrainConfig(),
                      model_cfg: ToyPickConfig = ToyPickConfig(), progress: bool = True) -> Path:
    check_fields(cfg, where="pretrain.")
    out = Path(out)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = ToyPick(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    bar = tqdm(range(cfg.steps), desc="pretrain toy-pick", disable=not progress)
    t0 = time.perf_counter()
    for _ in bar:
        clean, spoiled, caps, negs = pick_batch(rng, cfg.batch_size, model_cfg.image_size)
        img = model.embed_images(torch.cat([clean, spoiled]))
        txt = model.embed_texts(caps + negs)
        logits = model.scale() * img @ txt.T  # [2B, 2B]
        b = cfg.batch_size
        target = torch.arange(b)
        # image -> text over all captions and hard negatives; text -> image over clean + spoiled
        loss = (F.cross_entropy(logits[:b], target) + F.cross_entropy(logits[:, :b].T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc = (logits[:b].argmax(1) == target).float().mean().item()
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
    save_toy_pick(model, out / "toy_pick.safetensors")
    write_json(out / "pretrain.json", {"config": asdict(cfg), "model": asdict(model_cfg),
                                       "train_seconds": round(time.perf_counter() - t0, 1)})
    return out / "toy_pick.safetensors"


def save_toy_pick(model: ToyPick, path: str | Path) -> None:
    tensors = {k: v.to(torch.float16) for k, v in model.state_dict().items()}
    save_tensors(path, tensors, metadata={"config": json.dumps(asdict(model.cfg))})


def load_toy_pick(path: str | Path | None = None, device: str = "cpu") -> ToyPick:
    path = Path(path) if path else WEIGHTS
    if path.is_dir():
        path = path / "toy_pick.safetensors"
    if not path.exists():
        raise ModelError(f"toy preference model not found at {path} (run `bench pretrain toy-pick`)")
    try:
        with safe_open(str(path), "pt") as f:
            cfg = json.loads((f.metadata() or {})["config"])
        cfg["vocab"] = tuple(cfg["vocab"])
        model = ToyPick(ToyPickConfig(**cfg))
        model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    except (SafetensorError, KeyError, ValueError, TypeError, RuntimeError, OSError) as e:
        raise ModelError(f"toy preference checkpoint {path} is corrupt or incompatible: "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    return model.eval().requires_grad_(False).to(device)


@register_reward("toy-pick")
class ToyPickReward(Reward):
    """The toy preference score (PickScore analogue); `scale` divides it, as flow_grpo's /26."""


    def __init__(self, path: str | None = None, scale: float = 1.0, device: str = "cpu"):
        self.model = load_toy_pick(path, device)
        self.scale = scale

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str],
                 metadata: list[dict] | None = None) -> RewardOutput:
        dev = self.model.logit_scale.device
        raw = self.model.score(images.to(dev).float(), list(prompts)).float().cpu()
        return RewardOutput(raw / self.scale, {"pick_raw": raw.tolist()})

