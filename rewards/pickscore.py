"""PickScore (Kirstain et al., 2023) through transformers' CLIP classes.

`score = exp(logit_scale) · cos(text_embedding, image_embedding)`, the text truncated at
77 tokens; the model is `yuvalkirstain/PickScore_v1` (CLIP ViT-H/14 fine-tuned on
Pick-a-Pic) with the processor of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`. Typical
values are 21–24: tables report the raw score; as a training reward flow_grpo divides it
by 26 (`scale=True`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowarena.core.hub import load_pretrained, shared
from flowarena.rewards.base import Reward, RewardError, RewardOutput, register_reward
from flowarena.rewards.judge import to_pil

DEFAULT_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
SCALE = 26.0
_HOW = "give local copies with --pickscore DIR and --pickscore-processor DIR"


class ClipScorer:
    """A CLIP model and its processor, loaded from ids or directories; `embed_*` normalised."""

    def __init__(self, model: str, processor: str, what: str, how: str, device: str = "cpu",
                 batch_size: int = 32):
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        self.device, self.batch_size = torch.device(device), batch_size
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = load_pretrained(CLIPModel.from_pretrained, model, f"{what} {model}", RewardError, how,
                                     weights=True, dtype=dtype).to(self.device).eval()
        self.image_processor = load_pretrained(CLIPImageProcessor.from_pretrained, processor,
                                               f"{what} processor {processor}", RewardError, how)
        self.tokenizer = load_pretrained(CLIPTokenizer.from_pretrained, processor,
                                         f"{what} processor {processor}", RewardError, how)

    @torch.no_grad()
    def embed_images(self, images) -> Tensor:
        out = []
        for lo in range(0, len(images), self.batch_size):
            pil = [im if not isinstance(im, Tensor) else to_pil(im) for im in images[lo:lo + self.batch_size]]
            pix = self.image_processor(images=pil, return_tensors="pt")["pixel_values"]
            f = self.model.get_image_features(pixel_values=pix.to(self.device, self.model.dtype))
            out.append(torch.nn.functional.normalize(_tensor(f).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> Tensor:
        out = []
        for lo in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[lo:lo + self.batch_size], padding=True, truncation=True,
                                 max_length=77, return_tensors="pt").to(self.device)
            f = self.model.get_text_features(**tok)
            out.append(torch.nn.functional.normalize(_tensor(f).float(), dim=-1))
        return torch.cat(out)


def _tensor(features) -> Tensor:
    """`get_*_features` returns a tensor, or (newer transformers) an output with the pooled one."""
    return features if isinstance(features, Tensor) else features.pooler_output


@register_reward("pickscore")
class PickScoreReward(Reward):
    """PickScore of each image for its prompt, /26 as flow_grpo trains on it (scale=False: raw,
    ≈ 21–24, as tables report it)."""


    def __init__(self, pickscore: str = DEFAULT_MODEL, pickscore_processor: str | None = None,
                 scale: bool = True, device: str = "cpu", batch_size: int = 32):
        """`pickscore_processor` defaults to the `pickscore` directory when one is given (a local
        copy keeps both), else to the hub processor."""
        local = pickscore != DEFAULT_MODEL
        processor = pickscore_processor or (pickscore if local else DEFAULT_PROCESSOR)
        self.scale = scale
        self.clip = shared(ClipScorer, pickscore, processor, "PickScore model", _HOW, device, batch_size)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        if len(prompts) != len(images):
            raise RewardError(f"pickscore needs one prompt per image ({len(prompts)} for {len(images)})")
        cos = (self.clip.embed_images(images) * self.clip.embed_texts(prompts)).sum(-1)
        score = self.clip.model.logit_scale.exp().float().cpu() * cos.cpu()
        return RewardOutput(score / SCALE if self.scale else score)
