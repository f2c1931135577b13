"""Intensity transforms: chest X-ray normalisation and CT HU windows."""

from __future__ import annotations

import numpy as np


def normalize_cxr(pixels: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Robust min-max normalisation of a chest X-ray to [0, 1] (the RSNA pneumonia report's U-Net uses
    plain min-max).

    The percentiles (instead of min/max) keep burnt-in labels and detector borders from compressing the
    useful range, which matters for 12-16-bit DICOM.

    Args:
        pixels: ``(H, W)`` any real dtype.
        low_percentile, high_percentile: values mapped to 0 and 1, in percent.

    Returns:
        float32 ``(H, W)`` in [0, 1]. A constant image maps to zeros.
    """
    arr = np.asarray(pixels, dtype=np.float32)
    lo, hi = np.percentile(arr, [low_percentile, high_percentile])
    if hi - lo < 1e-6:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def window_hu(hu: np.ndarray, center: float = -600.0, width: float = 1500.0) -> np.ndarray:
    """Map HU through a window (default: lung window C -600 / W 1500) to float32 [0, 1]."""
    lo = center - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / width, 0.0, 1.0)


#: Side of the square input of the input-gate model (:mod:`pulmo.gate`).
GATE_SIZE = 128


def gate_input(pixels: np.ndarray, size: int = GATE_SIZE) -> np.ndarray:
    """The input of the "is this a frontal chest radiograph / an axial CT slice?" gate model.

    The image is sub-sampled by striding to at most ``4 * size`` pixels a side (the gate looks at the
    layout of the picture, not at fine detail, and this bounds the cost on a 50 Mpx image), normalised with
    :func:`normalize_cxr` (0.5-99.5 percentiles) and resized, aspect ratio not kept, with Pillow's
    antialiasing bilinear filter.

    Args:
        pixels: ``(H, W)`` grey levels of any real dtype (an X-ray as read, a CT slice in HU or windowed).
        size: output side in pixels.

    Returns:
        float32 ``(size, size)`` in [0, 1]; zeros for a constant image. Non-finite values count as 0.
    """
    from PIL import Image

    arr = np.asarray(pixels)
    step = max(1, int(np.ceil(max(arr.shape) / (4 * size))))
    arr = np.nan_to_num(arr[::step, ::step].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norm = normalize_cxr(arr)
    out = Image.fromarray(norm).resize((size, size), Image.BILINEAR, reducing_gap=None)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)
