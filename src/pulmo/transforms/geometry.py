"""Resizing between original pixel geometry and a model's working resolution.

Images: Pillow's float (mode ``F``) bilinear resize, which antialiases when shrinking (its filter support
grows with the scale): the same filter as PyTorch's ``interpolate(mode="bilinear", antialias=True)``, which was
written to match Pillow (measured here: within 5e-6 of the value range on real image sizes), without importing
torch, so the ONNX inference path stays torch-free. Batched probability tensors (training, the torch backend):
torch ``interpolate``, imported when called.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from pulmo.geometry.boxes import mask_to_box


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W)`` float image to ``size = (h, w)`` (bilinear, antialiased when shrinking).

    Args:
        image: ``(H, W)`` array of any real dtype (cast to float32; values keep their units, e.g. [0, 1] or
            HU).
        size: output ``(h, w)`` in px.

    Returns:
        float32 ``(h, w)``.
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    if tuple(image.shape) == tuple(size):
        return image.copy()
    resized = Image.fromarray(image).resize((int(size[1]), int(size[0])), Image.BILINEAR)
    return np.array(resized, dtype=np.float32)  # a writable copy (np.asarray of a PIL image is read-only)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a binary mask ``(H, W)`` to ``size = (h, w)``: the 0/1 mask is resampled as :func:`resize_image`
    does (bilinear, antialiased when shrinking: an area-weighted vote) and thresholded at 0.5 -> uint8 0/1.

    Not for label maps with values above 1: the output is binary, every label becoming 1 where its
    interpolated value reaches 0.5.
    """
    return (resize_image(np.asarray(mask, dtype=np.float32), size) >= 0.5).astype(np.uint8)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` -> float32 ``(H, W)`` bilinear, ``align_corners=False``, no antialiasing: PyTorch's
    ``F.interpolate(mode="bilinear")`` (source coordinate ``(i + 0.5) * h / H - 0.5``, clamped at 0), in NumPy.
    Enlarging along both axes goes through Pillow's float bilinear resize, the same filter there (measured:
    within 2e-7 of PyTorch's) and several times faster; shrinking uses the NumPy form (Pillow would antialias)."""
    if size[0] >= x.shape[0] and size[1] >= x.shape[1]:
        img = Image.fromarray(np.ascontiguousarray(x, dtype=np.float32))
        return np.array(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, wy = axis(x.shape[0], size[0])
    x0, x1, wx = axis(x.shape[1], size[1])
    rows = x[y0] * (1 - wy)[:, None] + x[y1] * wy[:, None]
    return (rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(np.float32)


def resize_probability(prob: Any, size: tuple[int, int]) -> Any:
    """Up-sample probabilities ``(B, K, h, w)`` to ``(B, K, H, W)`` (bilinear) before thresholding.

    Args:
        prob: float tensor ``(B, K, h, w)``, values in [0, 1] (they stay in [0, 1]).
        size: output ``(H, W)`` in px.
    """
    import torch.nn.functional as F

    return F.interpolate(prob, size=size, mode="bilinear", align_corners=False)


def lung_crop_box(mask2d: np.ndarray, margin: float = 0.08) -> tuple[slice, slice]:
    """Row and column slices of the bounding box of a 2D mask (e.g. the lungs projected over all slices),
    grown by ``margin`` of its size + 2 px on each side and clipped to the image: the framing of
    COVID-SemiSeg slices, used for every CT slice the lesion model sees (training and inference).

    Raises:
        ValueError: the mask is empty.
    """
    if not np.any(mask2d):
        raise ValueError("lung_crop_box: empty mask")
    r0, c0, r1, c1 = mask_to_box(mask2d)  # rows r0..r1 - 1, columns c0..c1 - 1
    h, w = mask2d.shape
    my, mx = int((r1 - 1 - r0) * margin) + 2, int((c1 - 1 - c0) * margin) + 2
    return slice(max(0, r0 - my), min(h, r1 + my)), slice(max(0, c0 - mx), min(w, c1 + mx))
