"""Detection metrics on boxes: IoU, AP at an IoU threshold (per class, mean, class-agnostic), RSNA score.

Pure numpy. Boxes are ``xyxy`` in pixels of the original image, continuous coordinates (area =
``(x2 - x1) * (y2 - y1)``, no ``+ 1``, as in COCO and torchvision). The IoU comes from
:func:`pulmo.geometry.boxes.box_iou` (float64; :mod:`pulmo.geometry` sits below metrics, imports nothing of ours
and neither torch nor MONAI at import time, so metrics stays pure numpy).

Inputs, one entry per image and in the same image order:

* ``predictions[i]``: a mapping with ``"boxes"`` (N, 4) xyxy px, ``"scores"`` (N,) and ``"labels"`` (N,)
  (str or int);
* ``ground_truths[i]``: a mapping with ``"boxes"`` (or ``"boxes_xyxy"``, so dataset records can be passed
  as they are) (M, 4) xyxy px and ``"labels"`` (M,).

Average precision (AP) follows MS-COCO (Lin et al. 2014; ``pycocotools`` ``COCOeval``): detections sorted
by score (stable), each matched greedily to the unmatched ground-truth box of the same class with the
highest IoU >= the threshold (on a tie of IoUs the last such box in ground-truth order, as pycocotools'
``evaluateImg``), precision made monotone, then sampled at the 101 recall points 0, 0.01, ..., 1
(``interpolation="coco101"``, the default, equal to pycocotools' AP at that single IoU for ``maxDets`` larger
than the detections per image: no per-image cap is applied here, no crowd / area ranges). The PASCAL VOC
2010+ all-point AP (area under the monotone precision-recall curve) is ``interpolation="voc"``.

The RSNA Pneumonia Detection Challenge score (RSNA / Kaggle 2018) is :func:`rsna_score`; the ChestX-Det10 metric
(recall at 0.05, 0.1 and 0.2 false positives per image, averaged) is :func:`average_recall_at_fp`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from pulmo.geometry.boxes import box_iou as geometry_box_iou
from pulmo.metrics.classification import bootstrap_ci, roc_auc

#: IoU thresholds of the RSNA Pneumonia Detection Challenge: 0.40, 0.45, ..., 0.75.
RSNA_IOU_THRESHOLDS = tuple(round(0.40 + 0.05 * i, 2) for i in range(8))
#: False positives per image at which ChestX-Det10 reads the recall (its ``eval.py``: ``avgFP``).
CHESTX_DET10_FP_RATES = (0.05, 0.1, 0.2)
#: Recall points of the COCO 101-point interpolated AP.
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
INTERPOLATIONS = ("coco101", "voc")


def _as_boxes(boxes: Any, what: str) -> np.ndarray:
    b = np.asarray(boxes if boxes is not None else np.zeros((0, 4)), dtype=np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{what}: boxes must have shape (N, 4) (xyxy px), got {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"{what}: boxes contain NaN or infinite values")
    return b


def box_iou(boxes1: Any, boxes2: Any) -> np.ndarray:
    """Intersection over union of every pair of boxes (:func:`pulmo.geometry.boxes.box_iou`, float64, after
    checking that the boxes are 2-D and finite).

    Args:
        boxes1: (N, 4) xyxy px.
        boxes2: (M, 4) xyxy px.

    Returns:
        float64 (N, M) in [0, 1]; 0 where the union is empty (degenerate boxes).

    Raises:
        ValueError: an input is not (K, 4) or not finite.
    """
    return geometry_box_iou(_as_boxes(boxes1, "boxes1"), _as_boxes(boxes2, "boxes2"))


# ---------------------------------------------------------------------------------------------- inputs

def _labels(labels: Any) -> list:
    """Labels as plain Python values (numpy / torch scalars become int / str, so they hash by value)."""
    if labels is None:
        return []
    return list(labels) if isinstance(labels, (list, tuple)) else np.asarray(labels).reshape(-1).tolist()


def _label_array(labels: Any) -> np.ndarray:
    values = _labels(labels)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _image(pred: Mapping[str, Any] | None, gt: Mapping[str, Any], i: int) -> tuple:
    gt_boxes = _as_boxes(gt.get("boxes", gt.get("boxes_xyxy")), f"ground truth of image {i}")
    gt_labels = _label_array(gt.get("labels"))
    if len(gt_labels) != len(gt_boxes):
        raise ValueError(f"ground truth of image {i}: {len(gt_boxes)} boxes but {len(gt_labels)} labels")
    pred = pred or {}
    boxes = _as_boxes(pred.get("boxes", pred.get("boxes_xyxy")), f"predictions of image {i}")
    scores = np.asarray(pred.get("scores", np.zeros(0)), dtype=np.float64).reshape(-1)
    labels = _label_array(pred.get("labels"))
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(f"predictions of image {i}: {len(boxes)} boxes, {len(scores)} scores and "
                         f"{len(labels)} labels; expected equal counts")
    return boxes, scores, labels, gt_boxes, gt_labels


def _images(predictions: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]]) -> list[tuple]:
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction entries but {len(ground_truths)} ground-truth entries; "
                         f"expected one of each per image, in the same order")
    return [_image(p, g, i) for i, (p, g) in enumerate(zip(predictions, ground_truths, strict=True))]


def _select(labels: np.ndarray, label: Hashable | None) -> np.ndarray:
    if label is None:
        return np.ones(len(labels), bool)
    return np.array([x == label for x in labels], dtype=bool)


def ground_truth_labels(ground_truths: Sequence[Mapping[str, Any]]) -> list:
    """The classes present in the ground truth, sorted (by ``str`` when labels mix types)."""
    labels = {x for g in ground_truths for x in _labels(g.get("labels"))}
    try:
        return sorted(labels)
    except TypeError:
        return sorted(labels, key=str)


# ---------------------------------------------------------------------------------------------- AP

def _match_image(boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """COCO greedy matching of one image and class: (scores sorted descending, true-positive flags).

    Each detection, in decreasing score order (stable), takes the unmatched ground-truth box of highest IoU
    >= the threshold; among boxes of equal IoU the **last** in ground-truth order wins, as pycocotools
    ``COCOeval.evaluateImg`` (its loop replaces the best match on ``iou >= best``).
    """
    order = np.argsort(-scores, kind="mergesort")
    scores = scores[order]
    tp = np.zeros(len(order), bool)
    if len(order) and len(gt_boxes):
        iou = box_iou(boxes[order], gt_boxes)
        free = np.ones(len(gt_boxes), bool)
        threshold = min(iou_threshold, 1 - 1e-10)  # as pycocotools
        last = len(gt_boxes) - 1
        for d in range(len(order)):
            candidates = np.where(free, iou[d], -1.0)
            g = last - int(np.argmax(candidates[::-1]))  # the last of equal IoUs, as pycocotools
            if candidates[g] >= threshold:
                tp[d] = True
                free[g] = False
    return scores, tp


def _ap_from_matches(scores: np.ndarray, tp: np.ndarray, n_positive: int, interpolation: str) -> float:
    if n_positive == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[order]
    tp_sum = np.cumsum(tp, dtype=np.float64)
    fp_sum = np.cumsum(~tp, dtype=np.float64)
    recall = tp_sum / n_positive
    precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
    if interpolation == "coco101":
        precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
        sampled = np.zeros(len(COCO_RECALL_POINTS))
        ok = idx < len(precision)
        sampled[ok] = precision[idx[ok]]
        return float(sampled.mean())
    # VOC all-point: area under the monotone precision envelope
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def average_precision(predictions: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]],
                      label: Hashable | None = None, iou_threshold: float = 0.5,
                      interpolation: str = "coco101") -> float:
    """Average precision of one class (or of all boxes, class-agnostic) at one IoU threshold.

    Args:
        predictions: per image ``{"boxes": (N, 4) xyxy px, "scores": (N,), "labels": (N,)}``.
        ground_truths: per image ``{"boxes" or "boxes_xyxy": (M, 4) xyxy px, "labels": (M,)}``.
        label: the class; ``None`` pools every box regardless of its label (class-agnostic AP: a detection
            may match a ground-truth box of any class).
        iou_threshold: a detection is a true positive when its IoU with an unmatched ground-truth box is
            >= this (0.5 = AP50 of COCO, the PASCAL VOC criterion).
        interpolation: ``"coco101"`` (MS-COCO 101-recall-point AP, as pycocotools) or ``"voc"`` (PASCAL VOC
            2010+ all-point AP).

    Returns:
        AP in [0, 1]; NaN when the ground truth has no box of ``label``.

    Raises:
        ValueError: mismatched lengths or shapes, or an unknown ``interpolation``.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {INTERPOLATIONS}")
    all_scores, all_tp, n_positive = [], [], 0
    for boxes, scores, labels, gt_boxes, gt_labels in _images(predictions, ground_truths):
        keep, keep_gt = _select(labels, label), _select(gt_labels, label)
        s, tp = _match_image(boxes[keep], scores[keep], gt_boxes[keep_gt], iou_threshold)
        all_scores.append(s)
        all_tp.append(tp)
        n_positive += int(keep_gt.sum())
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0, bool)
    return _ap_from_matches(scores, tp, n_positive, interpolation)


