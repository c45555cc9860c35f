"""GenEval2's VQA judge through transformers (Qwen3-VL by default), and the rewards on it.

docs/benchmarks.md §1's protocol: each question is asked as `"{question} Answer in one word."`
with the image, in the model's chat format; one forward pass gives the first answer
token's distribution (greedy, one new token). The soft score of a question is the sum of
the probabilities of the first token of each accepted answer form (yes/no: `Yes, yes,
" yes", " Yes"`; counts: the word, capitalised, both with a leading space, and the digit
with and without one). TIFA (hard): the argmax token, lower-cased, is an accepted form.
VQAScore: `Does this image show "{prompt}"? Answer the question with Yes or No.`, scored
like a yes/no question. The scores feed the same Soft-TIFA code as the toy judge
(`harness/core/soft_tifa.py`).

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

from harness.core.hub import load_pretrained, shared
from harness.core.soft_tifa import geometric_mean
from rewards.base import Reward, RewardError, RewardOutput, register_reward

DEFAULT_JUDGE = "Qwen/Qwen3-VL-8B-Instruct"
SUFFIX = " Answer in one word."
VQASCORE_QUESTION = 'Does this image show "{prompt}"? Answer the question with Yes or No.'
NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_HOW = "give a local copy with --judge DIR, or download it first with `hf download ID`"


def answer_forms(answer: str) -> list[str]:
    """The strings whose first token counts as `answer` (docs/benchmarks.md's accepted forms)."""
    a = answer.strip().lower()
    if a in ("yes", "no"):
        return [a.capitalize(), a, " " + a, " " + a.capitalize()]
    if a in NUMBERS:
        d = str(NUMBERS[a])
        return [a, a.capitalize(), " " + a, " " + a.capitalize(), d, " " + d]
    raise RewardError(f"VQA answer {answer!r} is neither yes/no nor a number word")


def _processor_template(source: str) -> str | None:
    """The chat template a checkpoint keeps beside its processor (chat_template.jinja or
    chat_template.json) when its tokenizer has none."""
    from pathlib import Path

    from transformers.utils import cached_file

    from harness.core.hub import offline

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


def to_pil(image: Tensor) -> Image.Image:
    """[3, H, W] in [0, 1] -> RGB PIL image."""
    arr = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


class Judge:
    """What GenEval2's reward and benchmark ask of a VQA judge, in process (`VQAJudge`) or
    served (`rewards.served_judge.ServedJudge`): `answer` scores (image, question, expected
    answer) triples; the rest is built on it."""

    def answer(self, images: list[Image.Image], questions: list[str], answers: list[str],
               suffix: str = SUFFIX) -> tuple[np.ndarray, np.ndarray]:
        """Soft score and TIFA correctness of each (image, question, expected answer); an
        image asked several questions is the same object in `images` each time."""
        raise NotImplementedError

    tokenizer = None  # the judge's, which names the answers' first tokens
    _forms: dict[str, tuple[list[int], set[str]]]  # set by each judge's __init__

    def accepted(self, answer: str) -> tuple[list[int], set[str]]:
        """The first-token ids whose probabilities sum to the soft score, and the lower-cased
        forms the most likely token must be for TIFA's hard answer."""
        if answer not in self._forms:
            forms = answer_forms(answer)
            ids = {self.tokenizer.encode(f, add_special_tokens=False)[0] for f in forms}
            self._forms[answer] = (sorted(ids), {f.lower() for f in forms})
        return self._forms[answer]

    def judge_batch(self, images: Tensor, vqa_lists: list[list]) -> tuple[list[list[float]], ...]:
        """Every question of every image in one stream of batches: (soft, hard) per image."""
        pils = [to_pil(im) for im in images]
        flat = [(i, q, a) for i, vqa in enumerate(vqa_lists) for q, a in vqa]
        soft, hard = self.answer([pils[i] for i, _, _ in flat], [q for _, q, _ in flat],
                                 [a for *_, a in flat])
        out_soft: list[list[float]] = [[] for _ in vqa_lists]
        out_hard: list[list[float]] = [[] for _ in vqa_lists]
        for (i, _, _), s, h in zip(flat, soft, hard):
            out_soft[i].append(float(s))
            out_hard[i].append(float(h))
        return out_soft, out_hard

    def score_batch(self, images: Tensor, vqa_lists: list[list]) -> list[list[float]]:
        return self.judge_batch(images, vqa_lists)[0]

    def vqascore(self, images: Tensor, prompts: list[str]) -> np.ndarray:
        questions = [VQASCORE_QUESTION.format(prompt=p) for p in prompts]
        return self.answer([to_pil(im) for im in images], questions, ["Yes"] * len(prompts), suffix="")[0]


def load_judge(judge: str | None = None, device: str = "cpu", url: str | None = None,
               batch_size: int = 16) -> Judge:
    """The judge of a process (loaded once, `shared`): served at `url`, an OpenAI-compatible
    endpoint serving `judge`, else `judge` in process on `device`."""
    judge = judge or DEFAULT_JUDGE
    if url:
        from rewards.served_judge import ServedJudge

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
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, what, RewardError, _HOW)
        self.image_processor = load_pretrained(AutoImageProcessor.from_pretrained, source, what,
                                               RewardError, _HOW)
        self.model = load_pretrained(AutoModelForImageTextToText.from_pretrained, source, what,
                                     RewardError, _HOW, weights=True, dtype=dtype).to(self.device).eval()
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
