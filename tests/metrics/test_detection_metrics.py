"""Detection metrics: hand-worked IoU / AP / RSNA score / ChestX-Det10 recall at FP rates, edge cases, and AP
against pycocotools."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from pulmo.metrics.detection import (
    RSNA_IOU_THRESHOLDS,
    average_precision,
    average_precision_per_class,
    average_recall_at_fp,
    box_iou,
    detection_metrics,
    mean_average_precision,
    recall_at_fp_rates,
    rsna_image_score,
    rsna_score,
)


def _pred(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
            "labels": list(labels)}


def _gt(boxes, labels):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": list(labels)}


def test_box_iou_hand_worked():
    a = [[0, 0, 10, 10], [5, 5, 15, 15]]
    b = [[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [5, 0, 15, 10]]
    iou = box_iou(a, b)
    assert iou.shape == (2, 4)
    np.testing.assert_allclose(iou[0], [1.0, 0.5, 0.0, 50 / 150])
    np.testing.assert_allclose(iou[1], [25 / 175, 0.0, 0.0, 50 / 150])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)
    assert box_iou([[1, 1, 1, 1]], [[1, 1, 1, 1]])[0, 0] == 0.0  # degenerate: empty union
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        box_iou([[0, 0, 1]], b)


def test_ap_hand_worked_coco101_and_voc():
    # one image, 2 ground-truth boxes; detections by score: TP, FP, TP
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> envelope 1, 2/3, 2/3
    gts = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], ["a", "a"])]
    preds = [_pred([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31]], [0.9, 0.8, 0.7], ["a"] * 3)]
    # VOC all-point: 0.5 * 1 + 0.5 * 2/3
    assert average_precision(preds, gts, "a", interpolation="voc") == pytest.approx(0.5 + 0.5 * 2 / 3)
    # COCO: recall points 0..0.50 (51 of them) -> 1, 0.51..1.00 (50) -> 2/3
    assert average_precision(preds, gts, "a") == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_perfect_and_empty_predictions():
    gts = [_gt([[0, 0, 10, 10], [20, 20, 40, 40]], ["a", "b"]), _gt([], []), _gt([[5, 5, 50, 60]], ["a"])]
    perfect = [_pred(g["boxes"], np.linspace(0.9, 0.5, len(g["labels"])), g["labels"]) for g in gts]
    m = detection_metrics(perfect, gts)
    assert m == {"n_images": 3, "labels": ["a", "b"], "ap_50": {"a": 1.0, "b": 1.0}, "map_50": 1.0,
                 "ap_50_agnostic": 1.0, "rsna_score": 1.0}
    assert average_precision(perfect, gts, interpolation="voc") == pytest.approx(1.0)

    empty = [_pred([], [], []) for _ in gts]
    m = detection_metrics(empty, gts)
    assert m["ap_50"] == {"a": 0.0, "b": 0.0} and m["map_50"] == 0.0 and m["ap_50_agnostic"] == 0.0
    assert m["rsna_score"] == 0.0  # 2 images with ground truth score 0, the empty one is skipped

    nothing = [_gt([], [])] * 2
    m = detection_metrics([_pred([], [], [])] * 2, nothing)
    assert m["labels"] == [] and math.isnan(m["map_50"]) and math.isnan(m["ap_50_agnostic"])
    assert math.isnan(m["rsna_score"])
    assert math.isnan(average_precision(perfect, gts, "no-such-class"))


def test_class_matters_for_per_class_ap_not_for_agnostic_ap():
    gts = [_gt([[0, 0, 10, 10]], ["a"]), _gt([[0, 0, 10, 10]], ["b"])]
    preds = [_pred([[0, 0, 10, 10]], [0.9], ["b"]), _pred([[0, 0, 10, 10]], [0.8], ["b"])]
    ap = average_precision_per_class(preds, gts)
    assert ap == {"a": 0.0, "b": pytest.approx((51 * 0.5 + 50 * 0.5) / 101)}  # b: FP (0.9) then TP (0.8)
    assert mean_average_precision(preds, gts) == pytest.approx((0 + ap["b"]) / 2)
    assert average_precision(preds, gts) == 1.0  # class-agnostic: both boxes found
    # dataset records (key "boxes_xyxy") are accepted as ground truth; integer labels work too
    records = [{"boxes_xyxy": g["boxes"], "labels": np.array([1])} for g in gts]
    assert average_precision([_pred([[0, 0, 10, 10]], [0.5], [1])] * 2, records, 1) == 1.0


def test_duplicate_detections_are_false_positives():
    gts = [_gt([[0, 0, 10, 10]], ["a"])]
    preds = [_pred([[0, 0, 10, 10], [0, 0, 10, 9]], [0.9, 0.95], ["a", "a"])]
    # the higher-scored (IoU 0.9) box takes the ground truth first, the exact one is a duplicate
    assert average_precision(preds, gts, "a", interpolation="voc") == pytest.approx(1.0)
    assert rsna_score(preds, gts) == pytest.approx(0.5)  # TP 1, FP 1 at every threshold


def test_rsna_score_hand_worked():
    gt = [[0, 0, 10, 10], [100, 100, 110, 110]]
    boxes = [[0, 0, 10, 10],       # IoU 1 with gt 0
             [100, 100, 110, 106],  # IoU exactly 0.6 with gt 1: a hit only when 0.6 > t (strict)
             [300, 300, 310, 310]]  # false positive
    # t = 0.40, 0.45, 0.50, 0.55: TP 2, FP 1, FN 0 -> 2/3; t = 0.60 ... 0.75: TP 1, FP 2, FN 1 -> 1/4
    expected_1 = (4 * 2 / 3 + 4 * 1 / 4) / 8
    assert RSNA_IOU_THRESHOLDS == (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)
    assert rsna_image_score(boxes, [0.9, 0.8, 0.7], gt) == pytest.approx(expected_1)
    assert rsna_image_score([], [], []) is None
    assert rsna_image_score([[0, 0, 1, 1]], [0.1], []) == 0.0
    assert rsna_image_score([], [], gt) == 0.0

    preds = [_pred(boxes, [0.9, 0.8, 0.7], ["p"] * 3), _pred([], [], []), _pred([[0, 0, 5, 5]], [0.3], ["p"]),
             _pred([], [], [])]
    gts = [_gt(gt, ["p", "p"]), _gt([], []), _gt([], []), _gt([[0, 0, 5, 5]], ["p"])]
    # image 2 (nothing at all) is skipped; image 3 (a prediction, no ground truth) and 4 (missed) score 0
    assert rsna_score(preds, gts) == pytest.approx(expected_1 / 3)


def test_rsna_greedy_matching_in_score_order():
    gt = [[0, 0, 10, 10]]
    # the higher-scored box (IoU 0.5) takes the ground truth at t < 0.5, leaving the exact box a FP
    boxes, scores = [[0, 0, 10, 5], [0, 0, 10, 10]], [0.9, 0.1]
    # t = 0.40, 0.45: TP 1, FP 1 -> 1/2; t >= 0.5: box 1 misses, box 2 hits -> TP 1, FP 1 -> 1/2
    assert rsna_image_score(boxes, scores, gt) == pytest.approx(0.5)
    # one box with IoU 0.5 only: hits at 0.40 and 0.45 -> (1 + 1 + 6 * 0) / 8
    assert rsna_image_score([[0, 0, 10, 5]], [0.9], gt) == pytest.approx(2 / 8)


def test_input_errors():
    with pytest.raises(ValueError, match="2 prediction entries but 1 ground-truth"):
        average_precision([_pred([], [], [])] * 2, [_gt([], [])])
    with pytest.raises(ValueError, match="predictions of image 0: 1 boxes, 2 scores"):
        average_precision([_pred([[0, 0, 1, 1]], [0.1, 0.2], ["a"])], [_gt([], [])])
    with pytest.raises(ValueError, match="ground truth of image 0: 1 boxes but 0 labels"):
        rsna_score([_pred([], [], [])], [_gt([[0, 0, 1, 1]], [])])
    with pytest.raises(ValueError, match="interpolation 'x'"):
        average_precision([], [], interpolation="x")


# ---------------------------------------------------------------------------------------------- vs pycocotools

def _random_detections(seed: int, n_images: int = 60, classes=("a", "b", "c")):
    """Seeded ground truth (0-4 boxes per image, some images empty) and predictions: jittered copies of most
    ground-truth boxes (sometimes with the wrong class) plus random false positives, random scores."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(n_images):
        m = int(rng.integers(0, 5))
        xy, wh = rng.uniform(0, 400, (m, 2)), rng.uniform(20, 120, (m, 2))
        gt_boxes, gt_labels = np.hstack([xy, xy + wh]), [str(c) for c in rng.choice(classes, m)]
        boxes, scores, labels = [], [], []
        for b, c in zip(gt_boxes, gt_labels, strict=True):
            if rng.random() < 0.8:
                boxes.append(b + rng.normal(0, 6, 4))
                scores.append(rng.random())
                labels.append(c if rng.random() < 0.85 else str(rng.choice(classes)))
        for _ in range(int(rng.integers(0, 4))):
            xy, wh = rng.uniform(0, 400, 2), rng.uniform(20, 120, 2)
            boxes.append(np.r_[xy, xy + wh])
            scores.append(rng.random())
            labels.append(str(rng.choice(classes + ("only-predicted",))))
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        preds.append(_pred(boxes, scores, labels))
        gts.append(_gt(gt_boxes, gt_labels))
    return preds, gts


