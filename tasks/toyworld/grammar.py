"""The toy world's prompt grammar, in GenEval2's format.

A prompt is a `Spec`: one or two groups (count, colour, shape) and, for two groups,
a relation ("and" when None). `Spec.record()` gives the GenEval2 line
(`prompt`, `atom_count`, `vqa_list`, `skills`) with GenEval2's question wording and
order, so the toy and real benchmarks share one loader and one Soft-TIFA scorer.

`make_splits` builds the shipped train / eval / ood files from a seed. The eval and
ood combinations (groups + relation, whatever the phrasing) are held out of the RL
train split and of the pretraining captions, so the benchmark measures composition,
not memory.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

import numpy as np

from flowarena.tasks.toyworld.scene import COLOURS, RELATIONS, SHAPES

NUMBERS = ("one", "two", "three", "four")
MAX_OBJECTS = 4
PLURAL = {s: s + "s" for s in SHAPES}

# Alternative phrasings: used for some pretraining captions and for every ood prompt.
WRAPPERS = ("{}", "a photo of {}", "an image of {}", "a picture with {}", "{} on a grey background")
ALT_RELATION = {"left of": "to the left of", "right of": "to the right of",
                "above": "over", "below": "under"}
ALT_AND = "with"
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# Relations are stored in one orientation so "A right of B" and "B left of A" share a key.
_FLIP = {"right of": "left of", "below": "above"}

Group = tuple[int, str, str]  # (count, colour, shape)


@dataclass(frozen=True)
class Spec:
    groups: tuple[Group, ...]
    relation: str | None = None  # None: "and" (or a single group)
    alt: bool = False  # use the alternative phrasing
    wrapper: int = 0  # index into WRAPPERS

    @property
    def category(self) -> str:
        if len(self.groups) == 1:
            return "single" if self.groups[0][0] == 1 else "counting"
        return "two_object" if self.relation is None else "position"

    def key(self) -> tuple:
        """The combination, independent of phrasing and of the order of the groups."""
        groups, rel = self.groups, self.relation
        if rel in _FLIP:
            groups, rel = groups[::-1], _FLIP[rel]
        if rel is None:
            groups = tuple(sorted(groups))
        return (groups, rel)

    # --- text -------------------------------------------------------------------------
    @staticmethod
    def _noun_phrase(group: Group, alt: bool) -> str:
        n, colour, shape = group
        if n == 1:
            return f"{'one' if alt else 'a'} {colour} {shape}"
        return f"{NUMBERS[n - 1]} {colour} {PLURAL[shape]}"

    @property
    def text(self) -> str:
        parts = [self._noun_phrase(g, self.alt) for g in self.groups]
        if len(parts) == 1:
            core = parts[0]
        elif self.relation is None:
            core = f"{parts[0]} {ALT_AND if self.alt else 'and'} {parts[1]}"
        else:
            rel = ALT_RELATION[self.relation] if self.alt else self.relation
            core = f"{parts[0]} {rel} {parts[1]}"
        return WRAPPERS[self.wrapper].format(core)

    # --- GenEval2 record ----------------------------------------------------------------
    def record(self) -> dict:
        vqa, skills = [], []

        def noun(g: Group) -> str:
            return g[2] if g[0] == 1 else PLURAL[g[2]]

        def clause(g: Group) -> None:
            n, colour, shape = g
            vqa.append([f"How many {PLURAL[shape]} are in the image?", NUMBERS[n - 1]])
            skills.append("count")
            be = "Is" if n == 1 else "Are"
            vqa.append([f"{be} the {noun(g)} {colour}?", "Yes"])
            skills.append("attribute")
            vqa.append([f"Are there any {PLURAL[shape]} in the image?", "Yes"])
            skills.append("object")

        clause(self.groups[0])
        if self.relation is not None:
            a, b = self.groups
            be = "Is" if a[0] == 1 else "Are"
            vqa.append([f"{be} the {noun(a)} {self.relation} the {noun(b)}?", "Yes"])
            skills.append("position")
        if len(self.groups) == 2:
            clause(self.groups[1])
        # As in GenEval2, "a"/"one" gets a count question but is not an atom.
        atoms = sum(1 for (q, ans), s in zip(vqa, skills) if not (s == "count" and ans == "one"))
        return {"prompt": self.text, "atom_count": atoms, "vqa_list": vqa, "skills": skills}


# --- vocabulary ---------------------------------------------------------------------------
def vocabulary() -> list[str]:
    """Every word a toy prompt may use (the toy text encoder's vocabulary)."""
    words = {"a", "and", ALT_AND, *NUMBERS, *COLOURS, *SHAPES, *PLURAL.values()}
    for phrase in (*RELATIONS, *ALT_RELATION.values(), *WRAPPERS):
        words.update(w for w in phrase.replace("{}", " ").split())
    return sorted(words)


_SPLIT = re.compile(r"[^a-z]+")


def tokenize_words(text: str) -> list[str]:
    return [w for w in _SPLIT.split(text.lower()) if w]


# --- enumeration and sampling -------------------------------------------------------------
def all_groups(max_count: int = 3) -> list[Group]:
    return [(n, c, s) for n in range(1, max_count + 1) for c in COLOURS for s in SHAPES]


@functools.lru_cache(maxsize=1)
def canonical_specs() -> dict[str, list[Spec]]:
    """Every canonical prompt, by category (two-group prompts need distinct shapes)."""
    single = [Spec(((1, c, s),)) for c in COLOURS for s in SHAPES]
    counting = [Spec(((n, c, s),)) for n in range(2, MAX_OBJECTS + 1) for c in COLOURS for s in SHAPES]
    pairs = [(a, b) for a, b in itertools.permutations(all_groups(), 2)
             if a[2] != b[2] and a[0] + b[0] <= MAX_OBJECTS]
    two = [Spec(p) for p in pairs]
    position = [Spec(p, r) for p in pairs for r in RELATIONS]
    return {"single": single, "counting": counting, "two_object": two, "position": position}


def random_phrasing(spec: Spec, rng: np.random.Generator) -> Spec:
    return Spec(spec.groups, spec.relation, alt=bool(rng.random() < 0.5),
                wrapper=int(rng.integers(1, len(WRAPPERS))))


def make_splits(seed: int = 0, n_train: int = 1024) -> tuple[dict[str, list[dict]], set]:
    """The shipped prompt splits. Eval: 8 / 24 / 40 / 40 / 40 / 40 prompts at atom counts
    2..7 (stratified like GenEval2); ood: 96 unseen combinations in alternative phrasings;
    train: `n_train` canonical prompts from the remaining combinations. Also returns the
    held-out combination keys (eval + ood)."""
    rng = np.random.default_rng(seed)
    specs = canonical_specs()
    everything = [s for cat in specs.values() for s in cat]
    by_atoms: dict[int, list[Spec]] = {}
    for s in everything:
        by_atoms.setdefault(s.record()["atom_count"], []).append(s)
    eval_quota = {2: 8, 3: 24, 4: 40, 5: 40, 6: 40, 7: 40}
    held: set = set()
    eval_specs: list[Spec] = []
    for atoms, quota in eval_quota.items():
        pool, taken = by_atoms[atoms], 0
        for i in rng.permutation(len(pool)):
            if taken == quota:
                break
            if pool[i].key() not in held:
                eval_specs.append(pool[i])
                held.add(pool[i].key())
                taken += 1
    ood_specs: list[Spec] = []
    ood_quota = {"single": 4, "counting": 12, "two_object": 30, "position": 50}
    for cat, quota in ood_quota.items():
        pool = [s for s in specs[cat] if s.key() not in held]
        for i in rng.permutation(len(pool))[:quota]:
            ood_specs.append(random_phrasing(pool[i], rng))
            held.add(pool[i].key())
    train_quota = {"single": 0.06, "counting": 0.14, "two_object": 0.3, "position": 0.5}
    train_specs: list[Spec] = []
    for cat, share in train_quota.items():
        pool = [s for s in specs[cat] if s.key() not in held]
        k = min(len(pool), round(share * n_train))
        train_specs.extend(pool[i] for i in rng.permutation(len(pool))[:k])
    return {
        "train": [s.record() for s in train_specs],
        "eval": [s.record() for s in eval_specs],
        "ood": [s.record() for s in ood_specs],
    }, held


@functools.lru_cache(maxsize=4)
def held_out_keys(seed: int = 0) -> frozenset:
    return frozenset(make_splits(seed)[1])


def sample_caption_spec(rng: np.random.Generator, held: set) -> Spec:
    """A random pretraining caption whose combination is not held out."""
    cats = canonical_specs()
    names = ("single", "counting", "two_object", "position")
    probs = (0.15, 0.2, 0.25, 0.4)
    while True:
        cat = names[rng.choice(4, p=probs)]
        spec = cats[cat][rng.integers(len(cats[cat]))]
        if spec.key() in held:
            continue
        return random_phrasing(spec, rng) if rng.random() < 0.3 else spec


# --- parsing --------------------------------------------------------------------------------
_NP = rf"(a|one|two|three|four) ({'|'.join(COLOURS)}) (\w+)"
_ALT_TO_REL = {v: k for k, v in ALT_RELATION.items()}


def _template(wrapper: str) -> re.Pattern:
    return re.compile(re.escape(wrapper).replace(re.escape("{}"), "(.+)").replace(r"\ ", " "))


def parse_prompt(text: str) -> Spec:
    """The Spec of a toy prompt (any phrasing this grammar produces); ValueError otherwise."""
    words = " ".join(tokenize_words(text))
    links = "|".join(sorted({*RELATIONS, *ALT_RELATION.values(), "and", ALT_AND}, key=len, reverse=True))
    # the bare "{}" wrapper matches everything, so it is tried last
    for w in (*range(1, len(WRAPPERS)), 0):
        m = _template(WRAPPERS[w]).fullmatch(words)
        m2 = m and re.fullmatch(rf"{_NP}(?: ({links}) {_NP})?", m.group(1))
        if not m2:
            continue
        groups, alt = [], False
        for det, colour, noun in (m2.group(1, 2, 3), m2.group(5, 6, 7)):
            if det is None:
                continue
            n = 1 if det in ("a", "one") else NUMBERS.index(det) + 1
            shape = noun if n == 1 else next((s for s, p in PLURAL.items() if p == noun), None)
            if shape not in SHAPES:
                raise ValueError(f"{noun!r} does not fit {det!r} in {text!r}")
            alt = alt or det == "one"
            groups.append((n, colour, shape))
        link = m2.group(4)
        alt = alt or link in (ALT_AND, *_ALT_TO_REL)
        relation = None if link in (None, "and", ALT_AND) else _ALT_TO_REL.get(link, link)
        return Spec(tuple(groups), relation, alt=alt, wrapper=w)
    raise ValueError(f"not a toy-world prompt: {text!r}")
