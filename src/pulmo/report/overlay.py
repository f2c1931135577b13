"""Overlay pictures: the radiograph in grey with masks tinted and outlined (Pillow, numpy)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from pulmo.transforms import normalize_cxr


def grey_rgb(pixels: np.ndarray) -> np.ndarray:
    """``(H, W)`` pixels -> uint8 ``(H, W, 3)`` grey picture (robust min-max)."""
    g = (normalize_cxr(pixels) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def mask_overlay(pixels: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 200, 120),
                 alpha: float = 0.25, max_side: int = 1024) -> Image.Image:
    """The image with ``mask`` tinted by ``colour`` at ``alpha`` and a 2-px outline, at most ``max_side`` px."""
    rgb = grey_rgb(pixels).astype(np.float32)
    m = np.asarray(mask, dtype=bool)
    col = np.asarray(colour, np.float32)
    rgb[m] = (1 - alpha) * rgb[m] + alpha * col
    thickness = max(1, round(max(m.shape) / 512))
    edge = m & ~ndimage.binary_erosion(m, iterations=thickness)
    rgb[edge] = col
    im = Image.fromarray(rgb.astype(np.uint8))
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    return im
