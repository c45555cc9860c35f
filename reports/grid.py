"""Image grids as PNG files (atomic writes), upscaled so 32x32 toy images are visible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from flowarena.core.io import atomic_write


def grid_image(images: Tensor, nrow: int = 8, upscale: int = 4, pad: int = 2) -> Image.Image:
    """images [B, 3, H, W] in [0, 1] -> one PIL image, `nrow` images per row."""
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    b, h, w, _ = arr.shape
    nrow = max(1, min(nrow, b))
    rows = (b + nrow - 1) // nrow
    H, W = h * upscale, w * upscale
    canvas = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(arr):
        r, c = divmod(i, nrow)
        big = np.kron(im, np.ones((upscale, upscale, 1), np.uint8))
        canvas[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = big
    return Image.fromarray(canvas)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, upscale: int = 4) -> Path:
    path = Path(path)
    img = grid_image(images, nrow, upscale)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return path
