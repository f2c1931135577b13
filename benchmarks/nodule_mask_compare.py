"""Nodule masks on whole CT scans: the ``nodule`` detector's mask head against the ``nodule-seg`` refinement
(issue 16, item 1: "justify the choice with numbers"). JSON out.

Both scans were never seen by ``nodule-seg`` (LIDC-IDRI-0001 is not in the LIDC-IDRI-slices copy; pyradiomics'
``lung1`` is not LIDC). The reference is the LIDC 50 % consensus of the >= 3-reader nodule (0001) and the label
volume (lung1). For each reference nodule, the detected nodule whose centre lies inside it is scored with both
masks (3-D Dice in the scan's grid).

    python benchmarks/nodule_mask_compare.py --data ../shared/data/ct [--seg-weights runs/x/nodule-seg.safetensors]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import write_json


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the ct/ folder of the shared data")
    ap.add_argument("--seg-weights", default="nodule-seg")
    ap.add_argument("--out", default="benchmarks/results/nodule_mask_compare.json")
    args = ap.parse_args()

    from pulmo.datasets.lidc import load_lidc_scan, paste_mask
    from pulmo.io import read_image, read_labels
    from pulmo.tasks.nodule import NoduleDetector
    from pulmo.tasks.nodule_seg import NoduleSegmenter, refine_nodule_masks

    root = Path(args.data)
    det = NoduleDetector(second_stage=None)
    seg = NoduleSegmenter(args.seg_weights)
    cases = []
    lidc = load_lidc_scan(next(p for p in (root / "LIDC-IDRI" / "LIDC-IDRI-0001").glob("*/*") if p.is_dir()))
    for c in lidc.clusters:
        if c.n_readers >= 3:
            cases.append(("LIDC-IDRI-0001", lidc.volume, paste_mask(*c.consensus_mask(), lidc.volume.shape),
                          f"50 % consensus of {c.n_readers} readers"))
    lung1 = read_image(root / "pyradiomics_lung" / "lung1_image.nrrd")
    label = read_labels(root / "pyradiomics_lung" / "lung1_label.nrrd")
    cases.append(("lung1", lung1, label.labels > 0, "pyradiomics label volume"))
    rows = []
    for name, volume, truth, ref in cases:
        found = det.detect(volume)
        hit = next((n for n in found if truth[tuple(np.clip(np.rint(n["center_zyx_index"]).astype(int), 0,
                                                            np.array(volume.shape) - 1))]), None)
        row = {"scan": name, "reference": ref, "reference_voxels": int(truth.sum()), "detected": hit is not None}
        if hit is not None:
            head = np.zeros(volume.shape, bool)
            (z, y, x), m = hit["mask_offset"], hit["mask"]
            head[z:z + m.shape[0], y:y + m.shape[1], x:x + m.shape[2]] = m
            labels = head.astype(np.int16)
            nodule = {k: v for k, v in hit.items() if k not in ("mask", "mask_offset")}
            refined, info = refine_nodule_masks(volume.hu, volume.spacing, [nodule], labels, seg)
            row.update({"detector_probability": hit["probability"],
                        "dice_mask_head": round(_dice(head, truth), 4),
                        "dice_nodule_seg": round(_dice(refined == 1, truth), 4),
                        "mask_method": info[0]["mask_method"]})
        rows.append(row)
    write_json({"seg_weights": seg.card.get("name"), "seg_sha256": seg.card.get("sha256"),
                "detector_sha256": det.card.get("sha256"), "cases": rows}, args.out)


if __name__ == "__main__":
    main()
