"""Prompt files in GenEval2's JSONL format, validated line by line.

Each line: `{"prompt": str, "atom_count": int, "vqa_list": [[question, answer], ...],
"skills": [skill per question]}`. The toy world ships `train`, `eval` and `ood` splits
in this format (`tasks/data/toy_<split>.jsonl`); GenEval2 itself uses it too.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

from flowarena.core.errors import PromptFileError
from flowarena.tasks.soft_tifa import SKILLS

DATA = Path(__file__).parent / "data"  # tasks/data: shipped prompt sets with their licences
TOY_SPLITS = ("train", "eval", "ood")


# what reading a binary file as text raises: bad UTF-8; a .gz that is not gzip, or cut short
NOT_TEXT = (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error)


def _not_text(path: Path, why) -> PromptFileError:
    return PromptFileError(f"prompt file {path} is not a UTF-8 text file ({why}); give a text file: "
                           "JSONL, GenEval metadata or one prompt per line")


def _check(rec, where: str) -> dict:
    if not isinstance(rec, dict):
        raise PromptFileError(f"{where}: expected a JSON object")
    prompt = rec.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptFileError(f"{where}: 'prompt' must be a non-empty string")
    vqa, skills = rec.get("vqa_list"), rec.get("skills")
    if not isinstance(vqa, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in vqa
    ):
        raise PromptFileError(f"{where}: 'vqa_list' must be a list of [question, answer] pairs")
    if not isinstance(skills, list) or len(skills) != len(vqa):
        raise PromptFileError(f"{where}: 'skills' must list one skill per question")
    bad = [s for s in skills if s not in SKILLS]
    if bad:
        raise PromptFileError(f"{where}: unknown skill {bad[0]!r} (known: {', '.join(SKILLS)})")
    if not isinstance(rec.get("atom_count"), int):
        raise PromptFileError(f"{where}: 'atom_count' must be an integer")
    return rec


def load_prompt_file(path: str | Path) -> list[dict]:
    """GenEval2-format records, one JSON object per line (a .jsonl.gz file is read as well)."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} not found")
    records = []
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PromptFileError(f"{path}:{i}: not valid JSON ({e.msg})") from None
                records.append(_check(rec, f"{path}:{i}"))
    except NOT_TEXT as e:
        raise _not_text(path, e) from None
    if not records:
        raise PromptFileError(f"prompt file {path} holds no prompts")
    return records


def toy_split_path(split: str) -> Path:
    if split not in TOY_SPLITS:
        raise PromptFileError(f"unknown toy split {split!r} (choose from {', '.join(TOY_SPLITS)})")
    return DATA / f"toy_{split}.jsonl"


def load_toy_split(split: str) -> list[dict]:
    return load_prompt_file(toy_split_path(split))


def subset(records: list[dict], limit: int | None) -> list[dict]:
    """`limit` prompts spread evenly over the set (None: all). The splits are ordered by
    atom count, so the subset keeps the split's mix of easy and hard prompts."""
    import numpy as np

    if limit is None or limit >= len(records):
        return records
    return [records[int(i)] for i in np.linspace(0, len(records) - 1, limit).round()]


# Prompt sets by name (`bench run --train-prompts NAME`); the test sets are for final scores.
PROMPT_SETS = {"toy-train": "toy_train.jsonl", "toy-eval": "toy_eval.jsonl", "toy-ood": "toy_ood.jsonl",
               "geneval2-train": "geneval2/geneval2_train.jsonl.gz",
               "geneval2-val": "geneval2/geneval2_val.jsonl", "geneval2-test": "geneval2/geneval2_data.jsonl",
               "parti-train": "parti/PartiPrompts.tsv", "parti-test": "parti/PartiPrompts.tsv"}


def parti_prompts(split: str) -> list[dict]:
    """PartiPrompts (Apache-2.0, tasks/data/parti): 1,632 prompts in 12 categories, PickScore's
    out-of-domain set. `parti-test` is every third prompt of each category in the file's order
    (539), `parti-train` the rest (1,093), for training on PickScore without its test prompts."""
    import csv

    with open(DATA / "parti" / "PartiPrompts.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        k = seen[row["Category"]] = seen.get(row["Category"], -1) + 1
        if (k % 3 == 2) == (split == "test"):
            out.append({"prompt": row["Prompt"].strip(), "category": row["Category"],
                        "challenge": row["Challenge"]})
    return out


def load_prompts(spec: str | Path) -> list[dict]:
    """A prompt set by name (PROMPT_SETS) or a file: GenEval2-format JSONL (.jsonl or .jsonl.gz),
    GenEval's metadata (objects with "tag" and "include"), or plain text, one prompt per line
    (for rewards that need no questions, such as PickScore)."""
    if str(spec).startswith("parti-") and str(spec) in PROMPT_SETS:
        return parti_prompts(str(spec).removeprefix("parti-"))
    if str(spec) in PROMPT_SETS:
        return load_prompt_file(DATA / PROMPT_SETS[str(spec)])
    path = Path(spec)
    if not path.is_file():
        raise PromptFileError(f"prompt set {str(spec)!r} is neither a shipped one "
                              f"({', '.join(PROMPT_SETS)}) nor a file")
    if path.suffix not in (".jsonl", ".gz"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise _not_text(path, e) from None
        if "\0" in text:  # valid UTF-8, but no prompt file holds NUL bytes: a binary file
            raise _not_text(path, "it holds NUL bytes")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise PromptFileError(f"prompt file {path} holds no prompts")
        return [{"prompt": ln} for ln in lines]
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            first = next((ln for ln in f if ln.strip()), "")
    except NOT_TEXT as e:
        raise _not_text(path, e) from None
    try:
        head = json.loads(first)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}:1: not valid JSON ({e.msg})") from None
    if isinstance(head, dict) and "include" in head and "vqa_list" not in head:
        from flowarena.tasks.geneval_rules import load_geneval_prompts

        try:
            return load_geneval_prompts(path)
        except NOT_TEXT as e:  # valid JSON at the top, binary further down
            raise _not_text(path, e) from None
    return load_prompt_file(path)
