"""Intensity transforms: chest X-ray normalisation and CT HU windows."""

from __future__ import annotations

import numpy as np


def normalize_cxr(pixels: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Robust min-max normalisation of a chest X-ray to [0, 1] (seed 1 uses plain min-max).

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
