"""Speed of the chest X-ray lesion detector (JSON out): per-image latency (median) and batched images/s at the
working resolution, for RetinaNet and, when bundled or given, the U-Net route; peak RSS.

    python benchmarks/bench_detect.py --threads 2 --out benchmarks/results/detect.json
"""

from __future__ import annotations

import argparse
import glob
import platform
import resource
import time

import torch
from _common import ROOT, median_time, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "cxr" / "TBX11K" / "imgs" / "tb" / "*.jpg")))[:16]
    ap.add_argument("--images", nargs="*", default=default or [str(ROOT / "examples" / "cxr" / "00022084_000.png")])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--unet-weights", default="", help="a cxr-detect-unet .safetensors to time as well")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detect.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from pulmo.io import read_image
    from pulmo.tasks.cxr_detect import Detector

    t0 = time.perf_counter()
    det = Detector()
    load_s = time.perf_counter() - t0
    images = [read_image(p) for p in args.images]
    det.predict(images[0])  # warm-up
    latency = median_time(lambda: det.predict(images[0]), args.repeats)
    batch = (images * ((args.batch + len(images) - 1) // len(images)))[:args.batch]
    batched = median_time(lambda: det.predict_raw(batch), max(2, args.repeats // 3))
    result = {
        "benchmark": "cxr-detect",
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads},
        "weights": {"name": det.card["name"], "architecture": det.card["architecture"]},
        "working_size": det.size, "input_size": list(images[0].shape),
        "model_load_s": round(load_s, 3), "latency_s_median": round(latency, 4),
        "batch": args.batch, "images_per_s_batched": round(args.batch / batched, 2),
        "images_per_s_sequential": round(1 / latency, 2),
    }
    if args.unet_weights:
        from pulmo.tasks.cxr_detect_unet import UnetBoxDetector

        u = UnetBoxDetector(args.unet_weights)
        u.predict_raw([images[0]])
        u_lat = median_time(lambda: u.predict_raw([images[0]]), args.repeats)
        result["unet_route"] = {"weights": u.card["name"], "working_size": u.size, "patch": u.patch,
                                "latency_s_median": round(u_lat, 4), "images_per_s": round(1 / u_lat, 2)}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_json(result, args.out)


if __name__ == "__main__":
    main()
