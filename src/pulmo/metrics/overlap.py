"""Overlap metrics for binary masks: Dice and IoU (Jaccard). Pure numpy."""

from __future__ import annotations

import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray, empty: float = 1.0) -> float:
    """Dice similarity coefficient 2|P∩R| / (|P| + |R|) of two binary masks of equal shape.

    Returns ``empty`` (default 1.0) when both masks are empty. Raises ValueError on a shape mismatch.

    Args:
        prediction: array of any shape (2D ``(H, W)`` or 3D ``(Z, Y, X)``); a value ``> 0`` is foreground.
        reference: array of the same shape; a value ``> 0`` is foreground.
        empty: the value when both masks are empty.

    Returns:
        Dice in [0, 1] (or ``empty``).

    Raises:
        ValueError: the shapes differ.
    """
    p, r = _pair(prediction, reference)
    denom = p.sum() + r.sum()
    return float(empty) if denom == 0 else float(2.0 * np.logical_and(p, r).sum() / denom)


def iou(prediction: np.ndarray, reference: np.ndarray, empty: float = 1.0) -> float:
    """Intersection over union |P∩R| / |P∪R|; ``empty`` when both masks are empty.

    Args:
        prediction: array of any shape; a value ``> 0`` is foreground.
        reference: array of the same shape; a value ``> 0`` is foreground.
        empty: the value when both masks are empty.

    Returns:
        IoU (Jaccard index) in [0, 1] (or ``empty``).

    Raises:
        ValueError: the shapes differ.
    """
    p, r = _pair(prediction, reference)
    union = np.logical_or(p, r).sum()
    return float(empty) if union == 0 else float(np.logical_and(p, r).sum() / union)


def _pair(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(prediction) > 0, np.asarray(reference) > 0
    if p.shape != r.shape:
        raise ValueError(f"mask shapes differ: prediction {p.shape}, reference {r.shape}")
    return p, r
