"""Classification metrics (pure numpy): one-vs-rest per class, ROC AUC (Mann-Whitney U), macro averages,
confusion matrix, and percentile-bootstrap 95 % confidence intervals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pulmo.metrics.confusion import binary_metrics, confusion_counts


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``positive`` (ties count one half); NaN when a
    class is absent.

    Args:
        scores: ``(N,)`` real scores, higher = more likely positive (any range).
        positive: ``(N,)`` truth, cast to bool.

    Returns:
        AUC in [0, 1] (the Mann-Whitney U statistic over ``n_pos * n_neg``), or NaN.
    """
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # imported when used: scipy.stats takes ~1 s to import

    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_report(y_true: Sequence[int], probabilities: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Metrics of a multi-class prediction (argmax of ``probabilities`` ``(N, K)`` over all K labels).

    Per-class metrics cover the labels present in ``y_true``; ``macro_f1`` averages them.

    Args:
        y_true: ``(N,)`` true class indices in ``0..K-1``.
        probabilities: ``(N, K)`` class scores (probabilities in [0, 1]; only their argmax and per-class
            ranking are used).
        labels: the K class names, in column order.

    Returns:
        ``{"n", "labels", "accuracy", "macro_f1", "per_class": {label: {"n", "precision", "sensitivity",
        "specificity", "f1", "auc"}}, "confusion_matrix"}`` (rows = truth, columns = prediction, all labels).
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probabilities, dtype=np.float64)
    pred = p.argmax(axis=1)
    k = len(labels)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y, pred), 1)
    per_class = {}
    for c in sorted(set(y.tolist())):
        m = binary_metrics(confusion_counts(pred == c, y == c))
        per_class[labels[c]] = {"n": int((y == c).sum()), "precision": m["precision"], "sensitivity": m["sensitivity"],
                                "specificity": m["specificity"], "f1": m["f1"], "auc": roc_auc(p[:, c], y == c)}
    f1s = [v["f1"] for v in per_class.values()]
    return {"n": len(y), "labels": [labels[c] for c in sorted(set(y.tolist()))],
            "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
            "macro_f1": float(np.nanmean(f1s)) if f1s else float("nan"),
            "per_class": per_class, "confusion_matrix": cm.tolist()}


def bootstrap_ci(metric: Callable[[np.ndarray], float], n: int, n_resamples: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric(indices)`` over ``n`` samples drawn with replacement.

    Args:
        metric: maps an ``(n,)`` int array of resampled indices to a float; non-finite values are skipped.
        n: number of samples.
        n_resamples: bootstrap resamples.
        seed: numpy generator seed (the same seed gives the same interval).
        alpha: 1 - confidence level (0.05: a 95 % interval).

    Returns:
        ``(lower, upper)``: the ``alpha / 2`` and ``1 - alpha / 2`` percentiles, or ``(nan, nan)`` when no
        resample gave a finite value.
    """
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        v = metric(rng.integers(0, n, n))
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def binary_report(positive_true: np.ndarray, positive_score: np.ndarray, threshold: float = 0.5,
                  n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Binary metrics (accuracy, precision, sensitivity, specificity, F1, AUC), each with a bootstrap 95 % CI.

    Args:
        positive_true: ``(N,)`` truth, cast to bool.
        positive_score: ``(N,)`` scores (probabilities in [0, 1]); positive when ``>= threshold``.
        threshold: the operating threshold.
        n_resamples, seed: of :func:`bootstrap_ci`.

    Returns:
        ``{"n", "n_positive", "threshold", <metric>, "<metric>_ci95": [lower, upper], ...}`` for the six
        metrics; an undefined ratio is NaN.
    """
    t = np.asarray(positive_true, dtype=bool)
    s = np.asarray(positive_score, dtype=np.float64)

    def compute(idx: np.ndarray) -> dict[str, float]:
        m = binary_metrics(confusion_counts(s[idx] >= threshold, t[idx]))
        m["auc"] = roc_auc(s[idx], t[idx])
        return m

    point = compute(np.arange(len(t)))
    out: dict[str, Any] = {"n": len(t), "n_positive": int(t.sum()), "threshold": threshold}
    for key, value in point.items():
        out[key] = value
        out[f"{key}_ci95"] = list(bootstrap_ci(lambda idx, k=key: compute(idx)[k], len(t), n_resamples, seed))
    return out
