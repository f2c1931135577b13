"""Calibration of predicted probabilities.

Expected calibration error (ECE) as defined by Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017: the top-label confidence is binned into equal-width bins and the gap between accuracy and mean
confidence is averaged over bins, weighted by the share of samples in each.
"""

from __future__ import annotations

import numpy as np


def expected_calibration_error(prob: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error.

    Args:
        prob: ``(N, C)`` probabilities (rows sum to 1).
        labels: ``(N,)`` true class indices in ``[0, C)``.
        n_bins: equal-width confidence bins on [0, 1] (15 as in Guo et al.).

    Returns:
        ECE in [0, 1]; 0.0 for an empty input.

    Raises:
        ValueError: shapes that do not match.
    """
    prob, labels = np.asarray(prob, dtype=np.float64), np.asarray(labels)
    if prob.ndim != 2 or labels.shape != (prob.shape[0],):
        raise ValueError(f"prob must be (N, C) and labels (N,), got {prob.shape} and {labels.shape}")
    if prob.shape[0] == 0:
        return 0.0
    confidence = prob.max(axis=1)
    correct = prob.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)
