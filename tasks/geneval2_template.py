"""GenEval2's prompt template: the sentence shapes, the rules that turn a prompt into its
questions, skills and atom count, its canonical key, and a seeded generator of new prompts
in the same format (docs/benchmarks.md §5).

GenEval2 ships no generator; these rules were read off its 800 prompts, and rebuilding
every record from its prompt text alone reproduces all 800 exactly (tests/test_geneval2_template.py).

- A noun phrase (NP) is `{count} [attribute] {noun}`: "a" for one (always "a", even before a
  vowel), else the number word and a naive plural (noun + "s": "sheeps").
- Seven shapes: `NP`, `NP and NP`, `NP and NP and NP`, `NP REL NP`, `NP REL NP, and NP`,
  `NP, and NP REL NP`, `NP REL NP REL NP`; REL is a position or, between two animals, a verb.
- Questions, NP by NP from the left: its count, its attribute, its presence, then the
  relation it starts. Atoms: 1 per NP, +1 for an attribute, +1 for a count above one, +1
  per relation (= questions − count questions answered "one").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache

import numpy as np

from flowarena.tasks.prompts import DATA

NUMBERS = ("one", "two", "three", "four", "five", "six", "seven")
MIRROR = {"to the right of": "to the left of", "behind": "in front of", "on top of": "under"}
"""Relations that say the same as another with the sides swapped (verbs are not folded)."""
SHAPES = ("NP", "NP and NP", "NP and NP and NP", "NP REL NP", "NP REL NP, and NP",
          "NP, and NP REL NP", "NP REL NP REL NP")
# The relations of each shape, as (subject NP, object NP); the rest of the NPs are joined by "and".
_RELATIONS = {"NP": (), "NP and NP": (), "NP and NP and NP": (), "NP REL NP": ((0, 1),),
              "NP REL NP, and NP": ((0, 1),), "NP, and NP REL NP": ((1, 2),),
              "NP REL NP REL NP": ((0, 1), (1, 2))}
VERB_SHARE = 86 / 180
"""Share of the relations between two animals that are verbs (the 800 prompts: 86 of 180)."""


@cache
def template() -> dict:
    """The vocabularies and the shape frequencies per atom count (tasks/data/geneval2/template.json)."""
    return json.loads((DATA / "geneval2" / "template.json").read_text())


def attributes() -> list[str]:
    t = template()
    return t["colours"] + t["materials"] + t["patterns"]


@dataclass(frozen=True)
class NP:
    noun: str
    count: int
    attribute: str | None = None

    @property
    def plural(self) -> str:
        return self.noun + "s"

    def text(self) -> str:
        head = "a" if self.count == 1 else NUMBERS[self.count - 1]
        return " ".join(w for w in (head, self.attribute, self.noun if self.count == 1 else self.plural) if w)

    def the(self) -> str:
        """`the noun` or `the nouns`, as a relation question names its object."""
        return f"the {self.noun if self.count == 1 else self.plural}"

    @property
    def atoms(self) -> int:
        return 1 + (self.attribute is not None) + (self.count > 1)


@dataclass(frozen=True)
class Scene:
    """A prompt's structure: its shape, its NPs left to right, and one relation per REL of the
    shape (subject and object as NP indices)."""
    shape: str
    nps: tuple[NP, ...]
    relations: tuple[tuple[int, str, int], ...] = ()

    def prompt(self) -> str:
        seps = self.shape.split("NP")[1:-1]  # " and ", ", and " or " REL ", one between NPs
        rels = iter(r for _, r, _ in self.relations)
        text = self.nps[0].text()
        for sep, np_ in zip(seps, self.nps[1:]):
            text += (sep.replace("REL", next(rels)) if "REL" in sep else sep) + np_.text()
        return text

    @property
    def atom_count(self) -> int:
        return sum(np_.atoms for np_ in self.nps) + len(self.relations)

    def record(self) -> dict:
        """The prompt in GenEval2's format: prompt, atom_count, vqa_list, skills."""
        verbs = set(template()["verbs"])
        vqa, skills = [], []
        for i, np_ in enumerate(self.nps):
            one = np_.count == 1
            vqa.append([f"How many {np_.plural} are in the image?", NUMBERS[np_.count - 1]])
            skills.append("count")
            if np_.attribute:
                vqa.append([f"Is the {np_.noun} {np_.attribute}?" if one
                            else f"Are the {np_.plural} {np_.attribute}?", "Yes"])
                skills.append("attribute")
            vqa.append([f"Are there any {np_.plural} in the image?", "Yes"])
            skills.append("object")
            for s, rel, o in self.relations:
                if s == i:
                    subject = f"Is the {np_.noun}" if one else f"Are the {np_.plural}"
                    vqa.append([f"{subject} {rel} {self.nps[o].the()}?", "Yes"])
                    skills.append("verb" if rel in verbs else "position")
        return {"prompt": self.prompt(), "atom_count": self.atom_count, "vqa_list": vqa, "skills": skills}

    def key(self) -> tuple:
        """The canonical key: the NPs as a set (the order of "and" does not matter) and the
        relations as a set of (subject, relation, object) with mirror relations folded."""
        rels = set()
        for s, rel, o in self.relations:
            a, b = self.nps[s], self.nps[o]
            if rel in MIRROR:
                rel, a, b = MIRROR[rel], b, a
            rels.add((a, rel, b))
        return frozenset(self.nps), frozenset(rels)


