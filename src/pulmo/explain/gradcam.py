"""Grad-CAM and Grad-CAM++ heatmaps restricted to the lungs.

The class-activation maps come from MONAI (``monai.visualize.GradCAM`` / ``GradCAMpp``; Selvaraju et al.
2017, Chattopadhay et al. 2018); this module only adds the chest-specific part: the map is restricted to
and re-normalised within the lung mask, and the share of the map's energy that falls inside the lungs
is measured (a localisation check: a classifier looking at labels or the body outline scores low).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.visualize import GradCAM, GradCAMpp
from torch import nn

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMpp}


def class_activation_map(model: nn.Module, target_layer: str, x: torch.Tensor, class_index: int,
                         method: str = "gradcam") -> np.ndarray:
    """Heatmap ``(H, W)`` in [0, 1] for ``class_index`` of input ``x`` ``(1, C, H, W)``.

    Raises:
        ValueError: unknown ``method`` (``gradcam`` or ``gradcam++``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; expected one of {sorted(METHODS)}")
    cam = METHODS[method](nn_module=model, target_layers=target_layer)
    with torch.enable_grad():
        heat = cam(x, class_idx=class_index)
    return heat[0, 0].detach().float().numpy()


def restrict_to_lungs(heatmap: np.ndarray, lungs: np.ndarray) -> tuple[np.ndarray, float]:
    """Restrict a heatmap to the lung mask (same shape ``(H, W)``) and normalise it to [0, 1] there.

    Returns:
        ``(restricted, energy_in_lungs)``: the restricted map, and the fraction of the original map's
        sum that lies inside the lungs (in [0, 1]; NaN for an all-zero map).
    """
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
    inside = np.asarray(lungs, dtype=bool)
    total = heat.sum()
    energy = float(heat[inside].sum() / total) if total > 0 else float("nan")
    out = np.where(inside, heat, 0.0)
    if out.max() > out.min():
        lo = out[inside].min() if inside.any() else 0.0
        out = np.where(inside, (out - lo) / (out.max() - lo + 1e-12), 0.0)
    return out.astype(np.float32), energy
