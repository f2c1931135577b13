"""Intensity, geometry and augmentation transforms (numpy / torch; MONAI for augmentation)."""

from pulmo.transforms.classifier import classifier_input, lung_field_box
from pulmo.transforms.geometry import (
    lung_crop_box,
    resize_bilinear,
    resize_image,
    resize_mask,
    resize_probability,
)
from pulmo.transforms.intensity import GATE_SIZE, gate_input, normalize_cxr, window_hu

__all__ = ["GATE_SIZE", "classifier_input", "gate_input", "lung_crop_box", "lung_field_box", "normalize_cxr", "resize_bilinear", "resize_image", "resize_mask", "resize_probability", "window_hu"]