def average_precision_per_class(predictions: Sequence[Mapping[str, Any]],
                                ground_truths: Sequence[Mapping[str, Any]], iou_threshold: float = 0.5,
                                interpolation: str = "coco101") -> dict:
    """AP of every class present in the ground truth (see :func:`average_precision`).

    Predicted classes absent from the ground truth get no entry (as in COCO, where such categories are
    skipped). Returns ``{label: AP}`` in the order of :func:`ground_truth_labels`.

    Raises:
        ValueError: as :func:`average_precision`.
    """
    return {c: average_precision(predictions, ground_truths, c, iou_threshold, interpolation)
            for c in ground_truth_labels(ground_truths)}


def mean_average_precision(predictions: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]],
                           iou_threshold: float = 0.5, interpolation: str = "coco101") -> float:
    """mAP: the mean of :func:`average_precision_per_class` over the classes present in the ground truth
    (NaN when the ground truth has no box).

    Raises:
        ValueError: as :func:`average_precision`.
    """
    ap = average_precision_per_class(predictions, ground_truths, iou_threshold, interpolation)
    return float(np.mean(list(ap.values()))) if ap else float("nan")


# ---------------------------------------------------------------------------------------------- RSNA

def rsna_image_score(boxes: Any, scores: Any, gt_boxes: Any,
                     thresholds: Sequence[float] = RSNA_IOU_THRESHOLDS) -> float | None:
    """RSNA Pneumonia Detection Challenge score of one image.

    At each IoU threshold t, predictions are taken in descending score order and each is matched to the
    unmatched ground-truth box of highest IoU when that IoU is > t (strictly, as the challenge states "IoU
    greater than the threshold"); the image scores TP / (TP + FP + FN) at t, averaged over the thresholds.

    Args:
        boxes: (N, 4) predicted boxes, xyxy px (every prediction counts: apply the score threshold first).
        scores: (N,) confidences (only their order matters).
        gt_boxes: (M, 4) ground-truth boxes, xyxy px.
        thresholds: IoU thresholds, default 0.40, 0.45, ..., 0.75.

    Returns:
        The score in [0, 1], or ``None`` when the image has neither ground truth nor predictions (such
        images are left out of the mean); 0 when exactly one of the two is empty.

    Raises:
        ValueError: shapes do not fit.
    """
    b, g = _as_boxes(boxes, "boxes"), _as_boxes(gt_boxes, "gt_boxes")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    if len(b) == 0 and len(g) == 0:
        return None
    if len(b) == 0 or len(g) == 0:
        return 0.0
    iou = box_iou(b[np.argsort(-s, kind="mergesort")], g)
    values = []
    for t in thresholds:
        free = np.ones(len(g), bool)
        tp = 0
        for d in range(len(b)):
            candidates = np.where(free, iou[d], -1.0)
            j = int(np.argmax(candidates))
            if candidates[j] > t:
                free[j] = False
                tp += 1
        fp, fn = len(b) - tp, len(g) - tp
        values.append(tp / (tp + fp + fn))
    return float(np.mean(values))