# --- reading a prompt back ---------------------------------------------------------------------
@cache
def _np_pattern() -> re.Pattern:
    t = template()
    nouns = t["objects_animals"] + t["objects_other"]
    words = "|".join(sorted((re.escape(w) for w in nouns), key=len, reverse=True))
    attrs = "|".join(sorted(attributes(), key=len, reverse=True))
    return re.compile(rf"(a|{'|'.join(NUMBERS[1:])}) (?:({attrs}) )?({words})(s?)")


def parse(prompt: str) -> Scene:
    """The Scene of a GenEval2-template prompt (ValueError for anything else)."""
    t = template()
    rels = sorted(t["positions"] + t["verbs"], key=len, reverse=True)
    sep = re.compile("|".join([", and ", " and "] + [f" {re.escape(r)} " for r in rels]))
    nps, seps, pos = [], [], 0
    while True:
        m = _np_pattern().match(prompt, pos)
        if m is None:
            raise ValueError(f"not a GenEval2-template prompt: {prompt!r} (at {prompt[pos:]!r})")
        count = 1 if m.group(1) == "a" else NUMBERS.index(m.group(1)) + 1
        if (count > 1) != (m.group(4) == "s"):
            raise ValueError(f"{prompt!r}: count and plural disagree in {m.group(0)!r}")
        nps.append(NP(m.group(3), count, m.group(2)))
        pos = m.end()
        if pos == len(prompt):
            break
        s = sep.match(prompt, pos)
        if s is None:
            raise ValueError(f"not a GenEval2-template prompt: {prompt!r} (at {prompt[pos:]!r})")
        seps.append(s.group(0))
        pos = s.end()
    shape = "NP" + "".join((x if x.strip(" ,") == "and" else " REL ") + "NP" for x in seps)
    if shape not in SHAPES:
        raise ValueError(f"{prompt!r}: shape {shape!r} is not one of GenEval2's")
    relations = tuple((i, x.strip(), i + 1) for i, x in enumerate(seps) if x.strip(" ,") != "and")
    return Scene(shape, tuple(nps), relations)


# --- making new prompts -------------------------------------------------------------------------
def sample_scene(rng: np.random.Generator, atoms: int) -> Scene:
    """A random Scene with `atoms` atoms: a shape with GenEval2's frequency at that atom count,
    distinct nouns, uniform counts (two to seven), attributes and positions; between two
    animals a verb with GenEval2's share."""
    t = template()
    freq = t["skeleton_counts_by_atom_count"][str(atoms)]
    shapes, weights = list(freq), np.array(list(freq.values()), dtype=float)
    animals, others = t["objects_animals"], t["objects_other"]
    attrs = attributes()
    while True:  # rejection: a shape and extras whose atoms add up
        shape = shapes[rng.choice(len(shapes), p=weights / weights.sum())]
        n = shape.count("NP")
        pairs = _RELATIONS[shape]
        extras = atoms - n - len(pairs)  # attributes and counts above one to place
        slots = [(i, kind) for i in range(n) for kind in ("attribute", "count")]
        if not 0 <= extras <= len(slots):
            continue
        chosen = {slots[j] for j in rng.choice(len(slots), size=extras, replace=False)}
        if shape == "NP" and len(chosen) != 2:  # a lone NP has both, as in GenEval2
            continue
        break
    nouns = [str(w) for w in rng.choice(animals + others, size=n, replace=False)]
    rels = []
    for s, o in pairs:  # a verb only between two animals
        verb = nouns[s] in animals and nouns[o] in animals and rng.random() < VERB_SHARE
        rels.append((s, str(rng.choice(t["verbs"] if verb else t["positions"])), o))
    nps = tuple(NP(nouns[i], int(rng.integers(2, 8)) if (i, "count") in chosen else 1,
                   str(rng.choice(attrs)) if (i, "attribute") in chosen else None) for i in range(n))
    return Scene(shape, nps, tuple(rels))


def generate(n: int, seed: int, atom_counts=range(3, 11), exclude: set | None = None) -> list[dict]:
    """`n` records balanced over `atom_counts` (in that order, n / len each), none whose
    canonical key is in `exclude` or repeats; the same (n, seed) gives the same records."""
    rng = np.random.default_rng(seed)
    seen = set(exclude or ())
    counts = list(atom_counts)
    out = []
    for j, atoms in enumerate(counts):
        want = n // len(counts) + (j < n % len(counts))
        while want:
            scene = sample_scene(rng, atoms)
            if scene.key() in seen:
                continue
            seen.add(scene.key())
            out.append(scene.record())
            want -= 1
    return out


# --- the shipped splits ---------------------------------------------------------------------------
SPLITS = {"geneval2-val": ("geneval2_val.jsonl", 800, 2),
          "geneval2-train": ("geneval2_train.jsonl.gz", 20_000, 1)}
"""name: (file in tasks/data/geneval2, records, seed). The validation split (100 per atom count)
avoids the test set; the training split avoids both."""


def build_splits() -> dict[str, list[dict]]:
    """The shipped splits, regenerated: disjoint by canonical key from the 800 test prompts and
    from each other (tests/test_geneval2_template.py checks the shipped files equal these)."""
    from flowarena.tasks.prompts import load_prompt_file

    taken = {parse(r["prompt"]).key() for r in load_prompt_file(DATA / "geneval2" / "geneval2_data.jsonl")}
    out = {}
    for name, (_, n, seed) in SPLITS.items():
        out[name] = generate(n, seed, exclude=taken)
        taken |= {parse(r["prompt"]).key() for r in out[name]}
    return out


def write_splits(directory=DATA / "geneval2") -> None:
    """Write the shipped split files (gzip without a timestamp, so the bytes reproduce too)."""
    import gzip
    from pathlib import Path

    for name, records in build_splits().items():
        text = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
        path = Path(directory) / SPLITS[name][0]
        path.write_bytes(gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
