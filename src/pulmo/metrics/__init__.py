"""Metrics as pure functions on arrays."""

from pulmo.metrics.overlap import dice, iou

__all__ = ["dice", "iou"]
