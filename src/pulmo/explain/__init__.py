"""Explanations: Grad-CAM family (MONAI), whole-image normalisation and in-lung weight."""

from pulmo.explain.gradcam import class_activation_map, energy_in_mask, normalise_heatmap

__all__ = ["class_activation_map", "energy_in_mask", "normalise_heatmap"]
