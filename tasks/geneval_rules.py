"""GenEval's rules (Ghosh et al., 2023), written once for every detector backend.

Input per image: the prompt's metadata record and the detections, `{class: [Detection]}`
sorted by confidence (docs/benchmarks.md §2: confidence > 0.3, > 0.9 for `counting`; at most 16
per class; no NMS). Colours come from a callable that names the colour of each of a list
of detections (the CLIP crop-and-mask protocol in `rewards/geneval.py`), asked only
when a clause has a colour. The rules follow the official `evaluate_images.py`:

- include clause: the first `count` detections of the class exist; `count` of them have
  the colour; each of them stands in the relation to each object of the referenced group
  (a group that itself failed leaves no target: the clause fails);
- exclude clause: `count` or more of the class is a failure;
- position of A relative to B: box centres and sizes, `offset = c_A − c_B`,
  `revised = max(|offset| − 0.1·(dim_A + dim_B), 0)·sign(offset)`, no relation if every
  |revised| < 1e-3, else `(dx, dy) = revised / ‖offset‖` and left of / right of / above /
  below at −0.5 / 0.5.

Overall = mean over the six tags of the tag's accuracy. The training reward's partial
credit (flow_grpo's) gives each clause's checks a share in [0, 1] instead of pass / fail.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowarena.core.errors import PromptFileError
from flowarena.tasks.soft_tifa import stderr

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
THRESHOLD, COUNTING_THRESHOLD, MAX_OBJECTS, POSITION_MARGIN = 0.3, 0.9, 16, 0.1
DATA = Path(__file__).parent / "data" / "geneval"


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    score: float
    mask: np.ndarray | None = None  # [H, W] bool, the instance's pixels


ColourFn = Callable[[str, list[Detection]], list[str]]  # (class, detections) -> colour of each


def class_names() -> list[str]:
    """The 80 COCO classes in the detector's label order (GenEval's `object_names.txt`)."""
    return (DATA / "object_names.txt").read_text().split("\n")[:80]


def keep_detections(per_class: dict[str, list[Detection]], tag: str) -> dict[str, list[Detection]]:
    """GenEval's selection: above the tag's confidence threshold, best first, at most 16."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    out = {}
    for name, dets in per_class.items():
        kept = sorted((d for d in dets if d.score > threshold), key=lambda d: -d.score)[:MAX_OBJECTS]
        if kept:
            out[name] = kept
    return out


def relative_position(a: Detection, b: Detection) -> set[str]:
    """The relations of detection A to detection B."""
    return box_relations(a.box, b.box)


