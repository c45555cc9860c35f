"""GenEval2's VQA judge through transformers (Qwen3-VL by default), and the rewards on it.

docs/benchmarks.md §1's protocol: each question is asked as `"{question} Answer in one word."`
with the image, in the model's chat format; one forward pass gives the first answer
token's distribution (greedy, one new token). The soft score of a question is the sum of
the probabilities of the first token of each accepted answer form (yes/no: `Yes, yes,
" yes", " Yes"`; counts: the word, capitalised, both with a leading space, and the digit
with and without one). TIFA (hard): the argmax token, lower-cased, is an accepted form.
VQAScore: `Does this image show "{prompt}"? Answer the question with Yes or No.`, scored
like a yes/no question. The scores feed the same Soft-TIFA code as the toy judge
(`tasks/soft_tifa.py`).

The inputs are built from the tokenizer's chat template and the image processor, as
`Qwen3VLProcessor` builds them for images (its video half needs torchvision, which this
project keeps out of the base install): the image placeholder is expanded to one token
per merged patch and `mm_token_type_ids` marks those tokens for the M-RoPE positions.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from flowarena.core.hub import load_pretrained, shared
from flowarena.rewards.base import Reward, RewardError, RewardOutput, register_reward
from flowarena.rewards.judge import DEFAULT_JUDGE, HOW_TO_GET, SUFFIX, Judge
from flowarena.tasks.soft_tifa import geometric_mean


def _processor_template(source: str) -> str | None:
    """The chat template a checkpoint keeps beside its processor (chat_template.jinja or
    chat_template.json) when its tokenizer has none."""
    from pathlib import Path

    from transformers.utils import cached_file

    from flowarena.core.hub import offline

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(source, name, local_files_only=offline() or Path(source).exists(),
                               _raise_exceptions_for_missing_entries=False)
        except OSError:
            path = None
        if path:
            text = Path(path).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


def load_judge(judge: str | None = None, device: str = "cpu", url: str | None = None,
               batch_size: int = 16) -> Judge:
    """The judge of a process (loaded once, `shared`): served at `url`, an OpenAI-compatible
    endpoint serving `judge`, else `judge` in process on `device`."""
    judge = judge or DEFAULT_JUDGE
    if url:
        from flowarena.rewards.served_judge import ServedJudge

        return shared(ServedJudge, url, judge)
    return shared(VQAJudge, judge, device, None, batch_size)


class VQAJudge(Judge):
    """A Qwen-VL chat model as GenEval2's judge: `score_batch(images, vqa_lists)` gives the
    soft score of every question (the toy judge's interface), `answer` soft and hard both."""

    def __init__(self, source: str = DEFAULT_JUDGE, device: str = "cpu", dtype: torch.dtype | None = None,
                 batch_size: int = 16):
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        self.source, self.device, self.batch_size = source, torch.device(device), batch_size
        dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        what = f"VQA judge {source}"
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, what, RewardError, HOW_TO_GET)
        self.image_processor = load_pretrained(AutoImageProcessor.from_pretrained, source, what,
                                               RewardError, HOW_TO_GET)
        self.model = load_pretrained(AutoModelForImageTextToText.from_pretrained, source, what, RewardError,
                                     HOW_TO_GET, weights=True, dtype=dtype).to(self.device).eval()
        cfg = self.model.config
        self.tokenizer.chat_template = self.tokenizer.chat_template or _processor_template(source)
        if getattr(cfg, "image_token_id", None) is None or not self.tokenizer.chat_template:
            raise RewardError(f"{what}: a {cfg.model_type} model without an image token or chat template; "
                              "the judge needs a Qwen-VL chat model (e.g. Qwen/Qwen3-VL-8B-Instruct)")
        self.image_token = self.tokenizer.convert_ids_to_tokens(cfg.image_token_id)
        takes = inspect.signature(self.model.forward).parameters
        self._mm_types = "mm_token_type_ids" in takes
        # only the last position's logits are read: computing the others costs batch × length × vocab
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}
        # transformers that take the vision tower's output precomputed: each image encoded once
        # for all its questions (older ones encode it once per question)
        self.encode_once = "mm_encoder_outputs" in takes
        self._forms = {}

    def _text(self, question: str, n_image_tokens: int) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text.count(self.image_token) != 1:
            raise RewardError(f"VQA judge {self.source}: its chat template does not place one image")
        return text.replace(self.image_token, self.image_token * n_image_tokens)

    @torch.no_grad()
    def first_token_logits(self, images: list[Image.Image], questions: list[str]) -> Tensor:
        """[N, vocab] logits of the first answer token, one (image, question) pair per row."""
        unique = list({id(im): im for im in images}.values()) if self.encode_once else images
        row_image = [{id(im): i for i, im in enumerate(unique)}[id(im)] for im in images]
        pix = self.image_processor(images=unique, return_tensors="pt")
        grid = pix["image_grid_thw"][row_image]
        merge = getattr(self.image_processor, "merge_size", 1) ** 2
        texts = [self._text(q, int(thw.prod()) // merge) for q, thw in zip(questions, grid)]
        self.tokenizer.padding_side = "left"  # the last position is every row's next token
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        if self._mm_types:
            enc["mm_token_type_ids"] = (enc["input_ids"] == self.model.config.image_token_id).long()
        inputs = {k: v.to(self.device) for k, v in {**enc, "image_grid_thw": grid}.items()}
        pixels = pix["pixel_values"].to(self.device, self.model.dtype)
        if self.encode_once:
            grids = pix["image_grid_thw"].to(self.device)
            out = self.model.get_image_features(pixels, grids, return_dict=True)
            out.pooler_output = tuple(out.pooler_output[i] for i in row_image)  # per question
            if getattr(out, "deepstack_features", None) is not None:  # Qwen3-VL's early-layer features
                out.deepstack_features = [tuple(f[i] for i in row_image) for f in out.deepstack_features]
            inputs["mm_encoder_outputs"] = {"image": out}
        else:
            inputs["pixel_values"] = pixels
        return self.model(**inputs, **self._keep).logits[:, -1].float()

    def answer(self, images: list[Image.Image], questions: list[str], answers: list[str],
               suffix: str = SUFFIX) -> tuple[np.ndarray, np.ndarray]:
        soft, hard = np.zeros(len(questions)), np.zeros(len(questions), dtype=bool)
        for lo in range(0, len(questions), self.batch_size):
            hi = min(lo + self.batch_size, len(questions))
            asked = [q + suffix for q in questions[lo:hi]]
            probs = self.first_token_logits(images[lo:hi], asked).softmax(-1)
            for j, row in enumerate(probs.cpu(), start=lo):
                ids, forms = self.accepted(answers[j])
                soft[j] = float(row[ids].sum())
                hard[j] = self.tokenizer.decode([int(row.argmax())]).lower() in forms
        return soft, hard


@register_reward("geneval2")
class GenEval2Reward(Reward):
    """Soft-TIFA of each image under the VQA judge (GM by default, AM with aggregate="am"), in
    [0, 1]; the prompt records (GenEval2 format, toy splits included) carry the questions."""
    record_field = "vqa_list"


    def __init__(self, judge: str = DEFAULT_JUDGE, aggregate: str = "gm", device: str = "cpu",
                 batch_size: int = 16, judge_url: str | None = None):
        if aggregate not in ("gm", "am"):
            raise RewardError(f"aggregate must be 'gm' or 'am', not {aggregate!r}")
        self.aggregate = aggregate
        self.judge = load_judge(judge, device, judge_url, batch_size)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        if metadata is None or len(metadata) != len(images) or not all("vqa_list" in m for m in metadata):
            raise RewardError("geneval2 needs one prompt record (with 'vqa_list') per image")
        per_q = self.judge.score_batch(images, [m["vqa_list"] for m in metadata])
        agg = geometric_mean if self.aggregate == "gm" else (lambda s: float(np.mean(s)))
        return RewardOutput(torch.tensor([agg(s) for s in per_q], dtype=torch.float32),
                            {"question_scores": per_q})


@register_reward("vqascore")
class VQAScoreReward(Reward):
    """P(yes) of `Does this image show "{prompt}"?` under the VQA judge, in [0, 1]."""


    def __init__(self, judge: str = DEFAULT_JUDGE, device: str = "cpu", batch_size: int = 16,
                 judge_url: str | None = None):
        self.judge = load_judge(judge, device, judge_url, batch_size)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        return RewardOutput(torch.tensor(self.judge.vqascore(images, prompts), dtype=torch.float32))
