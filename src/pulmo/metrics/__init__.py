"""Metrics as pure functions on arrays."""

from typing import Any

from pulmo.metrics.classification import binary_report, bootstrap_ci, classification_report, roc_auc
from pulmo.metrics.confusion import binary_metrics, confusion_counts
from pulmo.metrics.overlap import dice, iou


def round_floats(m: Any, digits: int = 4) -> Any:
    """``m`` with every float rounded to ``digits`` decimals, at any depth of dicts, lists and tuples (for
    cards and metric files)."""
    if isinstance(m, float):
        return round(m, digits)
    if isinstance(m, dict):
        return {k: round_floats(v, digits) for k, v in m.items()}
    if isinstance(m, (list, tuple)):
        return [round_floats(v, digits) for v in m]
    return m


__all__ = ["binary_metrics", "binary_report", "bootstrap_ci", "classification_report", "confusion_counts", "dice",
           "iou", "roc_auc", "round_floats"]
