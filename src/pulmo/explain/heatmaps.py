"""Heatmap normalisation and where a heatmap's weight lies (NumPy only: shared by the PyTorch Grad-CAM of
:mod:`pulmo.explain.gradcam` and the closed-form maps of the ONNX backend, :mod:`pulmo.runtime.cam`)."""

from __future__ import annotations

import numpy as np


def normalise_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """A class-activation map ``(H, W)`` clipped at 0 and divided by its maximum over the whole image:
    float32 in [0, 1] (all zeros for an all-zero map)."""
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
    top = heat.max() if heat.size else 0.0
    return (heat / top if top > 0 else heat).astype(np.float32)


def energy_in_mask(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The fraction of a heatmap's weight (its sum, negative values clipped to 0) inside ``mask`` (same shape
    ``(H, W)``): in [0, 1], NaN for an all-zero map. For the lungs this is ``heatmap_energy_in_lungs``; it would
    be about the lungs' share of the image (typically 0.25-0.35) for a map that ignores anatomy."""
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
    total = heat.sum()
    return float(heat[np.asarray(mask, dtype=bool)].sum() / total) if total > 0 else float("nan")
