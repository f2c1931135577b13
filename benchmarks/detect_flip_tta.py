"""Does horizontal-flip test-time augmentation help the bundled RetinaNet (cxr-detect)?

Scores the bundled detector on the TB images of its own held-out test split, with and without flip TTA
(the image and its mirror; boxes of both pooled and merged by per-class NMS at IoU 0.5, torchvision's
``batched_nms``), and the validation images too (where an operating threshold would be chosen). Writes JSON:

    python benchmarks/detect_flip_tta.py --data DATA/cxr/TBX11K --out benchmarks/results/detect_flip_tta.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import batched_nms

from pulmo.io import read_image
from pulmo.metrics.detection import detection_metrics
from pulmo.tasks.cxr_detect import Detector, load_records, prepare_image


def _flip_tta(det: Detector, image, iou: float) -> dict:
    x, (sx, sy) = prepare_image(image, det.size)
    t = torch.from_numpy(x)[None]
    with torch.no_grad():
        a, b = det.model([t, torch.flip(t, dims=[-1])])
    w = t.shape[-1]
    fb = b["boxes"].clone()
    fb[:, 0], fb[:, 2] = w - b["boxes"][:, 2], w - b["boxes"][:, 0]
    boxes, scores = torch.cat([a["boxes"], fb]), torch.cat([a["scores"], b["scores"]])
    labels = torch.cat([a["labels"], b["labels"]])
    keep = batched_nms(boxes.float(), scores.float(), labels, iou)
    boxes = boxes[keep].float().numpy().astype(np.float64) * np.array([sx, sy, sx, sy])
    return {"boxes": boxes.reshape(-1, 4), "scores": scores[keep].float().numpy().astype(np.float64),
            "labels": [det.labels[int(k) - 1] for k in labels[keep]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--annotations", default="annotations/json/TBX11K_train_only_tb.json")
    p.add_argument("--iou", type=float, default=0.5)
    p.add_argument("--out", default="benchmarks/results/detect_flip_tta.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    det = Detector()
    records = load_records(args.data, "tbx11k", args.annotations)
    result = {"weights": det.card["name"], "weights_sha256": det.card.get("sha256"), "nms_iou": args.iou}
    for split, key in (("test", "test_images"), ("val", "val_images")):
        held = set(det.card["training"].get(key, []))
        rs = [r for r in records if Path(r["image"]).name in held]
        if not rs:
            continue
        gts = [{"boxes": r["boxes_xyxy"], "labels": r["labels"]} for r in rs]
        t0 = time.perf_counter()
        plain, tta = [], []
        for r in rs:
            im = read_image(r["image"])
            plain += det.predict_raw([im])
            tta.append(_flip_tta(det, im, args.iou))
        mp, mt = detection_metrics(plain, gts), detection_metrics(tta, gts)
        result[split] = {"n_images": len(rs), "seconds": round(time.perf_counter() - t0, 1),
                         "plain": {k: mp[k] for k in ("ap_50_agnostic", "map_50", "ap_50")},
                         "flip_tta": {k: mt[k] for k in ("ap_50_agnostic", "map_50", "ap_50")}}
        print(split, json.dumps(result[split]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
