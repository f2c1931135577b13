"""Outputs of an analysis: findings.json, masks (PNG / NIfTI), overlays and report.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pulmo.findings import Findings
from pulmo.io import Image2D, Volume, write_mask_png, write_nifti
from pulmo.report.html import render_report
from pulmo.report.overlay import (
    LUNG_COLOUR,
    NODULE_COLOUR,
    PNG_COMPRESS_LEVEL,
    detection_overlay,
    display_base,
    draw_nodule_markers,
    grey_rgb,
    heat_scale_image,
    heatmap_overlay,
    label_layers,
    mask_overlay,
    overlay,
)
from pulmo.transforms import window_hu

__all__ = ["grey_rgb", "mask_overlay", "overlay", "render_report", "write_ct_outputs", "write_cxr_outputs"]


def _finish(findings: Findings, out: Path, images: dict[str, str],
            extra_overlays: list[str] | None = None) -> dict[str, Any]:
    """Write report.html (``images`` {caption: file} at its top) and findings.json; ``files.overlays`` lists
    ``images`` then ``extra_overlays`` (pictures shown elsewhere in the report, e.g. nodule key slices)."""
    findings.files = {"overlays": [*images.values(), *(extra_overlays or [])], "report": "report.html",
                      "config": "config.yaml"}
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
    mask_overlay(image.pixels, masks["lungs"]).save(out / "overlay.png", compress_level=PNG_COMPRESS_LEVEL)
    images = {"lung mask overlay": "overlay.png"}
    if findings.detections is not None:
        detection_overlay(image.pixels, findings.detections, lungs=masks["lungs"]).save(out / "detections.png", compress_level=PNG_COMPRESS_LEVEL)
        n = len(findings.detections)
        images[f"lesion detections ({n} box{'es' if n != 1 else ''} above the threshold)"] = "detections.png"
    cls = findings.classification or {}
    if cls.get("heatmaps"):
        heat_scale_image().save(out / "heatmap_scale.png", compress_level=PNG_COMPRESS_LEVEL)
    for method, name in (cls.get("heatmaps") or {}).items():
        heatmap_overlay(image.pixels, masks[f"heatmap/{method}"], masks["lungs"]).save(out / name, compress_level=PNG_COMPRESS_LEVEL)
        energy = (cls.get("heatmap_energy_in_lungs") or {}).get(method)
        share = "" if energy is None or np.isnan(energy) else f"; {energy:.0%} of its weight lies inside the lungs"
        images[f"{method} for '{cls['predicted']}' (scaled to the map's maximum over the whole image{share})"] = name
    if cls.get("heatmaps"):
        images["heatmap colour scale"] = "heatmap_scale.png"
    return _finish(findings, out, images)


def _nodule_centre_index(image: Volume, nodule: dict[str, Any]) -> np.ndarray:
    """A nodule's centre as continuous voxel indices ``(z, y, x)``: ``center_zyx_index``, else from its world
    centre ``center_xyz_mm`` (LPS mm)."""
    if nodule.get("center_zyx_index") is not None:
        return np.asarray(nodule["center_zyx_index"], np.float64)
    return image.world_to_index(np.asarray(nodule["center_xyz_mm"], np.float64))[0]


def _nodule_key_slices(image: Volume, nodules: list[dict[str, Any]], labels: np.ndarray, lungs: np.ndarray,
                       out: Path) -> list[str]:
    """One PNG per nodule, ``nodule_<n>_axial_<z>.png``: the nodule's key axial slice (``slice_index``) in the
    lung window at the slice's size (at most 1024 px), lungs outlined, the nodule's mask tinted and outlined
    (other nodules' tinted lighter), and a numbered marker circle sized by the diameter with its probability
    (:func:`pulmo.report.overlay.draw_nodule_markers`) for it (thick) and for every other nodule whose sphere
    crosses that slice (thin). Sets each nodule's ``key_slice_image`` to its file name.

    Args:
        image: the CT volume, HU ``(Z, Y, X)``.
        nodules: the findings' nodule dicts, most probable first (number ``n`` = label ``n`` of ``labels``).
        labels: int label map ``(Z, Y, X)``, 0 background, ``n`` = nodule ``n``.
        lungs: bool lung mask ``(Z, Y, X)``.
        out: the output folder.

    Returns:
        The file names written, in nodule order.
    """
    centres = [_nodule_centre_index(image, n) for n in nodules]
    names = []
    for i, n in enumerate(nodules):
        z = int(np.clip(n.get("slice_index", round(centres[i][0])), 0, image.shape[0] - 1))
        name = f"nodule_{i + 1}_axial_{z:03d}.png"
        others = (labels[z] > 0) & (labels[z] != i + 1)
        layers = [(lungs[z], LUNG_COLOUR, 0.0, True), (others, NODULE_COLOUR, 0.2, False),
                  (labels[z] == i + 1, NODULE_COLOUR, 0.35, True)]
        markers = [{"number": j + 1, "center_yx": (float(c[1]), float(c[2])), "diameter_mm": float(m["diameter_mm"]),
                    "probability": float(m["probability"]), "focus": j == i}
                   for j, (m, c) in enumerate(zip(nodules, centres))
                   if j == i or abs(c[0] - z) * image.spacing[0] <= float(m["diameter_mm"]) / 2]
        markers.sort(key=lambda m: m["focus"])  # the nodule of the picture last, on top
        im = overlay(window_hu(image.hu[z]), layers, already_01=True, aspect=image.spacing[1] / image.spacing[2])
        draw_nodule_markers(im, markers, image.shape[1:], image.spacing[1:]).save(out / name, compress_level=PNG_COMPRESS_LEVEL)
        n["key_slice_image"] = name
        names.append(name)
    return names


def write_ct_outputs(image: Volume | Image2D, findings: Findings, masks: dict[str, np.ndarray],
                     out_dir: str | Path) -> dict[str, Any]:
    """CT outputs: masks (NIfTI in the input geometry for a volume, PNG for a slice), key-slice overlays
    (axial slice with the most infection, the axial slice with the most lung, a coronal view), one key-slice
    PNG per nodule with its numbered marker (shown in the report's nodule table; each nodule's
    ``key_slice_image``), report and findings. Returns the findings dict as written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_labels = len((findings.infection or {}).get("labels", [1]))
    lungs, infection = masks.get("lungs"), masks["infection"]
    images: dict[str, str] = {}
    nodule_images: list[str] = []
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
            overlay(window_hu(image.hu[z]), layers, already_01=True).save(out / name, compress_level=PNG_COMPRESS_LEVEL)
            images[f"{caption} (z index {z})"] = name
        nodules = masks.get("nodules")
        if nodules is not None:
            write_nifti(nodules.astype(np.int16), image, out / "nodule_mask.nii.gz")
            nodule_images = _nodule_key_slices(image, findings.nodules or [], nodules, lungs, out)
        y = int(np.argmax(lungs.sum(axis=(0, 2))))
        aspect = image.spacing[0] / image.spacing[2]
        cor = overlay(window_hu(image.hu[::-1, y, :]), [(lungs[::-1, y, :], LUNG_COLOUR, 0.12, True),
                      *label_layers(infection[::-1, y, :], n_labels)], already_01=True, aspect=aspect)
        cor.save(out / "coronal.png", compress_level=PNG_COMPRESS_LEVEL)
        images[f"coronal view (row {y})"] = "coronal.png"
    else:
        write_mask_png(infection > 0, out / "infection_mask.png")
        layers = []
        if lungs is not None:
            write_mask_png(lungs, out / "lung_mask.png")
            layers.append((lungs, LUNG_COLOUR, 0.12, True))
        overlay(display_base(image), layers + label_layers(infection, n_labels),
                already_01=True).save(out / "overlay.png", compress_level=PNG_COMPRESS_LEVEL)
        images["infection overlay"] = "overlay.png"
    return _finish(findings, out, images, nodule_images)
