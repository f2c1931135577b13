"""The input gate, measured like an outsider: refusals of bombs (time, peak RSS), and the gate's decisions on
data the project never trained on. JSON out.

1. Bombs: ``pulmo analyze`` on a 12000 x 12000 PNG (17 KB), a 30000 x 30000 PNG and a ``.nii.gz`` of
   1024 x 1024 x 700 zeros, each in a fresh process; wall time and the child's peak RSS (``VmHWM``).
2. Held-out out-of-scope inputs (must all be refused): every DICOM file pydicom ships as test data (third-party
   files of every kind: MR, US, NM, SC, SEG, RT, SR, ECG, CT of the head...), every PNG / JPEG found on this
   machine outside the project and the data (icons, documentation screenshots), pictures generated with
   seeds the training never used, the generated bad-input corpus of ``tests/bad_inputs.py``.
3. Real chest images (must all be accepted): every chest X-ray of the shared data (the gate model trained on
   80 % of their patients: the held-out patients are reported apart, and the leave-one-source-out numbers
   are in the model card), the LIDC-IDRI and pyradiomics CT volumes, the bundled examples.

    python benchmarks/bench_gate.py --out benchmarks/results/gate.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, write_json

sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def _bomb_runs(tmp: Path) -> dict:
    from tests.bad_inputs import nifti_gz_bomb, png_bomb

    folder = tmp / "bombs"
    folder.mkdir()
    files = {"png_12000": png_bomb(folder / "b12000.png", 12000), "png_30000": png_bomb(folder / "b30000.png", 30000),
             "nii_gz_1024x1024x700": nifti_gz_bomb(folder / "b.nii.gz")}
    out = {}
    # VmHWM (peak RSS of this program image; ru_maxrss would keep the forked parent's peak across exec)
    code = ("import sys, time; t=time.perf_counter(); from pulmo import cli; "
            "c=cli.main(['--no-progress','analyze',sys.argv[1],'--out',sys.argv[2]]); "
            "hwm=[ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]; "
            "print(c, time.perf_counter()-t, hwm)")
    for name, path in files.items():
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", code, str(path), str(tmp / f"out-{name}")], capture_output=True,
                             text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
        exit_code, seconds_in, rss_kb = res.stdout.split()
        out[name] = {"file_bytes": path.stat().st_size, "exit_code": int(exit_code),
                     "seconds_in_process": round(float(seconds_in), 3),
                     "seconds_process": round(time.perf_counter() - t0, 3),
                     "peak_rss_mib": round(int(rss_kb) / 1024, 1), "message": res.stderr.strip().splitlines()[-1]}
    return out


def _judge(paths: list[Path], modality: str | None = None) -> dict:
    from pulmo.errors import InputError, PulmoError
    from pulmo.gate import screen

    accepted, refused, reasons = [], [], {}
    for p in paths:
        try:
            screen(p, modality)
            accepted.append(str(p))
        except (InputError, PulmoError) as exc:
            refused.append(str(p))
            key = str(exc).split(": ", 1)[-1].split(";")[0].split("(")[0].strip()[:60]
            reasons[key] = reasons.get(key, 0) + 1
    return {"n": len(paths), "accepted": len(accepted), "refused": len(refused),
            "accepted_files": accepted[:50], "top_refusal_reasons": dict(sorted(reasons.items(),
                                                                                 key=lambda kv: -kv[1])[:12])}


def _system_pictures() -> list[Path]:
    skip = (str(ROOT), str(DATA.parent), "/proc", "/sys", "/tmp", "/farm")
    found = []
    for base in ("/usr/share", "/usr/lib", "/root", "/opt"):
        for root, dirs, names in os.walk(base):
            if any(root.startswith(s) for s in skip):
                dirs[:] = []
                continue
            for n in names:
                if n.lower().endswith((".png", ".jpg", ".jpeg")):
                    p = Path(root) / n
                    if p.stat().st_size > 2048:
                        found.append(p)
    return sorted(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gate.json"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import pydicom.data
    from PIL import Image

    from pulmo.datasets.gate_corpus import (
        CXR_SOURCES,
        GENERATED_KINDS,
        cxr_group,
        generated_picture,
        ieee_patient_ids,
    )
    from pulmo.datasets.splits import patient_fold
    from tests.bad_inputs import generated_cases

    result: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result["bombs"] = _bomb_runs(tmp)
        pyd = sorted(p for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*") if p.is_file()
                     and not p.suffix.lower() in (".json", ".txt", ".dump", ".icc", ".gz"))
        result["held_out_out_of_scope"] = {"pydicom_test_files": _judge(pyd),
                                           "system_pictures": _judge(_system_pictures())}
        gen = tmp / "generated"
        gen.mkdir()
        paths = []
        for k, kind in enumerate(GENERATED_KINDS):
            for i in range(10):
                arr = generated_picture(kind, np.random.default_rng([12345, k, i]), size=384)
                p = gen / f"{kind}_{i}.png"
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p)
                paths.append(p)
        result["held_out_out_of_scope"]["generated_unseen_seeds"] = _judge(paths)
        cases = generated_cases(tmp / "corpus")
        result["held_out_out_of_scope"]["bad_input_corpus"] = {
            "n": len(cases), "note": "see tests/test_gate.py for the per-case assertions"}
        cxr_all, cxr_test = {}, {}
        ieee = ieee_patient_ids(DATA)
        for source, rel in CXR_SOURCES.items():
            files = sorted(p for p in (DATA / rel).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            cxr_all[source] = _judge(files)
            held = [p for p in files if patient_fold(cxr_group(source, p, ieee), 0) < 0.2]
            cxr_test[source] = {k: v for k, v in _judge(held).items() if k != "accepted_files"}
            cxr_all[source].pop("accepted_files")
        ct = [d for d in (DATA / "ct" / "LIDC-IDRI").glob("*/*/*") if d.is_dir()]
        ct += [DATA / "ct" / "pyradiomics_lung" / "lung1_image.nrrd", ROOT / "examples" / "ct" / "LIDC-IDRI-0001"]
        examples = sorted((ROOT / "examples" / "cxr").glob("*.*"))
        result["real_chest"] = {"cxr_all_images": cxr_all, "cxr_held_out_patients": cxr_test,
                                "ct_volumes": _judge([p for p in ct if p.exists()]),
                                "examples_cxr": _judge([p for p in examples if p.suffix != ".md"])}
    for part in ("pydicom_test_files", "system_pictures", "generated_unseen_seeds"):
        result["held_out_out_of_scope"][part].setdefault("accepted_files", [])
    result["summary"] = {
        "out_of_scope_accepted": sum(v.get("accepted", 0) for v in result["held_out_out_of_scope"].values()),
        "out_of_scope_n": sum(v.get("n", 0) for k, v in result["held_out_out_of_scope"].items() if k != "bad_input_corpus"),
        "real_cxr_refused": sum(v["refused"] for v in result["real_chest"]["cxr_all_images"].values()),
        "real_cxr_n": sum(v["n"] for v in result["real_chest"]["cxr_all_images"].values()),
        "real_cxr_held_out_refused": sum(v["refused"] for v in result["real_chest"]["cxr_held_out_patients"].values()),
        "real_cxr_held_out_n": sum(v["n"] for v in result["real_chest"]["cxr_held_out_patients"].values()),
        "real_ct_refused": result["real_chest"]["ct_volumes"]["refused"],
        "bomb_peak_rss_mib_max": max(v["peak_rss_mib"] for v in result["bombs"].values()),
    }
    write_json(result, args.out)


if __name__ == "__main__":
    main()
