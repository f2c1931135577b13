"""Calibration of predicted probabilities.

Expected calibration error (ECE) as defined by Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017: the top-label confidence is binned into equal-width bins and the gap between accuracy and mean
confidence is averaged over bins, weighted by the share of samples in each. Temperature scaling (the same
paper): one scalar T > 0 dividing the logits, fitted by minimising the validation negative log-likelihood.
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


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` over the last axis, float64, numerically stable.

    Args:
        logits: ``(N, C)`` (or any ``(..., C)``).
        temperature: T > 0.

    Returns:
        Probabilities of the same shape, rows summing to 1.
    """
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (LBFGS on log T, PyTorch).

    Args:
        logits: ``(N, C)`` validation logits.
        labels: ``(N,)`` true class indices.

    Returns:
        T (1.0 means the logits were already calibrated on this set).
    """
    import torch
    import torch.nn.functional as F

    lg, y = torch.from_numpy(np.asarray(logits)).double(), torch.from_numpy(np.asarray(labels)).long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lg / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().item())


def reliability_bins(prob: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """The reliability diagram behind :func:`expected_calibration_error` (Guo et al. 2017): per non-empty
    equal-width top-label confidence bin, ``{"lower", "upper", "n", "confidence" (mean), "accuracy"}``.

    Raises:
        ValueError: shapes that do not match.
    """
    prob, labels = np.asarray(prob, dtype=np.float64), np.asarray(labels)
    if prob.ndim != 2 or labels.shape != (prob.shape[0],):
        raise ValueError(f"prob must be (N, C) and labels (N,), got {prob.shape} and {labels.shape}")
    confidence = prob.max(axis=1)
    correct = prob.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    return [{"lower": b / n_bins, "upper": (b + 1) / n_bins, "n": int((bins == b).sum()),
             "confidence": float(confidence[bins == b].mean()), "accuracy": float(correct[bins == b].mean())}
            for b in range(n_bins) if (bins == b).any()]
