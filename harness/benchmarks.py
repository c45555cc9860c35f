"""`bench eval --benchmark NAME`: the toy benchmark and the real ones of benchmarks.md.

- `toy`: Soft-TIFA under the toy judge on the toy eval split, the toy preference score on
  the ood split (`harness/evaluate.py`).
- `geneval2`: the 800 GenEval2 prompts (shipped, CC BY-NC 4.0), one image each, judged by
  a VQA model: Soft-TIFA GM / AM with per skill and per atom count, TIFA (hard answers)
  and VQAScore.
- `geneval`: the 553 GenEval prompts, four images each, Mask2Former + CLIP and GenEval's
  rules: accuracy per tag and overall (mean over tags).
- `pickscore`: the raw PickScore of each prompt's image (the paper's out-of-domain score),
  on a prompt file (Pick-a-Pic's test prompts where you have them; the toy ood split by
  default).

Images are drawn with the ODE from noise seeded per prompt (`seed`, prompt index), so a
prompt's image does not depend on `--limit` or on how prompts are batched, and two models
evaluated with the same seed see the same noise. Scoring runs in chunks as images come.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from harness.evaluate import full_eval, subset
from harness.prompts import DATA, PromptFileError, load_prompt_file, toy_split_path
from harness.soft_tifa import soft_tifa, stderr
from models.base import FlowModel
from models.text import UnknownWordError

BENCHMARKS = {
    "toy": "Soft-TIFA under the toy judge (eval split) + toy preference score (ood split)",
    "geneval2": "GenEval2: 800 prompts, Soft-TIFA / TIFA / VQAScore under a VQA judge (Qwen3-VL)",
    "geneval": "GenEval: 553 prompts x 4 images, Mask2Former + CLIP colour, accuracy per tag",
    "pickscore": "PickScore (raw) on a prompt file (default: the toy ood split)",
}
IMAGES_PER_PROMPT = {"toy": 1, "geneval2": 1, "geneval": 4, "pickscore": 1}
CHUNK = 16  # prompts sampled and scored together


def check_benchmark(name: str) -> None:
    if name not in BENCHMARKS:
        raise PromptFileError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")


def load_text_prompts(path: str | Path) -> list[dict]:
    """Plain prompts: a .jsonl file with a "prompt" per line, or a text file, one per line."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} not found")
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not (isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and rec["prompt"].strip()):
                raise PromptFileError(f"{path}:{i}: expected an object with a non-empty 'prompt'")
        else:
            rec = {"prompt": line.strip()}
        records.append(rec)
    if not records:
        raise PromptFileError(f"prompt file {path} holds no prompts")
    return records


def benchmark_prompts(name: str, path: str | Path | None = None) -> list[dict]:
    from harness.geneval import load_geneval_prompts

    if name == "geneval2":
        return load_prompt_file(path or DATA / "geneval2" / "geneval2_data.jsonl")
    if name == "geneval":
        return load_geneval_prompts(path)
    return load_text_prompts(path or toy_split_path("ood"))


def _images(model: FlowModel, records: list[dict], first: int, n: int, *, steps, guidance,
            seed) -> torch.Tensor:
    """`n` images of each record, the noise of image k of prompt i seeded by (seed, i, k)."""
    seeds = [seed * 1_000_003 + (first + i) * n + k for i in range(len(records)) for k in range(n)]
    noise = torch.cat([model.initial_noise(1, torch.Generator().manual_seed(s)) for s in seeds])
    prompts = [r["prompt"] for r in records for _ in range(n)]
    return model.generate(prompts, steps=steps, guidance=guidance, noise=noise)


