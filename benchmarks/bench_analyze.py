"""Speed and memory of ``pulmo analyze`` on chest X-rays (JSON out).

Measures: lung-model load time; per-image latency of ``analyze_image`` on a 1024-px X-ray (median of
--repeats runs, end to end: read, segment, write mask/overlay/report) and of the model part alone;
folder throughput; peak RSS; the lung model's achieved GFLOP/s (FLOPs counted by
``torch.utils.flop_counter``) against a large float32 matmul timed in the same run; fp32 vs bf16 vs
channels-last inference.

    python benchmarks/bench_analyze.py --threads 2 --out benchmarks/results/analyze.json
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, median_time, write_json
from torch.utils.flop_counter import FlopCounterMode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(ROOT / "examples" / "cxr" / "00022084_000.png"), help="a 1024-px CXR")
    ap.add_argument("--folder", default=str(ROOT.parent / "shared" / "data" / "cxr" / "ChestX-ray14_bbox_sample" / "images"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "analyze.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from pulmo.io import read_image
    from pulmo.pipeline import analyze_image, analyze_path
    from pulmo.pipeline.cxr import lung_segmenter
    from pulmo.transforms import normalize_cxr, resize_image

    t0 = time.perf_counter()
    seg = lung_segmenter()
    load_s = time.perf_counter() - t0
    image = read_image(args.image)
    tmp = Path(tempfile.mkdtemp(prefix="pulmo-bench-"))
    try:
        analyze_image(args.image, tmp / "warm")
        analyze_s = median_time(lambda: analyze_image(args.image, tmp / "one"), args.repeats)
        read_s = median_time(lambda: read_image(args.image), args.repeats)
        seg_s = median_time(lambda: seg.predict(image), args.repeats)

        folder = Path(args.folder)
        if not folder.is_dir():
            folder = tmp / "folder"
            folder.mkdir()
            for i in range(12):
                shutil.copy(args.image, folder / f"img{i}.png")
        n_images = sum(1 for p in folder.iterdir() if p.is_file())
        t0 = time.perf_counter()
        analyze_path(folder, tmp / "batch", progress=False)
        folder_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # achieved GFLOP/s of the lung model vs a large float32 matmul, same process, same threads
    x = torch.from_numpy(resize_image(normalize_cxr(image.pixels), seg.size))[None, None]
    model = seg.model
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    flops = counter.get_total_flops()
    with torch.no_grad():
        model(x)
        fwd_s = median_time(lambda: model(x), args.repeats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
            bf16_s = median_time(lambda: model(x), args.repeats)
        model_cl = model.to(memory_format=torch.channels_last)
        xcl = x.contiguous(memory_format=torch.channels_last)
        model_cl(xcl)
        cl_s = median_time(lambda: model_cl(xcl), args.repeats)
        model.to(memory_format=torch.contiguous_format)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    mm_s = median_time(lambda: a @ b, 5)
    mm_gflops = 2 * n**3 / mm_s / 1e9
    model_gflops = flops / fwd_s / 1e9

    result = {
        "benchmark": "analyze-cxr",
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                    "processor": platform.processor() or platform.machine()},
        "weights": {"name": seg.card.get("name"), "architecture": seg.card.get("architecture"),
                    "input_size": list(seg.size)},
        "model_load_s": round(load_s, 4),
        "image": {"path": args.image, "size": list(image.shape)},
        "analyze_latency_median_s": round(analyze_s, 4),
        "read_latency_median_s": round(read_s, 4),
        "segment_latency_median_s": round(seg_s, 4),
        "repeats": args.repeats,
        "folder": {"path": str(folder), "n_images": n_images, "seconds": round(folder_s, 3),
                   "images_per_s": round(n_images / folder_s, 3)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "lung_model": {"gflop_per_forward": round(flops / 1e9, 3), "forward_fp32_s": round(fwd_s, 5),
                       "forward_bf16_autocast_s": round(bf16_s, 5), "forward_channels_last_s": round(cl_s, 5),
                       "achieved_gflops": round(model_gflops, 2)},
        "matmul_fp32": {"n": n, "seconds": round(mm_s, 4), "gflops": round(mm_gflops, 2)},
        "lung_model_fraction_of_matmul": round(model_gflops / mm_gflops, 3),
    }
    write_json(result, args.out)


if __name__ == "__main__":
    main()
