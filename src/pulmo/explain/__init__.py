"""Explanations: Grad-CAM family (MONAI) and lung-restricted heatmaps."""

from pulmo.explain.gradcam import class_activation_map, restrict_to_lungs

__all__ = ["class_activation_map", "restrict_to_lungs"]