def rsna_score(predictions: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]],
               label: Hashable | None = None, thresholds: Sequence[float] = RSNA_IOU_THRESHOLDS) -> float:
    """RSNA Pneumonia Detection Challenge metric (RSNA / Kaggle 2018): the mean over images of
    :func:`rsna_image_score` (mean over IoU 0.40-0.75 of TP / (TP + FP + FN), greedy matching by score).

    Images with no ground-truth box and no prediction are skipped; an image with predictions but no ground
    truth scores 0, as does one with ground truth but no predictions.

    Args:
        predictions: per image ``{"boxes", "scores", "labels"}`` (see the module docstring); every
            prediction counts, so apply the working score threshold first.
        ground_truths: per image ``{"boxes" or "boxes_xyxy", "labels"}``.
        label: score only this class; ``None`` (default) ignores labels, as the single-class challenge did.
        thresholds: IoU thresholds, default 0.40, 0.45, ..., 0.75.

    Returns:
        The score in [0, 1]; NaN when every image was skipped.

    Raises:
        ValueError: mismatched lengths or shapes.
    """
    values = []
    for boxes, scores, labels, gt_boxes, gt_labels in _images(predictions, ground_truths):
        keep, keep_gt = _select(labels, label), _select(gt_labels, label)
        v = rsna_image_score(boxes[keep], scores[keep], gt_boxes[keep_gt], thresholds)
        if v is not None:
            values.append(v)
    return float(np.mean(values)) if values else float("nan")


