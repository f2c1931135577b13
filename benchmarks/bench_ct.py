"""Speed and memory of the CT pipeline (lung extraction + infection segmentation + nodules), JSON out.

Times, on a DICOM series (default: the shared LIDC-IDRI-0001, 133 slices): reading the series, the
lung mask, infection segmentation of every lung slice, nodule detection (when a nodule model is bundled),
and the whole ``analyze_image`` including the
NIfTI masks, overlays and report (median of --repeats runs after a warm-up); peak RSS.

    python benchmarks/bench_ct.py --threads 2 --out benchmarks/results/ct.json
"""

from __future__ import annotations

import argparse
import glob
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import ROOT, median_time, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = sorted(glob.glob(str(ROOT.parent / "shared" / "data" / "ct" / "LIDC-IDRI" / "LIDC-IDRI-0001" / "*" / "*")))
    ap.add_argument("--series", default=default[0] if default else str(ROOT / "examples" / "ct" / "LIDC-IDRI-0001"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ct.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from pulmo.io import read_image
    from pulmo.pipeline import analyze_image
    from pulmo.pipeline.ct import lesion_segmenter
    from pulmo.transforms import window_hu
    from pulmo.transforms.ct import lung_mask_ct

    t0 = time.perf_counter()
    seg = lesion_segmenter()
    load_s = time.perf_counter() - t0
    volume = read_image(args.series)
    tmp = Path(tempfile.mkdtemp(prefix="pulmo-bench-ct-"))
    try:
        analyze_image(args.series, tmp / "warm")
        read_s = median_time(lambda: read_image(args.series), args.repeats)
        lungs_s = median_time(lambda: lung_mask_ct(volume), args.repeats)
        lungs = lung_mask_ct(volume)
        zs = np.flatnonzero(lungs.any(axis=(1, 2)))
        slices = [window_hu(volume.hu[z]) for z in zs]
        lesion_s = median_time(lambda: seg.predict(slices), args.repeats)
        from pulmo.pipeline.ct import nodule_detector

        nod = nodule_detector()
        nodule_s = median_time(lambda: nod.detect(volume, lungs), args.repeats) if nod is not None else None
        total_s = median_time(lambda: analyze_image(args.series, tmp / "run"), args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "analyze-ct",
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads},
        "series": args.series, "volume_shape_zyx": list(volume.shape), "lung_slices": len(zs),
        "weights": {"name": seg.card.get("name"), "architecture": seg.card.get("architecture")},
        "model_load_s": round(load_s, 3), "read_series_s": round(read_s, 3), "lung_mask_s": round(lungs_s, 3),
        "infection_segmentation_s": round(lesion_s, 3),
        "infection_ms_per_slice": round(1000 * lesion_s / max(1, len(zs)), 1),
        "nodule_detection_s": None if nodule_s is None else round(nodule_s, 3),
        "nodule_weights": None if nod is None else nod.card.get("name"),
        "analyze_total_s": round(total_s, 3), "repeats": args.repeats,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    write_json(result, args.out)


if __name__ == "__main__":
    main()
