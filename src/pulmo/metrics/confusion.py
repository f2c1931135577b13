"""Confusion-based metrics with the standard formulas (the Res-Attention U-Net COVID-19 CT report printed its
Sp and F1 formulas wrongly):
accuracy (TP+TN)/N, precision TP/(TP+FP), sensitivity TP/(TP+FN), specificity TN/(TN+FP),
F1 = 2 P S / (P + S) (equal to Dice for binary masks). Pure numpy."""

from __future__ import annotations

import numpy as np


def confusion_counts(prediction: np.ndarray, reference: np.ndarray) -> dict[str, int]:
    """Pixel counts ``{"tp", "fp", "tn", "fn"}`` of two binary arrays of equal shape.

    Args:
        prediction: Array of any shape; a value ``> 0`` is positive.
        reference: Array of the same shape; a value ``> 0`` is positive.

    Returns:
        Integer counts ``{"tp", "fp", "fn", "tn"}`` summing to ``prediction.size``.

    Raises:
        ValueError: The two shapes differ.
    """
    p, r = np.asarray(prediction) > 0, np.asarray(reference) > 0
    if p.shape != r.shape:
        raise ValueError(f"shapes differ: prediction {p.shape}, reference {r.shape}")
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p & ~r))
    fn = int(np.count_nonzero(~p & r))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(p.size - tp - fp - fn)}


def binary_metrics(counts: dict[str, int]) -> dict[str, float]:
    """``accuracy, precision, sensitivity, specificity, f1`` from counts; an undefined ratio (0/0) is NaN.

    Args:
        counts: ``{"tp", "fp", "tn", "fn"}`` as from :func:`confusion_counts`.

    Returns:
        The five ratios, each in [0, 1] or NaN.

    Raises:
        KeyError: a count is missing.
    """
    tp, fp, tn, fn = (counts[k] for k in ("tp", "fp", "tn", "fn"))

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b else float("nan")

    precision, sensitivity = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return {"accuracy": ratio(tp + tn, tp + tn + fp + fn), "precision": precision, "sensitivity": sensitivity,
            "specificity": ratio(tn, tn + fp), "f1": f1}
