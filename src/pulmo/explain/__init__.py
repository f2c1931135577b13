"""Explanations: Grad-CAM family (MONAI), whole-image normalisation and in-lung weight.

``class_activation_map`` (PyTorch + MONAI) is imported on first use, so the NumPy helpers stay torch-free.
"""

from typing import Any

from pulmo.explain.heatmaps import energy_in_mask, normalise_heatmap


def __getattr__(name: str) -> Any:
    if name == "class_activation_map":
        from pulmo.explain.gradcam import class_activation_map

        return class_activation_map
    raise AttributeError(f"module 'pulmo.explain' has no attribute {name!r}")


__all__ = ["class_activation_map", "energy_in_mask", "normalise_heatmap"]
