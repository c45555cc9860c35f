"""GenEval2's Soft-TIFA scoring, written once for every judge (toy parser or VQA model).

Input: the prompt records (GenEval2 format) and, per prompt, one list of soft question
scores per image. Per image: AM = arithmetic mean of the question scores (atom level),
GM = geometric mean (prompt level, inputs clamped at 1e-300). A prompt's AM / GM is the
mean over its images. Overall = 100 × mean over prompts, with the standard error over
prompts. Per skill = 100 × (sum of that skill's scores / number of such questions);
per atom count = 100 × mean of per-prompt GM.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from flowarena.core.results import Metric

SKILLS = ("object", "count", "attribute", "position", "verb")


def stderr(values) -> float:
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


@dataclass
class SoftTifaResult:
    am: float
    am_stderr: float
    gm: float
    gm_stderr: float
    per_skill: dict[str, float]
    per_atom_count: dict[int, float]
    per_prompt_am: list[float] = field(repr=False)
    per_prompt_gm: list[float] = field(repr=False)
    n_prompts: int = 0
    n_images: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_atom_count"] = {str(k): v for k, v in self.per_atom_count.items()}
        return d


def geometric_mean(scores) -> float:
    s = np.clip(np.asarray(scores, dtype=float), 1e-300, None)
    return float(np.exp(np.log(s).mean()))


def soft_tifa(records: list[dict], scores: list[list[list[float]]]) -> SoftTifaResult:
    """`scores[p][i][q]`: soft score of question q of prompt p on image i."""
    if len(records) != len(scores) or not records:
        raise ValueError(f"need one score list per prompt ({len(records)} prompts, {len(scores)} lists)")
    am, gm = [], []
    skill_sum: dict[str, float] = defaultdict(float)
    skill_n: dict[str, int] = defaultdict(int)
    by_atoms: dict[int, list[float]] = defaultdict(list)
    n_images = 0
    for rec, per_image in zip(records, scores):
        if not per_image:
            raise ValueError(f"no images scored for prompt {rec['prompt']!r}")
        for s in per_image:
            if len(s) != len(rec["vqa_list"]):
                raise ValueError(f"{len(s)} scores for {len(rec['vqa_list'])} questions "
                                 f"of {rec['prompt']!r}")
            for skill, v in zip(rec["skills"], s):
                skill_sum[skill] += v
                skill_n[skill] += 1
        n_images += len(per_image)
        p_am = float(np.mean([np.mean(s) for s in per_image]))
        p_gm = float(np.mean([geometric_mean(s) for s in per_image]))
        am.append(p_am)
        gm.append(p_gm)
        by_atoms[int(rec["atom_count"])].append(p_gm)
    return SoftTifaResult(
        am=100 * float(np.mean(am)), am_stderr=100 * stderr(am),
        gm=100 * float(np.mean(gm)), gm_stderr=100 * stderr(gm),
        per_skill={k: 100 * skill_sum[k] / skill_n[k] for k in SKILLS if skill_n[k]},
        per_atom_count={k: 100 * float(np.mean(v)) for k, v in sorted(by_atoms.items())},
        per_prompt_am=am, per_prompt_gm=gm, n_prompts=len(records), n_images=n_images,
    )


def soft_tifa_metrics(t: dict, benchmark: str, name: str = "Soft-TIFA", prefix: str = "") -> list[Metric]:
    """A Soft-TIFA result (`SoftTifaResult.to_dict()`) as metrics: GM (paired over prompts) and AM
    as the headline, each skill and each atom count as detail."""
    out = [Metric(f"{prefix}gm", f"{name} GM", t["gm"], t["gm_stderr"], t["n_prompts"], role="primary",
                  benchmark=benchmark, paired=True, per_prompt=t["per_prompt_gm"]),
           Metric(f"{prefix}am", f"{name} AM", t["am"], t["am_stderr"], t["n_prompts"], role="primary",
                  benchmark=benchmark, per_prompt=t.get("per_prompt_am"))]
    out += [Metric(f"{prefix}skill:{k}", k, v, role="detail", benchmark=benchmark)
            for k, v in t["per_skill"].items()]
    out += [Metric(f"{prefix}atoms:{k}", f"GM @{k} atoms", v, role="detail", benchmark=benchmark)
            for k, v in t.get("per_atom_count", {}).items()]
    return out
