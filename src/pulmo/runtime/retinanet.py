"""RetinaNet post-processing in NumPy: what torchvision's ``RetinaNet.postprocess_detections`` does, for the
ONNX graph's raw outputs (no torch import).

Follows torchvision 0.29 ``torchvision/models/detection/retinanet.py`` (Lin et al., "Focal loss for dense
object detection", ICCV 2017) step by step, per image:

1. per FPN level: sigmoid class scores, flattened ``(anchors x classes)``; keep scores ``> score_thresh``;
   the ``topk_candidates`` best of them;
2. decode each kept anchor's regression (``BoxCoder`` with weights ``(1, 1, 1, 1)``: centre offsets scaled by the
   anchor's width / height, log-size deltas clamped at ``bbox_xform_clip``), clip to the image;
3. all levels together: class-wise greedy NMS at IoU ``nms_thresh`` (torchvision ``batched_nms``), the
   ``detections_per_img`` best kept.

The golden test (``tests/runtime``) checks that boxes, scores and labels match torchvision's on real images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_boxes(deltas: np.ndarray, anchors: np.ndarray, weights: Sequence[float], clip: float) -> np.ndarray:
    """Boxes ``(N, 4)`` xyxy from regression ``deltas`` ``(N, 4)`` (dx, dy, dw, dh) and ``anchors`` ``(N, 4)``
    xyxy, as torchvision's ``BoxCoder.decode_single`` (float32 arithmetic)."""
    anchors = anchors.astype(np.float32)
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + np.float32(0.5) * widths
    ctr_y = anchors[:, 1] + np.float32(0.5) * heights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = np.minimum(deltas[:, 2] / ww, np.float32(clip))
    dh = np.minimum(deltas[:, 3] / wh, np.float32(clip))
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = np.float32(0.5) * (np.exp(dw) * widths)
    half_h = np.float32(0.5) * (np.exp(dh) * heights)
    return np.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h],
                    axis=1).astype(np.float32)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU ``(N,)`` of one xyxy ``box`` with each of ``boxes`` ``(N, 4)``."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS done separately per label, by decreasing score (torchvision ``batched_nms``):
    a box is dropped when its IoU with a kept box of the same label is ``> iou_threshold``."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(scores), bool)
    for rank, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[rank + 1:]
        rest = rest[(labels[rest] == labels[i]) & ~suppressed[rest]]
        if len(rest):
            suppressed[rest[box_iou(boxes[i], boxes[rest]) > iou_threshold]] = True
    return np.asarray(keep, dtype=np.int64)


def postprocess(cls_logits: np.ndarray, bbox_regression: np.ndarray, anchors: np.ndarray,
                params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One image's detections from the raw RetinaNet outputs.

    Args:
        cls_logits: ``(A, K)`` class logits of every anchor (levels concatenated, as the head gives them).
        bbox_regression: ``(A, 4)`` box deltas.
        anchors: ``(A, 4)`` xyxy anchors in px of the network input.
        params: the export's metadata: ``num_anchors_per_level``, ``score_thresh``, ``nms_thresh``,
            ``detections_per_img``, ``topk_candidates``, ``box_coder_weights``, ``bbox_xform_clip``,
            ``image_size`` ``[h, w]``.

    Returns:
        ``{"boxes": float32 (N, 4) xyxy px of the input, "scores": float32 (N,) in (0, 1], "labels": int64 (N,)
        class index of the head (0..K-1)}``, highest score first, N <= ``detections_per_img``.
    """
    h, w = params["image_size"]
    boxes_all, scores_all, labels_all = [], [], []
    start = 0
    for n in params["num_anchors_per_level"]:
        logits, deltas, anc = cls_logits[start:start + n], bbox_regression[start:start + n], anchors[start:start + n]
        start += n
        k = logits.shape[-1]
        scores = _sigmoid(logits.astype(np.float32)).ravel()
        idx = np.flatnonzero(scores > params["score_thresh"])
        top = min(len(idx), int(params["topk_candidates"]))
        best = np.argsort(-scores[idx], kind="stable")[:top]
        idx = idx[best]
        anchor_idx, labels = idx // k, idx % k
        boxes = decode_boxes(deltas[anchor_idx], anc[anchor_idx], params["box_coder_weights"],
                             params["bbox_xform_clip"])
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
        boxes_all.append(boxes)
        scores_all.append(scores[idx])
        labels_all.append(labels)
    boxes = np.concatenate(boxes_all)
    scores = np.concatenate(scores_all).astype(np.float32)
    labels = np.concatenate(labels_all).astype(np.int64)
    keep = batched_nms(boxes, scores, labels, params["nms_thresh"])[: int(params["detections_per_img"])]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