# ---------------------------------------------------------------------------------------------- ChestX-Det10

def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def _det10_match_image(boxes: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """ChestX-Det10 matching of one image and class: (scores sorted descending, true-positive flags).

    Each detection, in decreasing score order (stable), looks only at the ground-truth box of highest IoU (the
    first of equal IoUs): a true positive when that IoU is >= the threshold and the box is not yet hit; else a
    false positive, also when the best box is already hit and another box would qualify (``eval.py`` ``FROC``).
    """
    order = np.argsort(-scores, kind="mergesort")
    tp = np.zeros(len(order), bool)
    if len(order) and len(gt_boxes):
        iou = box_iou(boxes[order], gt_boxes)
        hit = np.zeros(len(gt_boxes), bool)
        for d in range(len(order)):
            g = int(np.argmax(iou[d]))
            if iou[d, g] >= iou_threshold and not hit[g]:
                tp[d] = hit[g] = True
    return scores[order], tp


def recall_at_fp_rates(predictions: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]],
                       label: Hashable | None = None, fp_rates: Sequence[float] = CHESTX_DET10_FP_RATES,
                       iou_threshold: float = 0.5) -> dict[str, float]:
    """Recall (sensitivity) of one class at fixed false positives per image: points of the FROC curve.

    All detections of the class, over all images, are ranked by score; walking down the ranking, each is a true
    or false positive (ChestX-Det10 matching: a detection counts as a true positive only for the ground-truth box
    of its image and class with the highest IoU, when that IoU is >= ``iou_threshold`` and the box is not yet
    hit; a duplicate, a miss or a detection on an image without such a box is a false positive). The recall at
    rate ``f`` is the recall reached before the false positives exceed ``f * n_images``, i.e. at the lowest
    score threshold with at most ``floor(f * n_images)`` false positives (n_images = every entry, images
    without boxes included); past the last detection it stays at the final recall.

    Args:
        predictions: per image ``{"boxes": (N, 4) xyxy px, "scores": (N,), "labels": (N,)}`` (every candidate:
            the curve sweeps the score threshold).
        ground_truths: per image ``{"boxes" or "boxes_xyxy": (M, 4) xyxy px, "labels": (M,)}``.
        label: the class; ``None`` ignores labels (class-agnostic).
        fp_rates: false positives per image, >= 0 (default 0.05, 0.1, 0.2).
        iou_threshold: minimum IoU of a true positive (0.5 as ChestX-Det10).

    Returns:
        ``{"0.05": recall, ...}`` (keys ``f"{rate:g}"``), each in [0, 1]; NaN when the ground truth has no box of
        ``label``.

    Raises:
        ValueError: mismatched lengths or shapes, or a negative rate.
    """
    if any(f < 0 for f in fp_rates):
        raise ValueError(f"fp_rates must be >= 0, got {list(fp_rates)}")
    images = _images(predictions, ground_truths)
    all_scores, all_tp, n_positive = [], [], 0
    for boxes, scores, labels, gt_boxes, gt_labels in images:
        keep, keep_gt = _select(labels, label), _select(gt_labels, label)
        sc, tp = _det10_match_image(boxes[keep], scores[keep], gt_boxes[keep_gt], iou_threshold)
        all_scores.append(sc)
        all_tp.append(tp)
        n_positive += int(keep_gt.sum())
    if n_positive == 0:
        return {_rate_key(f): float("nan") for f in fp_rates}
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0, bool)
    tp = tp[np.argsort(-scores, kind="mergesort")]
    tp_sum = np.concatenate([[0], np.cumsum(tp)])      # true positives among the first k detections, k = 0..N
    fp_sum = np.concatenate([[0], np.cumsum(~tp)])
    out = {}
    for f in fp_rates:
        allowed = math.floor(f * len(images) + 1e-9)
        out[_rate_key(f)] = float(tp_sum[fp_sum <= allowed].max() / n_positive)
    return out


