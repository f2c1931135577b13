"""Accuracy comparison of trained lesion-seg runs on their common held-out slices (JSON + Markdown out).

Each run folder holds ``lesion-seg.safetensors`` + card (``pulmo train lesion-seg --out-dir runs/lesion-<arch>``
with the same split seed). Metrics at the original resolution with each card's threshold, standard
formulas (SEEDS.md notes seed 5's Sp and F1 formulas are wrong).

    python benchmarks/lesion_compare.py --data DATA/ct/COVID-SemiSeg runs/lesion-unet runs/lesion-res-unet ...
    python benchmarks/lesion_compare.py --data DATA/ct/COVID-SemiSeg --append runs/lesion-new   # add one run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SEED5 = {"unet": (0.982, 0.695, 0.769, 0.965, 0.731), "res-unet": (0.983, 0.766, 0.738, 0.986, 0.752),
         "attention-unet": (0.986, 0.770, 0.897, 0.971, 0.829), "res-attention-unet": (0.994, 0.811, 0.929, 0.995, 0.867)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="benchmarks/results/lesion_compare.json")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in --out (a row of the same run is replaced)")
    args = ap.parse_args()

    from pulmo.datasets import covid_semiseg_records
    from pulmo.tasks.lesion_seg import LesionSegmenter, score_records

    rows = []
    for run in args.runs:
        card_path = next(Path(run).glob("*.json"), None) if not Path(run, "lesion-seg.json").is_file() else Path(run, "lesion-seg.json")
        card = json.loads(card_path.read_text())
        held = set(card["training"]["val_images"])
        classes = card["training"]["classes"]
        records = [r for r in covid_semiseg_records(args.data, "train", "binary") if Path(r["image"]).name in held]
        seg = LesionSegmenter(str(card_path.with_suffix(".safetensors")))
        s = score_records(seg, records, progress=False)
        s.pop("per_image")
        rows.append({"run": run, "architecture": card["architecture"], "classes": classes,
                     "threshold": card["thresholds"]["infection"],
                     "epochs_run": card["training"]["epochs_run"], "train_seconds": card["training"]["seconds"], **s})
    if args.append and Path(args.out).is_file():
        new = {r["run"] for r in rows}
        rows = [r for r in json.loads(Path(args.out).read_text()) if r["run"] not in new] + rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print("| method | classes | Acc | Pc | Sen | Sp | F1 (Dice, pixels) | Dice mean/slice | seed-5 F1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        seed = SEED5.get(r["architecture"]) if r["classes"] == "binary" else None
        print(f"| {r['architecture']} | {r['classes']} | {r['accuracy']:.3f} | {r['precision']:.3f} | {r['sensitivity']:.3f} | "
              f"{r['specificity']:.3f} | {r['f1']:.3f} | {r['dice_mean']:.3f} | {seed[4] if seed else '-'} |")


if __name__ == "__main__":
    main()
