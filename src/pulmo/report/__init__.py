"""Outputs of an analysis: findings.json, masks (PNG / NIfTI), overlays and report.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pulmo.io import Image2D, Volume, write_mask_png, write_nifti
from pulmo.pipeline.findings import Findings
from pulmo.report.html import render_report
from pulmo.report.overlay import (
    LUNG_COLOUR,
    NODULE_COLOUR,
    detection_overlay,
    grey_rgb,
    heat_scale_image,
    heatmap_overlay,
    label_layers,
    mask_overlay,
    overlay,
)
from pulmo.transforms import window_hu

__all__ = ["grey_rgb", "mask_overlay", "overlay", "render_report", "write_ct_outputs", "write_cxr_outputs"]


def _finish(findings: Findings, out: Path, images: dict[str, str]) -> dict[str, Any]:
    findings.files = {"overlays": list(images.values()), "report": "report.html", "config": "config.yaml"}
    data = findings.to_dict()
    (out / "report.html").write_text(render_report(data, images), encoding="utf-8")
    (out / "findings.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


def write_cxr_outputs(image: Image2D, findings: Findings, masks: dict[str, np.ndarray],
                      out_dir: str | Path) -> dict[str, Any]:
    """Write ``lung_mask.png`` (original size, 0/255), ``overlay.png``, ``report.html`` and
    ``findings.json`` into ``out_dir``. Returns the findings dict as written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_mask_png(masks["lungs"], out / "lung_mask.png")
    mask_overlay(image.pixels, masks["lungs"]).save(out / "overlay.png")
    images = {"lung mask overlay": "overlay.png"}
    if findings.detections is not None:
        from pulmo.datasets.detection import TBX11K_CLINICAL_NAMES

        detection_overlay(image.pixels, findings.detections, lungs=masks["lungs"],
                          names=TBX11K_CLINICAL_NAMES).save(out / "detections.png")
        n = len(findings.detections)
        images[f"lesion detections ({n} box{'es' if n != 1 else ''} above the threshold)"] = "detections.png"
    cls = findings.classification or {}
    if cls.get("heatmaps"):
        heat_scale_image().save(out / "heatmap_scale.png")
    for method, name in (cls.get("heatmaps") or {}).items():
        heatmap_overlay(image.pixels, masks[f"heatmap/{method}"], masks["lungs"]).save(out / name)
        energy = (cls.get("heatmap_energy_in_lungs") or {}).get(method)
        share = "" if energy is None or np.isnan(energy) else f"; {energy:.0%} of its weight lies inside the lungs"
        images[f"{method} for '{cls['predicted']}' (scaled to the map's maximum over the whole image{share})"] = name
    if cls.get("heatmaps"):
        images["heatmap colour scale"] = "heatmap_scale.png"
    return _finish(findings, out, images)


def write_ct_outputs(image: Volume | Image2D, findings: Findings, masks: dict[str, np.ndarray],
                     out_dir: str | Path) -> dict[str, Any]:
    """CT outputs: masks (NIfTI in the input geometry for a volume, PNG for a slice), key-slice overlays
    (axial slice with the most infection, the axial slice with the most lung, a coronal view), report and
    findings. Returns the findings dict as written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_labels = len((findings.infection or {}).get("labels", [1]))
    lungs, infection = masks.get("lungs"), masks["infection"]
    images: dict[str, str] = {}
    if isinstance(image, Volume):
        write_nifti(lungs.astype(np.uint8), image, out / "lung_mask.nii.gz")
        write_nifti(infection.astype(np.uint8), image, out / "infection_mask.nii.gz")
        per_slice_inf = (infection > 0).sum(axis=(1, 2))
        per_slice_lung = lungs.sum(axis=(1, 2))
        picks = []
        if per_slice_inf.any():
            picks.append(("axial slice with the most infection", int(per_slice_inf.argmax())))
        picks.append(("axial slice with the most lung", int(per_slice_lung.argmax())))
        for caption, z in picks:
            name = f"axial_{z:03d}.png"
            if name in images.values():
                continue
            layers = [(lungs[z], LUNG_COLOUR, 0.12, True), *label_layers(infection[z], n_labels)]
            overlay(window_hu(image.hu[z]), layers, already_01=True).save(out / name)
            images[f"{caption} (z index {z})"] = name
        nodules = masks.get("nodules")
        if nodules is not None:
            write_nifti(nodules.astype(np.int16), image, out / "nodule_mask.nii.gz")
            for i, n in enumerate((findings.nodules or [])[:4]):
                z = int(np.clip(n["slice_index"], 0, image.shape[0] - 1))
                name = f"nodule_{i + 1}_axial_{z:03d}.png"
                layers = [(lungs[z], LUNG_COLOUR, 0.0, True), (nodules[z] == i + 1, NODULE_COLOUR, 0.35, True)]
                overlay(window_hu(image.hu[z]), layers, already_01=True).save(out / name)
                images[f"nodule {i + 1}: {n['diameter_mm']:.1f} mm, p={n['probability']:.2f} (z index {z})"] = name
        y = int(np.argmax(lungs.sum(axis=(0, 2))))
        aspect = image.spacing[0] / image.spacing[2]
        cor = overlay(window_hu(image.hu[::-1, y, :]), [(lungs[::-1, y, :], LUNG_COLOUR, 0.12, True),
                      *label_layers(infection[::-1, y, :], n_labels)], already_01=True, aspect=aspect)
        cor.save(out / "coronal.png")
        images[f"coronal view (row {y})"] = "coronal.png"
    else:
        write_mask_png(infection > 0, out / "infection_mask.png")
        layers = []
        if lungs is not None:
            write_mask_png(lungs, out / "lung_mask.png")
            layers.append((lungs, LUNG_COLOUR, 0.12, True))
        base = window_hu(image.pixels) if image.source.get("format") == "DICOM" else grey_rgb(image.pixels)[..., 0] / 255.0
        overlay(base, layers + label_layers(infection, n_labels), already_01=True).save(out / "overlay.png")
        images["infection overlay"] = "overlay.png"
    return _finish(findings, out, images)
