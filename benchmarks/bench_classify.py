"""Speed of the chest X-ray classifier (JSON out): batched images/s, per-image latency with and without
Grad-CAM + Grad-CAM++ heatmaps, and, in the same run, torchvision's DenseNet-121 forward pass at the same
resolution (the model class TorchXRayVision ships) as the reference cost.

    python benchmarks/bench_classify.py --threads 2 --out benchmarks/results/classify.json
"""

from __future__ import annotations

import argparse
import platform

import torch
from _common import ROOT, median_time, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(ROOT / "examples" / "cxr" / "00022084_000.png"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "classify.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from pulmo.io import read_image
    from pulmo.models import create_model
    from pulmo.pipeline.cxr import lung_segmenter
    from pulmo.tasks.cxr_classify import CxrClassifier

    clf = CxrClassifier()
    image = read_image(args.image)
    lungs = lung_segmenter().predict(image)
    size = clf.pre.size
    pred = clf.predict(image, lungs)
    index = clf.labels.index(pred["predicted"])
    predict_s = median_time(lambda: clf.predict(image, lungs), args.repeats)
    heat_s = median_time(lambda: clf.heatmaps(pred["input"], lungs, index, image.shape), max(3, args.repeats // 4))
    x = torch.rand(args.batch, 1, size, size)
    with torch.no_grad():
        clf.model(x)
        batch_s = median_time(lambda: clf.model(x), 5)
        ref = create_model("densenet121", in_channels=1, num_classes=4).eval()
        ref(x)
        ref_s = median_time(lambda: ref(x), 5)
    result = {
        "benchmark": "cxr-classify",
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads},
        "weights": {"name": clf.card["name"], "architecture": clf.card["architecture"], "input_size": size,
                    "lung_mask": clf.card["input"]["lung_mask"]},
        "per_image_latency_s": {"classify": round(predict_s, 4), "classify_plus_heatmaps": round(predict_s + heat_s, 4),
                                "heatmaps_gradcam_and_gradcampp": round(heat_s, 4)},
        "batched": {"batch": args.batch, "images_per_s": round(args.batch / batch_s, 1)},
        "reference_densenet121_same_resolution": {"images_per_s": round(args.batch / ref_s, 1),
                                                  "ratio_ours_over_densenet": round(ref_s / batch_s, 2)},
        "note": "classify latency excludes the lung segmentation (see analyze.json)",
    }
    write_json(result, args.out)


if __name__ == "__main__":
    main()
