"""What GenEval2's reward and benchmark ask of a VQA judge, whether it runs in process
(`rewards/vqa.py`) or behind an OpenAI-compatible server (`rewards/served_judge.py`): the
question suffix, the accepted answer forms and the `Judge` interface built on `answer`."""

from __future__ import annotations

import numpy as np
from PIL import Image
from torch import Tensor

from flowarena.rewards.base import RewardError

DEFAULT_JUDGE = "Qwen/Qwen3-VL-8B-Instruct"
SUFFIX = " Answer in one word."
VQASCORE_QUESTION = 'Does this image show "{prompt}"? Answer the question with Yes or No.'
NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
HOW_TO_GET = "give a local copy with --judge DIR, or download it first with `hf download ID`"


def answer_forms(answer: str) -> list[str]:
    """The strings whose first token counts as `answer` (docs/benchmarks.md's accepted forms)."""
    a = answer.strip().lower()
    if a in ("yes", "no"):
        return [a.capitalize(), a, " " + a, " " + a.capitalize()]
    if a in NUMBERS:
        d = str(NUMBERS[a])
        return [a, a.capitalize(), " " + a, " " + a.capitalize(), d, " " + d]
    raise RewardError(f"VQA answer {answer!r} is neither yes/no nor a number word")


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
