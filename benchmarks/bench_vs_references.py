"""pulmo against the tools users already run, as whole processes side by side in one run (JSON out; issue 19).

* one 1024-px chest X-ray: ``pulmo analyze`` (gate, lungs, classifier + Grad-CAM / Grad-CAM++, boxes, report) vs
  TorchXRayVision's DenseNet-121 classifying the same file (read, normalise, centre crop, resize 224, forward);
* one CT series (LIDC-IDRI-0001, 133 slices): ``pulmo analyze`` (lungs, infection, nodules, report) vs lungmask's
  R231 U-Net segmenting the lungs (``LMInferer.apply``: its own resampling, batches and post-processing).

The references come from PyPI (``pip install torchxrayvision lungmask``) with **random initial weights**: nothing
can be downloaded here, and the time of a forward pass does not depend on the weights' values. lungmask's
post-processing (connected components of the predicted mask) does, so its figure is for a random network's masks.
Each job runs ``--runs`` times (``--ct-runs`` for the CT), median wall time and peak RSS (``ru_maxrss`` of the
child), with ``OMP_NUM_THREADS`` = ``--threads``; the ratio is pulmo / reference.

    pip install -e ".[bench]"    # torchxrayvision, lungmask
    python benchmarks/bench_vs_references.py --threads 2 --out benchmarks/results/vs_references.json
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

from _common import ROOT, write_json

PULMO = """
import sys, resource
from pulmo.cli import main
code = main(["--no-progress", "analyze", sys.argv[1], "--out", sys.argv[2]])
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""

XRV = """
import sys, resource
import numpy as np, skimage.io, torch, torchvision, torchxrayvision as xrv
img = skimage.io.imread(sys.argv[1])
img = xrv.datasets.normalize(img, 255)
img = img.mean(2) if img.ndim == 3 else img
img = img[None, ...]
img = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])(img)
torch.manual_seed(0)
model = xrv.models.DenseNet(weights=None).eval()  # DenseNet-121, 18 pathologies; random weights (no download)
with torch.no_grad():
    out = model(torch.from_numpy(img)[None].float())
print(tuple(out.shape), "RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

LUNGMASK = """
import sys, resource, tempfile, os
import SimpleITK as sitk, torch
from lungmask import LMInferer
from lungmask.resunet import UNet
torch.manual_seed(0)
net = UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)  # R231
path = os.path.join(tempfile.mkdtemp(), "R231-random.pth")
torch.save(net.state_dict(), path)
reader = sitk.ImageSeriesReader()
reader.SetFileNames(reader.GetGDCMSeriesFileNames(sys.argv[1]))
image = reader.Execute()
mask = LMInferer(modelpath=path, tqdm_disable=True).apply(image)
print(mask.shape, "RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _run(code: str, args: list[str], runs: int, threads: int) -> dict:
    walls, rss = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.time()
            done = subprocess.run([sys.executable, "-c", code, *[a.replace("{tmp}", tmp) for a in args]],
                                  check=False, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            walls.append(time.time() - start)
            if done.returncode != 0:
                raise SystemExit(f"{args}: {done.stderr[-3000:]}")
            rss.append(int(done.stdout.split("RSS")[-1].split()[0]) / 1024)
    return {"wall_s": round(statistics.median(walls), 2), "peak_rss_mib": round(statistics.median(rss), 1),
            "runs": runs, "all_wall_s": [round(w, 2) for w in walls]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(ROOT / "examples" / "cxr" / "00022084_000.png"), help="a 1024-px CXR")
    ap.add_argument("--series", default=str(ROOT.parent / "shared" / "data" / "ct" / "LIDC-IDRI" / "LIDC-IDRI-0001"
                                            / "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
                                            / "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"),
                    help="a CT DICOM series folder")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ct-runs", dest="ct_runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-ct", dest="skip_ct", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vs_references.json"))
    args = ap.parse_args()
    import importlib.metadata as md

    result: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                                "versions": {p: md.version(p) for p in ("torch", "onnxruntime", "torchxrayvision",
                                                                        "lungmask")}},
                    "weights_of_references": "random initial weights (nothing can be downloaded here)"}
    xray = {"pulmo_analyze": _run(PULMO, [args.image, "{tmp}/out"], args.runs, args.threads),
            "torchxrayvision_densenet121_classify": _run(XRV, [args.image], args.runs, args.threads)}
    xray["ratio"] = round(xray["pulmo_analyze"]["wall_s"] / xray["torchxrayvision_densenet121_classify"]["wall_s"], 3)
    result["xray"] = {"input": args.image, **xray}
    if not args.skip_ct:
        ct = {"pulmo_analyze": _run(PULMO, [args.series, "{tmp}/out"], args.ct_runs, args.threads),
              "lungmask_r231": _run(LUNGMASK, [args.series], args.ct_runs, args.threads)}
        ct["ratio"] = round(ct["pulmo_analyze"]["wall_s"] / ct["lungmask_r231"]["wall_s"], 3)
        result["ct"] = {"input": args.series, **ct}
    write_json(result, args.out)


if __name__ == "__main__":
    main()
