"""Metrics as pure functions on arrays."""

from pulmo.metrics.confusion import binary_metrics, confusion_counts
from pulmo.metrics.overlap import dice, iou

__all__ = ["binary_metrics", "confusion_counts", "dice", "iou"]
