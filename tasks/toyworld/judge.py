"""The toy world's VQA model: a deterministic scene parser that answers softly.

Background subtraction and connected components find the objects; each component
gets a probability of being an object at all (from its area), a distribution over
colours (softmax over palette distances of its core colour) and over shapes (softmax
over the soft IoU between the component and each ideal shape drawn in its box).
Questions are answered from these as probabilities, like a VQA model's softmax:

- "How many circles ...?"  the Poisson-binomial distribution of Σ_j p_j(circle)
- "Are there any circles ...?"  1 − Π_j (1 − p_j(circle))
- "Is/Are the circle(s) red?"  P(any circle) × the circle-weighted mean of p_j(red)
- "Is/Are the X left of the Y?"  P(any X)·P(any Y) × the pair-weighted mean of a soft
  version of GenEval's position rule on the component boxes

`score(image, vqa_list)` returns the probability of each expected answer: the soft
answers that Soft-TIFA aggregates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flowarena.core.errors import FlowArenaError
from flowarena.tasks.toyworld.grammar import NUMBERS, PLURAL
from flowarena.tasks.toyworld.scene import BACKGROUND, COLOURS, RELATIONS, SHAPES, to_toy_size

_SINGULAR = {**{p: s for s, p in PLURAL.items()}, **{s: s for s in SHAPES}}
_NUM = {"zero": 0, **{w: i + 1 for i, w in enumerate(NUMBERS)}}
_REL = "|".join(RELATIONS)
_Q_COUNT = re.compile(r"^how many (\w+) are in the image\?$")
_Q_OBJECT = re.compile(r"^are there any (\w+) in the image\?$")
_Q_ATTR = re.compile(rf"^(?:is|are) the (\w+) ({'|'.join(COLOURS)})\?$")
_Q_POS = re.compile(rf"^(?:is|are) the (\w+) ({_REL}) the (\w+)\?$")


_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}


class QuestionError(FlowArenaError, ValueError):
    """A question the toy judge cannot parse."""


@dataclass
class Component:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixel-edge coordinates
    p_object: float
    p_shape: dict[str, float]
    p_colour: dict[str, float]

    def p(self, shape: str) -> float:
        return self.p_object * self.p_shape[shape]


def _ideal_coverage(shape: str, box, shape_hw: tuple[int, int], ss: int = 4) -> np.ndarray:
    """Fraction of each pixel covered by the ideal shape in `box` (4x4 supersampling)."""
    h, w = shape_hw
    ys = (np.arange(h * ss) + 0.5) / ss
    xs = (np.arange(w * ss) + 0.5) / ss
    X, Y = np.meshgrid(xs, ys)
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 1e-6), max((y1 - y0) / 2, 1e-6)
    if shape == "circle":
        inside = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 <= 1
    elif shape == "square":
        inside = (X >= x0) & (X <= x1) & (Y >= y0) & (Y <= y1)
    elif shape == "diamond":
        inside = np.abs(X - cx) / rx + np.abs(Y - cy) / ry <= 1
    else:  # triangle, apex up
        frac = (Y - y0) / (2 * ry)
        inside = (frac >= 0) & (frac <= 1) & (np.abs(X - cx) <= rx * frac)
    return inside.reshape(h, ss, w, ss).mean(axis=(1, 3))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _poisson_binomial(ps: list[float], n_max: int) -> np.ndarray:
    dist = np.zeros(n_max + 1)
    dist[0] = 1.0
    for p in ps:
        dist[1:] = dist[1:] * (1 - p) + dist[:-1] * p
        dist[0] *= 1 - p
    return dist


def _soft_relation(box_a, box_b, relation: str, tau: float = 0.05) -> float:
    """A soft GenEval position rule: sigmoid of the margin past the ±0.5 threshold."""
    a = np.asarray(box_a, float).reshape(2, 2)
    b = np.asarray(box_b, float).reshape(2, 2)
    offset = a.mean(0) - b.mean(0)
    dims = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])
    revised = np.maximum(np.abs(offset) - 0.1 * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return 0.0
    dx, dy = revised / np.linalg.norm(offset)
    margin = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[relation] - 0.5
    return float(1 / (1 + np.exp(-margin / tau)))


class ToyJudge:
    """Soft scene parser. Thresholds are in 0-255 RGB distance from the background."""

    def __init__(self, fg_threshold: float = 35.0, min_area: float = 10.0, area_scale: float = 2.0,
                 shape_temperature: float = 0.03, colour_temperature: float = 30.0):
        self.fg_threshold = fg_threshold
        self.min_area = min_area
        self.area_scale = area_scale
        self.shape_temperature = shape_temperature
        self.colour_temperature = colour_temperature
        self._palette = np.array(list(COLOURS.values()), float)

    # --- perception ----------------------------------------------------------------------
    @staticmethod
    def to_uint8(image) -> np.ndarray:
        """Accept (H, W, 3) uint8 or a float tensor/array (3, H, W) in [0, 1]; a tensor of
        another size is first area-downsampled to the toy world's 32 × 32."""
        if hasattr(image, "detach"):
            image = to_toy_size(image.detach().cpu())
        arr = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
        if arr.dtype != np.uint8:
            arr = np.clip(np.round(arr * 255), 0, 255).astype(np.uint8)
            if arr.shape[0] == 3 and arr.shape[-1] != 3:
                arr = arr.transpose(1, 2, 0)
        return arr

    def parse(self, image) -> list[Component]:
        img = self.to_uint8(image).astype(float)
        dist = np.linalg.norm(img - np.array(BACKGROUND, float), axis=-1)
        labels, n = ndimage.label(dist > self.fg_threshold)
        comps = []
        for j, sl in enumerate(ndimage.find_objects(labels), start=1):
            mask = labels == j
            d = dist[mask]
            core = np.percentile(d, 75)
            strength = np.where(mask, np.clip(dist / max(core, 1e-6), 0, 1), 0.0)
            area = strength.sum()
            if area <= 0:
                continue
            # Fit each ideal shape by its moments (area, centroid), then score the soft IoU
            # with the component on its padded crop: sub-pixel accurate, unlike a pixel bbox.
            y0, y1 = max(sl[0].start - 2, 0), min(sl[0].stop + 2, img.shape[0])
            x0, x1 = max(sl[1].start - 2, 0), min(sl[1].stop + 2, img.shape[1])
            crop = strength[y0:y1, x0:x1]
            gy, gx = np.mgrid[y0:y1, x0:x1] + 0.5
            cy, cx = (gy * crop).sum() / area, (gx * crop).sum() / area
            ious, boxes = [], []
            for shape in SHAPES:
                a = np.sqrt(area / _FILL[shape])
                by = cy - a / 6 if shape == "triangle" else cy  # a triangle's centroid sits low
                box = (cx - a / 2, by - a / 2, cx + a / 2, by + a / 2)
                ideal = _ideal_coverage(shape, (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0),
                                        crop.shape)
                ious.append(np.minimum(crop, ideal).sum() / max(np.maximum(crop, ideal).sum(), 1e-9))
                boxes.append(box)
            p_shape = _softmax(np.array(ious) / self.shape_temperature)
            box = boxes[int(np.argmax(ious))]
            w = strength[mask] ** 2
            colour = (img[mask] * w[:, None]).sum(0) / max(w.sum(), 1e-9)
            d2 = ((self._palette - colour) ** 2).sum(1)
            p_colour = _softmax(-d2 / (2 * self.colour_temperature**2))
            p_object = 1 / (1 + np.exp(-(area - self.min_area) / self.area_scale))
            comps.append(Component(box, float(p_object), dict(zip(SHAPES, p_shape.tolist())),
                                   dict(zip(COLOURS, p_colour.tolist()))))
        return comps

    # --- answering -----------------------------------------------------------------------
    @staticmethod
    def _shape(word: str) -> str:
        if word not in _SINGULAR:
            raise QuestionError(f"unknown object {word!r}")
        return _SINGULAR[word]

    def p_yes_or_count(self, comps: list[Component], question: str) -> np.ndarray | float:
        """P(yes) for yes/no questions, the count distribution for "how many"."""
        q = question.strip().lower()
        if m := _Q_COUNT.match(q):
            shape = self._shape(m.group(1))
            return _poisson_binomial([c.p(shape) for c in comps], max(len(NUMBERS), len(comps)))
        if m := _Q_OBJECT.match(q):
            return self._any(comps, self._shape(m.group(1)))
        if m := _Q_ATTR.match(q):
            shape, colour = self._shape(m.group(1)), m.group(2)
            ws = np.array([c.p(shape) for c in comps])
            if ws.sum() <= 0:
                return 0.0
            mean_colour = float((ws * np.array([c.p_colour[colour] for c in comps])).sum() / ws.sum())
            return self._any(comps, shape) * mean_colour
        if m := _Q_POS.match(q):
            sa, rel, sb = self._shape(m.group(1)), m.group(2), self._shape(m.group(3))
            num = den = 0.0
            for i, a in enumerate(comps):
                for j, b in enumerate(comps):
                    if i != j:
                        w = a.p(sa) * b.p(sb)
                        num += w * _soft_relation(a.box, b.box, rel)
                        den += w
            if den <= 0:
                return 0.0
            return self._any(comps, sa) * self._any(comps, sb) * num / den
        raise QuestionError(f"the toy judge cannot parse the question {question!r}")

    @staticmethod
    def _any(comps: list[Component], shape: str) -> float:
        return float(1 - np.prod([1 - c.p(shape) for c in comps]))

    def answer_prob(self, comps: list[Component], question: str, answer: str) -> float:
        """Probability the judge gives `answer` (Yes/No or a number word)."""
        out = self.p_yes_or_count(comps, question)
        a = answer.strip().lower()
        if isinstance(out, np.ndarray):
            n = _NUM.get(a, int(a) if a.isdigit() else None)
            if n is None:
                raise QuestionError(f"count answer {answer!r} is not a number")
            return float(out[n]) if n < len(out) else 0.0
        if a == "yes":
            return float(out)
        if a == "no":
            return 1.0 - float(out)
        raise QuestionError(f"yes/no question with answer {answer!r}")

    def score(self, image, vqa_list: list) -> list[float]:
        """Soft score of each (question, expected answer) pair for one image."""
        comps = self.parse(image)
        return [self.answer_prob(comps, q, a) for q, a in vqa_list]