def box_relations(box_a, box_b) -> set[str]:
    """The relations of box A to box B (x1, y1, x2, y2; y downwards), factoring in the
    objects' sizes (none if they overlap much). The toy world lays out its scenes by it."""
    boxes = np.array([box_a, box_b], dtype=float).reshape(2, 2, 2)  # [object, corner, xy]
    centre_a, centre_b = boxes.mean(axis=1)
    dim_a, dim_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = centre_a - centre_b
    revised = np.maximum(np.abs(offset) - POSITION_MARGIN * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def _all_in_relation(objs: list[Detection], targets: list[Detection], relation: str) -> float:
    """Share of (object, target) pairs in the relation."""
    pairs = [relation in relative_position(o, t) for o in objs for t in targets]
    return float(np.mean(pairs)) if pairs else 0.0


def evaluate(record: dict, detected: dict[str, list[Detection]],
             colours: ColourFn) -> tuple[bool, float, list[str]]:
    """(correct, partial credit, reasons) of one image's detections against its record."""
    correct = True
    reasons: list[str] = []
    credits: list[float] = []
    groups: list[list[Detection] | None] = []  # each include clause's objects, None if it failed
    for req in record.get("include", []):
        name, n = req["class"], req["count"]
        found_all = detected.get(name, [])
        found = found_all[:n]
        matched = len(found) >= n
        # partial credit counts every detection: too many is as wrong as too few
        credits.append(max(0.0, 1 - abs(n - len(found_all)) / n))
        if not matched:
            reasons.append(f"expected {name}>={n}, found {len(found)}")
        if "color" in req:
            names = colours(name, found) if found else []
            have = names.count(req["color"])
            credits.append(min(have, n) / n)
            if matched and have < n:
                matched = False
                reasons.append(f"expected {req['color']} {name}>={n}, found {have} {req['color']}; "
                               f"also {', '.join(sorted(set(names)))}")
        if "position" in req:
            relation, target = req["position"]
            targets = groups[target] if target < len(groups) else None
            if not matched:
                credits.append(0.0)
            elif targets is None:
                matched = False
                credits.append(0.0)
                reasons.append(f"no target for {name} to be {relation}")
            else:
                share = _all_in_relation(found, targets, relation)
                credits.append(share)
                if share < 1:
                    matched = False
                    reasons.append(f"expected {name} {relation} target")
        correct &= matched
        groups.append(found if matched else None)
    for req in record.get("exclude", []):
        name, n = req["class"], req["count"]
        violated = len(detected.get(name, [])) >= n
        credits.append(0.0 if violated else 1.0)
        if violated:
            correct = False
            reasons.append(f"expected {name}<{n}, found {len(detected[name])}")
    partial = float(np.mean(credits)) if credits else float(correct)
    return correct, (1.0 if correct else partial), reasons


def geneval_summary(records: list[dict], correct: list[list[bool]]) -> dict:
    """`correct[p][i]`: image i of prompt p passed. Overall = mean over tags of the tag's
    accuracy over images; the stderr treats tags as independent (per-prompt accuracies)."""
    by_tag: dict[str, list[float]] = defaultdict(list)
    for rec, per_image in zip(records, correct):
        by_tag[rec["tag"]].append(float(np.mean(per_image)))
    per_tag = {t: 100 * float(np.mean(by_tag[t])) for t in TAGS if by_tag[t]}
    tag_se = [stderr(by_tag[t]) for t in TAGS if by_tag[t]]
    overall = float(np.mean(list(per_tag.values())))
    overall_se = 100 * float(np.sqrt(np.sum(np.square(tag_se)))) / len(tag_se)
    return {"overall": overall, "overall_stderr": overall_se,
            "per_tag": per_tag, "n_prompts": len(records), "n_images": sum(len(c) for c in correct)}


def _check(rec, where: str, names: set[str]) -> dict:
    if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
        raise PromptFileError(f"{where}: expected an object with a non-empty 'prompt'")
    if rec.get("tag") not in TAGS:
        raise PromptFileError(f"{where}: 'tag' must be one of {', '.join(TAGS)}")
    include = rec.get("include")
    if not isinstance(include, list) or not include:
        raise PromptFileError(f"{where}: 'include' must be a non-empty list of clauses")
    for i, req in enumerate(include + rec.get("exclude", [])):
        if not isinstance(req, dict) or req.get("class") not in names:
            raise PromptFileError(f"{where}: clause {i} needs a 'class' among the 80 COCO classes")
        if not isinstance(req.get("count"), int) or req["count"] < 1:
            raise PromptFileError(f"{where}: clause {i} needs a positive integer 'count'")
        if "color" in req and req["color"] not in COLORS:
            raise PromptFileError(f"{where}: colour {req['color']!r} is not one of {', '.join(COLORS)}")
        pos = req.get("position")
        if pos is not None and not (isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS
                                    and isinstance(pos[1], int) and 0 <= pos[1] < i):
            raise PromptFileError(f"{where}: clause {i}'s 'position' must be [relation, index of an "
                                  "earlier clause]")
    return rec


def load_geneval_prompts(path: str | Path | None = None) -> list[dict]:
    """GenEval's `evaluation_metadata.jsonl` (the shipped copy by default), validated."""
    path = Path(path) if path else DATA / "evaluation_metadata.jsonl"
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} not found")
    names, records = set(class_names()), []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            records.append(_check(rec, f"{path}:{i}", names))
    if not records:
        raise PromptFileError(f"prompt file {path} holds no prompts")
    return records
