"""How often the toy judge is right on clean renders, per skill.

For every prompt of a split and several random layouts, the judge must give the
expected answer of each question more than 0.5 ("true" questions), and give less than
0.5 to a falsified version of it ("false" questions: a wrong count, another colour,
an absent shape, the opposite relation). A judge that says "yes" to everything
fails the second half.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from flowarena.tasks.toyworld.grammar import NUMBERS, OPPOSITE, PLURAL, Spec
from flowarena.tasks.toyworld.judge import ToyJudge
from flowarena.tasks.toyworld.scene import COLOURS, SHAPES, render, sample_layout


def falsify(question: str, answer: str, skill: str, spec: Spec, rng: np.random.Generator):
    """A (question, answer) pair that is false for the scene of `spec`."""
    if skill == "count":
        n = NUMBERS.index(answer) + 1
        return question, NUMBERS[n] if n < len(NUMBERS) else NUMBERS[n - 2]
    if skill == "attribute":
        colour = next(c for c in COLOURS if re.search(rf" {c}\?$", question))
        other = rng.choice([c for c in COLOURS if c != colour])
        return question.replace(f" {colour}?", f" {other}?"), answer
    if skill == "object":
        present = {g[2] for g in spec.groups}
        absent = rng.choice([s for s in SHAPES if s not in present])
        return f"Are there any {PLURAL[absent]} in the image?", answer
    if skill == "position":
        return question.replace(f" {spec.relation} ", f" {OPPOSITE[spec.relation]} "), answer
    raise ValueError(skill)


def judge_accuracy(specs: list[Spec], layouts: int = 3, seed: int = 0,
                   judge: ToyJudge | None = None) -> dict[str, dict[str, float]]:
    """{skill: {"true": acc, "false": acc, "n": questions}} over clean renders."""
    judge = judge or ToyJudge()
    rng = np.random.default_rng(seed)
    right: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for spec in specs:
        rec = spec.record()
        for _ in range(layouts):
            comps = judge.parse(render(sample_layout(list(spec.groups), spec.relation, rng)))
            for (q, a), skill in zip(rec["vqa_list"], rec["skills"]):
                right[skill]["true"].append(judge.answer_prob(comps, q, a) > 0.5)
                fq, fa = falsify(q, a, skill, spec, rng)
                right[skill]["false"].append(judge.answer_prob(comps, fq, fa) < 0.5)
    return {skill: {"true": float(np.mean(v["true"])), "false": float(np.mean(v["false"])),
                    "n": len(v["true"])} for skill, v in sorted(right.items())}