def average_recall_at_fp(predictions: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]],
                         fp_rates: Sequence[float] = CHESTX_DET10_FP_RATES, iou_threshold: float = 0.5,
                         labels: Sequence[Hashable] | None = None) -> dict[str, Any]:
    """The ChestX-Det10 detection metric: recall at 0.05, 0.1 and 0.2 false positives per image, per class,
    averaged over classes, and its mean over the three rates ("avg recall").

    Follows the dataset's ``eval.py`` (Deepwise-AILab/ChestX-Det10-Dataset; Liu, Lian & Yu, "ChestX-Det10: Chest
    X-ray Dataset on Detection of Thoracic Abnormalities", arXiv:2006.10550): per class, detections of all test
    images ranked by score, a true positive at IoU >= 0.5 with the best-overlapping ground-truth box of the same
    class (see :func:`recall_at_fp_rates`), false positives per image over every test image (no-finding images
    included), recall read at each rate, then averaged over classes and over the rates. Differences, none of
    which changes the result on the official 542-image test set: IoU uses continuous coordinates (``eval.py``
    adds 1 px to widths and heights); ``eval.py`` interpolates the curve linearly, which is this step reading
    except when ``rate * n_images`` is an integer (there it takes the recall at the k-th false positive, here
    the recall just before the (k + 1)-th); the class mean is over the classes present in the ground truth
    (``eval.py`` divides by its 10 classes, all present in its test set, and fails on an absent one).

    Args:
        predictions: per image ``{"boxes": (N, 4) xyxy px, "scores": (N,), "labels": (N,)}``, every candidate.
        ground_truths: per image ``{"boxes" or "boxes_xyxy": (M, 4) xyxy px, "labels": (M,)}``; images with no
            box count in the false positives per image.
        fp_rates: false positives per image (default :data:`CHESTX_DET10_FP_RATES`).
        iou_threshold: minimum IoU of a true positive.
        labels: the classes to score (default: those present in the ground truth); a class without ground-truth
            box gets NaN and is left out of the means.

    Returns:
        ``{"0.05": mean recall over classes, "0.1": ..., "0.2": ..., "mean": mean over the rates, "per_class":
        {label: {"0.05": ..., "0.1": ..., "0.2": ..., "mean": ...}}}``, values in [0, 1] (NaN when no class has
        a ground-truth box); labels as ``str``.

    Raises:
        ValueError: as :func:`recall_at_fp_rates`.
    """
    keys = [_rate_key(f) for f in fp_rates]
    classes = list(labels) if labels is not None else ground_truth_labels(ground_truths)
    per_class = {}
    for c in classes:
        r = recall_at_fp_rates(predictions, ground_truths, c, fp_rates, iou_threshold)
        per_class[str(c)] = {**r, "mean": float(np.mean([r[k] for k in keys]))}
    scored = [v for v in per_class.values() if not math.isnan(v["mean"])]
    out: dict[str, Any] = {k: float(np.mean([v[k] for v in scored])) if scored else float("nan") for k in keys}
    out["mean"] = float(np.mean([out[k] for k in keys])) if scored else float("nan")
    out["per_class"] = per_class
    return out


# ---------------------------------------------------------------------------------------------- summary

def detection_metrics(predictions: Sequence[Mapping[str, Any]], ground_truths: Sequence[Mapping[str, Any]],
                      iou_threshold: float = 0.5, interpolation: str = "coco101") -> dict[str, Any]:
    """All detection metrics of pulmo's ``cxr-detect`` evaluation in one dict.

    Returns:
        ``{"n_images": int, "labels": [...], "ap_50": {label: float}, "map_50": float,
        "ap_50_agnostic": float, "rsna_score": float}`` (the ``_50`` values at ``iou_threshold``;
        ``labels`` = classes present in the ground truth; the RSNA score ignores labels).

    Raises:
        ValueError: as :func:`average_precision`.
    """
    ap = average_precision_per_class(predictions, ground_truths, iou_threshold, interpolation)
    return {"n_images": len(ground_truths), "labels": list(ap),
            "ap_50": {str(k): v for k, v in ap.items()},
            "map_50": float(np.mean(list(ap.values()))) if ap else float("nan"),
            "ap_50_agnostic": average_precision(predictions, ground_truths, None, iou_threshold, interpolation),
            "rsna_score": rsna_score(predictions, ground_truths)}