def evaluate_benchmark(model: FlowModel, name: str = "toy", *, prompts: str | Path | None = None,
                       limit: int | None = None, images_per_prompt: int | None = None,
                       steps: int | None = None, guidance: float | None = None, seed: int = 0,
                       ood: bool = True, device: str = "cpu", judge: str | None = None,
                       detector: str | None = None, clip: str | None = None, pickscore: str | None = None,
                       pickscore_processor: str | None = None, progress: bool = False) -> dict:
    """One benchmark's scores for `model`, as a JSON-ready dict (`reports.tables.eval_table`)."""
    check_benchmark(name)
    n = images_per_prompt or IMAGES_PER_PROMPT[name]
    if name == "toy":
        if prompts is not None:
            raise PromptFileError("the toy benchmark uses its own splits; --prompts is for "
                                  "geneval2, geneval and pickscore")
        out = full_eval(model, steps=steps, guidance=guidance, seed=seed, images_per_prompt=n, ood=ood,
                        limit=limit, ood_limit=limit, progress=progress)
        return {"benchmark": "toy", **out}
    t0 = time.perf_counter()
    records = subset(benchmark_prompts(name, prompts), limit)
    scorer = _scorer(name, device=device, judge=judge, detector=detector, clip=clip, pickscore=pickscore,
                     pickscore_processor=pickscore_processor)
    note = None
    if hasattr(model, "skip_unknown_words"):  # the toy model: does it know every word of the set?
        try:
            model.encode_prompts([r["prompt"] for r in records])
        except UnknownWordError:
            model.skip_unknown_words()
            note = "the toy model reads only the words it knows: this checks the plumbing, not a score"
    per_prompt: list = []
    for lo in tqdm(range(0, len(records), CHUNK), desc=name, disable=not progress):
        chunk = records[lo:lo + CHUNK]
        images = _images(model, chunk, lo, n, steps=steps, guidance=guidance, seed=seed)
        per_prompt += scorer(images, chunk, n)
    out = {"benchmark": name, "model": model.name, "steps": steps or model.default_steps,
           "guidance": model.default_guidance if guidance is None else guidance, "seed": seed,
           "images_per_prompt": n, **_summary(name, records, per_prompt)}
    out["scorer"] = {k: v for k, v in dict(judge=judge, detector=detector, clip=clip, pickscore=pickscore,
                                           pickscore_processor=pickscore_processor).items() if v}
    if note:
        out["note"] = note
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _scorer(name: str, *, device, judge, detector, clip, pickscore, pickscore_processor):
    """A function (images, records, images per prompt) -> one result per record."""
    def per_record(values, n):
        return [values[i:i + n] for i in range(0, len(values), n)]

    if name == "geneval2":
        from rewards.vqa import DEFAULT_JUDGE, VQAJudge

        vqa = VQAJudge(judge or DEFAULT_JUDGE, device)

        def score(images, records, n):
            metas = [r for r in records for _ in range(n)]
            soft, hard = vqa.judge_batch(images, [r["vqa_list"] for r in metas])
            vs = vqa.vqascore(images, [r["prompt"] for r in metas]).tolist()
            return list(zip(per_record(soft, n), per_record(hard, n), per_record(vs, n)))
        return score
    if name == "geneval":
        from rewards.geneval import DEFAULT_CLIP, DEFAULT_DETECTOR, GenEvalScorer

        ge = GenEvalScorer(detector or DEFAULT_DETECTOR, clip or DEFAULT_CLIP, device)

        def score(images, records, n):
            correct, _ = ge.score(images, [r for r in records for _ in range(n)])
            return per_record(correct, n)
        return score
    from rewards.pickscore import DEFAULT_MODEL, PickScoreReward

    pick = PickScoreReward(pickscore or DEFAULT_MODEL, pickscore_processor, scale=False, device=device)

    def score(images, records, n):
        prompts = [r["prompt"] for r in records for _ in range(n)]
        return per_record(pick(images, prompts, None).scores.tolist(), n)
    return score


def _summary(name: str, records: list[dict], per_prompt: list) -> dict:
    if name == "geneval2":
        soft = [p[0] for p in per_prompt]
        hard = [p[1] for p in per_prompt]
        vqa = [float(np.mean(p[2])) for p in per_prompt]
        return {"soft_tifa": soft_tifa(records, soft).to_dict(),
                "tifa": soft_tifa(records, hard).to_dict(),
                "vqascore": {"mean": 100 * float(np.mean(vqa)), "stderr": 100 * stderr(vqa), "n": len(vqa)}}
    if name == "geneval":
        from harness.geneval import geneval_summary

        return {"geneval": geneval_summary(records, per_prompt)}
    scores = [float(np.mean(p)) for p in per_prompt]
    return {"pickscore": {"mean": float(np.mean(scores)), "stderr": stderr(scores), "n": len(scores),
                          "per_prompt": scores}}
