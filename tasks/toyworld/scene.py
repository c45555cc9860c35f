"""Toy scenes: coloured shapes on a grey background, and a deterministic renderer.

A scene is an exact description (shape, colour, centre, size per object); the renderer
draws it anti-aliased by 4x supersampling. Layouts that satisfy a prompt (counts,
relations) are drawn by seeded rejection sampling, so every image is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from flowarena.tasks.geneval_rules import (
    box_relations as relation_of,  # GenEval's position rule, as evaluated
)

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "magenta": (210, 50, 200),
    "cyan": (40, 200, 210),
}
BACKGROUND = (128, 128, 128)
RELATIONS = ("left of", "right of", "above", "below")
SIZE_RANGE = (6, 10)  # object bounding-box side in pixels at 32x32
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    cx: float  # centre, pixels (x to the right)
    cy: float  # centre, pixels (y downwards)
    size: float  # bounding-box side, pixels

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


def shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape inside `box` (x0, y0, x1, y1); circles are ellipses."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    raise ValueError(f"not a polygon: {shape}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(shape_polygon(shape, box), fill=fill)


def to_toy_size(images, size: int = 32):
    """Images [B, 3, H, W] or [3, H, W] (float tensors) area-downsampled to size × size, so the
    toy judge and preference model also read other models' larger images; unchanged if
    already that size."""
    import torch.nn.functional as F

    if images.shape[-2:] == (size, size):
        return images
    batch = images if images.dim() == 4 else images[None]
    out = F.interpolate(batch.float(), size=(size, size), mode="area")
    return out if images.dim() == 4 else out[0]


def render(objects: list[Obj], size: int = 32) -> np.ndarray:
    """Render a scene to an (H, W, 3) uint8 array."""
    s = SUPERSAMPLE
    img = Image.new("RGB", (size * s, size * s), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objects:
        x0, y0, x1, y1 = o.box
        draw_shape(draw, o.shape, (x0 * s, y0 * s, x1 * s - 1, y1 * s - 1), COLOURS[o.colour])
    img = img.resize((size, size), Image.BOX)
    return np.asarray(img, dtype=np.uint8)


def _separated(o: Obj, others: list[Obj], gap: float = 2.0) -> bool:
    for p in others:
        d = (o.size + p.size) / 2 + gap
        if abs(o.cx - p.cx) < d and abs(o.cy - p.cy) < d:
            return False
    return True


def sample_layout(
    groups: list[tuple[int, str, str]],
    relation: str | None,
    rng: np.random.Generator,
    size: int = 32,
    tries: int = 500,
) -> list[Obj]:
    """Place `groups` = [(count, colour, shape), ...] without overlap.

    With a relation (two groups), every object of the first group stands in that relation
    to every object of the second by GenEval's rule, so the scene is an exact answer.
    """
    scale = size / 32
    lo, hi = SIZE_RANGE[0] * scale, SIZE_RANGE[1] * scale
    for _ in range(tries):
        objs: list[Obj] = []
        if relation is not None:
            axis = 0 if relation in ("left of", "right of") else 1
            first_low = relation in ("left of", "above")
            divider = rng.uniform(0.4, 0.6) * size
        ok = True
        for gi, (count, colour, shape) in enumerate(groups):
            for _ in range(count):
                placed = False
                for _ in range(50):
                    s = rng.uniform(lo, hi)
                    c = rng.uniform(s / 2 + 1, size - s / 2 - 1, size=2)
                    if relation is not None:
                        low_side = (gi == 0) == first_low
                        span = (s / 2 + 1, divider - 1) if low_side else (divider + 1, size - s / 2 - 1)
                        if span[1] <= span[0]:
                            continue
                        c[axis] = rng.uniform(*span)
                    o = Obj(shape, colour, float(c[0]), float(c[1]), float(s))
                    if _separated(o, objs):
                        objs.append(o)
                        placed = True
                        break
                if not placed:
                    ok = False
                    break
            if not ok:
                break
        if not ok:
            continue
        if relation is not None:
            n0 = groups[0][0]
            if not all(relation in relation_of(a.box, b.box) for a in objs[:n0] for b in objs[n0:]):
                continue
        return objs
    raise RuntimeError(f"could not place {groups} {relation or ''} in {tries} tries")