def above(preds: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """Predictions with score >= ``threshold``."""
    out = []
    for p in preds:
        keep = p["scores"] >= threshold
        out.append({"boxes": p["boxes"][keep], "scores": p["scores"][keep],
                    "labels": [lab for lab, k in zip(p["labels"], keep) if k]})
    return out


def image_scores(preds: list[dict[str, Any]]) -> np.ndarray:
    """Image-level lesion score: the highest box score of each image (0 without boxes), as TBX11K's image-level
    TB task."""
    return np.array([float(p["scores"].max()) if len(p["scores"]) else 0.0 for p in preds])


def detection_report(preds: list[dict], gts: list[dict], threshold: float, sources: Sequence[str] | None = None,
                     n_resamples: int = 1000) -> dict[str, Any]:
    """Detection metrics on the images with boxes, plus ChestX-Det10's average recall at 0.05 / 0.1 / 0.2 false
    positives per image over all images (:func:`pulmo.metrics.detection.average_recall_at_fp`, every candidate)
    and, when some images have none (negatives), the false-positive boxes per negative image at ``threshold``
    (overall and per ``sources``), the image-level AUC (max box score) and AP over all images; 95 %
    percentile-bootstrap CIs over images. ``preds`` are every candidate (scores in [0, 1]); ``threshold`` is
    the operating score threshold of the boxes a user sees. Shapes as the module docstring.

    Returns:
        :func:`detection_metrics` of the images with boxes, plus ``n_images``, ``n_positive_images``,
        ``n_negative_images``, ``score_threshold``, ``rsna_score``, ``ap_50_agnostic_ci95``,
        ``average_recall_at_fp`` (+ ``_per_class``) and, with negatives, ``fp_per_negative_image`` (+ CI, count,
        ``_by_source``), ``image_auc`` (+ CI) and ``ap_50_agnostic_with_negatives``.
    """

    pos = [i for i, g in enumerate(gts) if len(g["labels"])]
    neg = [i for i, g in enumerate(gts) if not len(g["labels"])]
    pp, pg = [preds[i] for i in pos], [gts[i] for i in pos]
    m = detection_metrics(pp, pg) if pos else {"n_images": 0}
    m["n_images"], m["n_positive_images"], m["n_negative_images"] = len(gts), len(pos), len(neg)
    if pos:
        m["rsna_score"] = rsna_score(above(pp, threshold), pg)  # the RSNA score counts every box kept
        m["ap_50_agnostic_ci95"] = list(bootstrap_ci(
            lambda idx: float(detection_metrics([pp[i] for i in idx], [pg[i] for i in idx])["ap_50_agnostic"]),
            len(pos), n_resamples=min(n_resamples, 200)))
    m["score_threshold"] = threshold
    if pos:
        # ChestX-Det10's metric, over every image (false positives per image include those on the negatives)
        ar = average_recall_at_fp(preds, gts)
        m["average_recall_at_fp_per_class"] = ar.pop("per_class")
        m["average_recall_at_fp"] = ar
    if neg:
        fp = np.array([np.sum(preds[i]["scores"] >= threshold) for i in neg], float)
        m["fp_per_negative_image"] = float(fp.mean())
        m["fp_per_negative_image_ci95"] = list(bootstrap_ci(lambda idx: float(fp[idx].mean()), len(fp), n_resamples))
        m["negative_images_with_boxes"] = int((fp > 0).sum())
        if sources is not None:
            by: dict[str, Any] = {}
            for src in sorted({sources[i] for i in neg}):
                f = np.array([fp[k] for k, i in enumerate(neg) if sources[i] == src])
                by[src] = {"n": len(f), "fp_per_image": float(f.mean()), "images_with_boxes": int((f > 0).sum()),
                           "fp_per_image_ci95": list(bootstrap_ci(lambda idx, f=f: float(f[idx].mean()), len(f),
                                                                  n_resamples))}
            m["fp_per_negative_image_by_source"] = by
        if pos:
            score = image_scores(preds)
            y = np.array([len(g["labels"]) > 0 for g in gts])
            m["image_auc"] = roc_auc(score, y)
            m["image_auc_ci95"] = list(bootstrap_ci(lambda idx: roc_auc(score[idx], y[idx]), len(y), n_resamples))
            m["ap_50_agnostic_with_negatives"] = detection_metrics(preds, gts)["ap_50_agnostic"]
    return m
