"""Metrics as pure functions on arrays."""

from pulmo.metrics.classification import binary_report, bootstrap_ci, classification_report, roc_auc
from pulmo.metrics.confusion import binary_metrics, confusion_counts
from pulmo.metrics.overlap import dice, iou

__all__ = ["binary_metrics", "binary_report", "bootstrap_ci", "classification_report", "confusion_counts", "dice",
           "iou", "roc_auc"]
