"""Grad-CAM and Grad-CAM++ heatmaps and where their weight lies.

The class-activation maps come from MONAI (``monai.visualize.GradCAM`` / ``GradCAMpp``; Selvaraju et al.
2017, Chattopadhay et al. 2018); this module only adds the chest-specific part: the map is normalised over
the whole image (never re-stretched inside the lungs, which would make a map that looks at the labels or the
body outline seem focused), and the share of the map's weight that falls inside the lungs is measured (a
localisation check: a classifier looking at labels or borders scores low).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.visualize import GradCAM, GradCAMpp
from torch import nn

from pulmo.explain.heatmaps import energy_in_mask, normalise_heatmap

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMpp}


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


def class_activation_map(model: nn.Module, target_layer: str, x: torch.Tensor, class_index: int,
                         method: str = "gradcam") -> np.ndarray:
    """Heatmap ``(H, W)`` >= 0 for ``class_index`` of input ``x`` ``(1, C, H, W)``: the class-activation map at the
    input size, high where the evidence for the class is (not rescaled; :func:`normalise_heatmap` divides by the
    maximum).

    Raises:
        ValueError: unknown ``method`` (``gradcam`` or ``gradcam++``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; expected one of {sorted(METHODS)}")
    # MONAI's default post-processing (``default_normalizer``) maps the map's (min, max) to (1, 0): it *inverts*
    # the map (for its own colour convention). pulmo keeps the map as computed, the ReLU of the weighted
    # activations upsampled to the input (bilinear), and normalises it itself (:func:`normalise_heatmap`).
    cam = METHODS[method](nn_module=model, target_layers=target_layer, postprocessing=_unchanged)
    with torch.enable_grad():
        heat = cam(x, class_idx=class_index)
    return heat[0, 0].detach().float().numpy()


__all__ = ["METHODS", "class_activation_map", "energy_in_mask", "normalise_heatmap"]
