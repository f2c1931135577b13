"""ONNX Runtime vs PyTorch for the chest X-ray models, in one run on this machine (JSON out).

Measures, per exported model (lung-seg-unet, input-gate, cxr-classify, cxr-detect): the median forward time of
the same prepared real input on each backend (``--threads`` intra-op threads) and the largest output difference;
then whole ``pulmo analyze`` processes on one 1024-px X-ray per backend (median of ``--processes`` runs): wall
time, peak RSS and the time from process start to the first model call.

    python benchmarks/bench_backends.py --threads 2 --out benchmarks/results/backends.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, median_time, write_json

# the child process: times its first model call from its own start (perf_counter origin ~ interpreter start)
CHILD = """
import sys, time
T0 = time.time()
backend = sys.argv[3]
first = {}
if backend == "onnx":
    import pulmo.runtime.onnx as o
    orig = o.OnnxModel.run
    def run(self, x):
        first.setdefault("t", time.time())
        return orig(self, x)
    o.OnnxModel.run = run
else:
    import torch.nn
    orig = torch.nn.Module.__call__
    def call(self, *a, **k):
        first.setdefault("t", time.time())
        return orig(self, *a, **k)
    torch.nn.Module.__call__ = call
from pulmo.cli import main
code = main(["--no-progress", "analyze", sys.argv[1], "--out", sys.argv[2], "--backend", backend])
import resource
print(first["t"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code)
"""


def _processes(image: str, backend: str, n: int, threads: int) -> dict:
    walls, firsts, rss = [], [], []
    for _ in range(n):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.time()
            done = subprocess.run([sys.executable, "-c", CHILD, image, str(Path(tmp) / "out"), backend],
                                  check=False, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            walls.append(time.time() - start)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-2000:])
            first, maxrss, _ = done.stdout.split()[-3:]
            firsts.append(float(first) - start)
            rss.append(int(maxrss) / 1024)
    return {"wall_s": round(statistics.median(walls), 3), "to_first_model_s": round(statistics.median(firsts), 3),
            "peak_rss_mib": round(statistics.median(rss), 1), "runs": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(ROOT / "examples" / "cxr" / "00022084_000.png"), help="a 1024-px CXR")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "backends.json"))
    args = ap.parse_args()
    # whole processes first, while this process is small: Linux keeps a process's peak RSS across execve, so a
    # child started from a process that has loaded torch would report the parent's peak
    processes = {b: _processes(args.image, b, args.processes, args.threads) for b in ("onnx", "torch")}
    import torch

    torch.set_num_threads(args.threads)
    from pulmo.io import read_image
    from pulmo.models import create_model
    from pulmo.runtime import OnnxModel
    from pulmo.weights import resolve_card

    image = read_image(args.image)
    lungs = None
    models = {}
    for name in ("lung-seg-unet", "input-gate", "cxr-classify", "cxr-detect"):
        card = resolve_card(name)
        if name == "cxr-classify":
            from pulmo.inference.lung_seg import LungSegmenter

            lungs = LungSegmenter(backend="onnx").predict(image)
            x = card.input.prepare(image, lungs=lungs)
        else:
            x = card.input.prepare(image.pixels if name == "input-gate" else image)
        x = x[None, None]
        onnx = OnnxModel(card, threads=args.threads)
        module = create_model(card["architecture"], weights=name).eval()
        if name == "cxr-detect":  # the same graph as the export: backbone + FPN + head
            from pulmo.runtime.export import _retinanet_graph

            module, _ = _retinanet_graph(module, x.shape[-1])
        t = torch.from_numpy(x)
        with torch.no_grad():
            ref = module(t)
            ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
            torch_s = median_time(lambda m=module, t=t: m(t), args.repeats)
        out = onnx.run(x)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(out.values(), ref, strict=False))
        onnx_s = median_time(lambda m=onnx, x=x: m.run(x), args.repeats)
        models[name] = {"input_shape": list(x.shape), "torch_ms": round(1000 * torch_s, 2),
                        "onnx_ms": round(1000 * onnx_s, 2), "speedup": round(torch_s / onnx_s, 2),
                        "max_abs_output_difference": diff}
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                          "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
              "image": str(Path(args.image).relative_to(ROOT)) if Path(args.image).is_relative_to(ROOT) else args.image,
              "models": models,
              "analyze_process": processes}
    a = result["analyze_process"]
    result["analyze_process"]["wall_ratio_onnx_to_torch"] = round(a["onnx"]["wall_s"] / a["torch"]["wall_s"], 3)
    write_json(result, args.out)


if __name__ == "__main__":
    main()