def _pycocotools_ap50(preds, gts, class_agnostic: bool = False) -> dict:
    """AP at IoU 0.5 per category (or pooled) from pycocotools' COCOeval (area 'all', maxDets 100)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({c for g in gts for c in g["labels"]} | {c for p in preds for c in p["labels"]})
    cat = {c: i + 1 for i, c in enumerate(names)}
    images, anns, dets = [], [], []
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        images.append({"id": i + 1, "width": 1024, "height": 1024})
        for b, c in zip(g["boxes"], g["labels"], strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat[c],
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
        for b, s, c in zip(p["boxes"], p["scores"], p["labels"], strict=True):
            dets.append({"image_id": i + 1, "category_id": cat[c], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns,
                           "categories": [{"id": i, "name": c} for c, i in cat.items()]}
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.params.useCats = 0 if class_agnostic else 1
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # (recall points, categories), area all, maxDets 100
    if class_agnostic:
        return {None: float(precision[:, 0].mean())}
    return {c: float(precision[:, k].mean()) for k, c in enumerate(names) if (precision[:, k] > -1).all()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_matches_pycocotools(seed):
    pytest.importorskip("pycocotools.cocoeval", exc_type=ImportError,
                        reason="pycocotools (dev extra) is not importable: the AP reference comparison needs it "
                               "(pip install pycocotools)")
    preds, gts = _random_detections(seed)
    assert max(len(p["scores"]) for p in preds) < 100  # below COCO's maxDets, which pulmo does not apply
    ours = average_precision_per_class(preds, gts)
    reference = _pycocotools_ap50(preds, gts)
    assert "only-predicted" not in ours and "only-predicted" not in reference  # skipped: not in ground truth
    assert ours.keys() == reference.keys() == {"a", "b", "c"}
    for c in ours:
        assert ours[c] == pytest.approx(reference[c], abs=1e-9), c
    assert 0.2 < min(ours.values()) and max(ours.values()) < 0.95  # a non-trivial case
    assert mean_average_precision(preds, gts) == pytest.approx(np.mean(list(reference.values())), abs=1e-9)
    assert average_precision(preds, gts) == pytest.approx(_pycocotools_ap50(preds, gts, True)[None], abs=1e-9)


def test_equal_iou_tie_breaks_to_the_last_ground_truth_box_as_pycocotools():
    """GT A [0, 0, 10, 10] and B [2, 0, 12, 10]; p1 [1, 0, 11, 10] (score .9) has IoU 90/110 with both; p2
    [4, 0, 14, 10] (score .8) has IoU 60/140 < 0.5 with A and 80/120 with B. pycocotools gives p1 the last of
    the equal boxes (B), so p2 finds no free box >= 0.5 and is a false positive: precision 1, 1/2 at recall
    1/2 -> AP 0.5 (taking A first would match both: AP 1)."""
    pytest.importorskip("pycocotools.cocoeval", exc_type=ImportError,
                        reason="pycocotools (dev extra) is not importable: the tie-break comparison needs it")
    gts = [_gt([[0, 0, 10, 10], [2, 0, 12, 10]], ["a", "a"])]
    preds = [_pred([[1, 0, 11, 10], [4, 0, 14, 10]], [0.9, 0.8], ["a", "a"])]
    iou = box_iou(preds[0]["boxes"], gts[0]["boxes"])
    assert iou[0, 0] == iou[0, 1] and iou[1, 0] < 0.5 <= iou[1, 1]
    reference = _pycocotools_ap50(preds, gts)["a"]
    assert reference == pytest.approx(0.5, abs=0.01)
    assert average_precision(preds, gts, "a") == pytest.approx(reference, abs=1e-9)
    assert average_precision(preds, gts) == pytest.approx(_pycocotools_ap50(preds, gts, True)[None], abs=1e-9)
    # the order of the ground-truth boxes decides, in both
    swapped = [_gt([[2, 0, 12, 10], [0, 0, 10, 10]], ["a", "a"])]
    assert _pycocotools_ap50(preds, swapped)["a"] == pytest.approx(1.0)
    assert average_precision(preds, swapped, "a") == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- ChestX-Det10

def test_average_recall_at_fp_hand_worked():
    """10 images, so 0.05 / 0.1 / 0.2 false positives per image allow 0 / 1 / 2 false positives."""
    empty = _gt([], [])
    gts = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], ["a", "a"]), _gt([[0, 0, 10, 10]], ["a"]), empty,
           _gt([[0, 0, 10, 10]], ["b"]), _gt([[40, 40, 50, 50]], ["a"])] + [empty] * 5
    preds = [_pred([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8, 0.7, 0.95],
                   ["a", "a", "a", "b"]),  # a: TP, FP, TP; b on an image without b: FP
             _pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.4], ["a", "a"]),  # TP, then a duplicate: FP
             _pred([[0, 0, 10, 10]], [0.6], ["a"]),  # FP on an image without boxes
             _pred([[0, 0, 10, 20]], [0.3], ["b"]),  # IoU 100 / 200 = 0.5 exactly: TP
             _pred([], [], [])] + [_pred([], [], [])] * 5
    # class a ranking: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP, 0.5 TP, 0.4 FP; 4 boxes (the one of image 4 is never found)
    assert recall_at_fp_rates(preds, gts, "a") == pytest.approx({"0.05": 1 / 4, "0.1": 2 / 4, "0.2": 3 / 4})
    # class b: 0.95 FP, 0.3 TP; 1 box
    assert recall_at_fp_rates(preds, gts, "b") == pytest.approx({"0.05": 0.0, "0.1": 1.0, "0.2": 1.0})
    m = average_recall_at_fp(preds, gts)
    assert m["per_class"]["a"] == pytest.approx({"0.05": 0.25, "0.1": 0.5, "0.2": 0.75, "mean": 0.5})
    assert m["per_class"]["b"] == pytest.approx({"0.05": 0.0, "0.1": 1.0, "0.2": 1.0, "mean": 2 / 3})
    assert {k: m[k] for k in ("0.05", "0.1", "0.2")} == pytest.approx({"0.05": 0.125, "0.1": 0.75, "0.2": 0.875})
    assert m["mean"] == pytest.approx((0.125 + 0.75 + 0.875) / 3)
    # class-agnostic: a's TPs plus b's; the b box at 0.95 now hits image 0's first a box, so 0.9 is a duplicate
    # ranking: 0.95 TP, 0.9 FP, 0.8 FP, 0.7 TP, 0.6 FP, 0.5 TP, 0.4 FP, 0.3 TP; 5 boxes
    assert recall_at_fp_rates(preds, gts, None) == pytest.approx({"0.05": 1 / 5, "0.1": 1 / 5, "0.2": 2 / 5})


def test_recall_at_fp_matches_only_the_best_overlapping_box_as_chestx_det10():
    """A detection whose best-overlapping box is already hit is a false positive even when another box would
    match (ChestX-Det10 eval.py; COCO matching would take the second box)."""
    gts = [_gt([[0, 0, 10, 10], [0, 0, 10, 12]], ["a", "a"])]
    preds = [_pred([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 12]], [0.9, 0.8, 0.7], ["a"] * 3)]
    # 0.9 -> box 0 (IoU 1) TP; 0.8 -> best is box 0 again (IoU 1 > 100/120): FP; 0.7 -> box 1 TP
    assert recall_at_fp_rates(preds, gts, "a", fp_rates=(0.5, 1.0)) == {"0.5": 0.5, "1": 1.0}
    two = [_pred([[0, 0, 10, 10]] * 2, [0.9, 0.8], ["a"] * 2)]
    assert recall_at_fp_rates(two, gts, "a", fp_rates=(5.0,)) == {"5": 0.5}
    assert average_precision(two, gts, "a", interpolation="voc") == 1.0  # COCO: the 0.8 box takes box 1


def test_recall_at_fp_counts_every_image_and_stays_after_the_last_detection():
    gts = [_gt([[0, 0, 10, 10]], ["a"])]
    preds = [_pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], ["a", "a"])]  # FP, then TP
    assert recall_at_fp_rates(preds, gts, "a") == {"0.05": 0.0, "0.1": 0.0, "0.2": 0.0}
    # 19 more images without boxes: 0.05 FP / image x 20 images = 1 false positive allowed
    more_gts, more_preds = gts + [_gt([], [])] * 19, preds + [_pred([], [], [])] * 19
    assert recall_at_fp_rates(more_preds, more_gts, "a") == {"0.05": 1.0, "0.1": 1.0, "0.2": 1.0}
    # no false positive at all: the final recall at every rate
    assert recall_at_fp_rates([_pred([[0, 0, 10, 10]], [0.1], ["a"])], gts, "a", (0.0, 5.0)) == {"0": 1.0, "5": 1.0}


def test_average_recall_at_fp_edge_cases():
    gts = [_gt([[0, 0, 10, 10]], ["a"]), _gt([], [])]
    none = [_pred([], [], [])] * 2
    m = average_recall_at_fp(none, gts)
    assert m["0.05"] == m["0.2"] == m["mean"] == 0.0 and list(m["per_class"]) == ["a"]
    # a requested class without ground truth: NaN, left out of the means
    m = average_recall_at_fp([_pred([[0, 0, 10, 10]], [0.5], ["a"]), _pred([], [], [])], gts, labels=["a", "Mass"])
    assert math.isnan(m["per_class"]["Mass"]["mean"]) and m["mean"] == 1.0
    assert math.isnan(average_recall_at_fp(none, [_gt([], [])] * 2)["mean"])
    assert math.isnan(recall_at_fp_rates(none, gts, "b")["0.1"])
    with pytest.raises(ValueError, match="fp_rates must be >= 0"):
        recall_at_fp_rates(none, gts, "a", fp_rates=(-0.1,))
    with pytest.raises(ValueError, match="2 prediction entries but 1"):
        average_recall_at_fp(none, gts[:1])
