"""The CT pipeline: lung extraction (HU threshold + components) -> infection segmentation inside the lungs.

Volumes: each axial slice with lung is cropped to the in-plane bounding box of the whole lung mask (+8 %
margin), put through the lung window (C -600 / W 1500) and segmented; labels are pasted back into the input
grid, restricted to the lungs and cleaned by HU / geometry rules
(:func:`pulmo.transforms.ct_postprocess.postprocess_infection`: aerated, lung-border, small and nodule-halo
components removed). A single 2D CT slice is accepted too (HU from DICOM, or an already windowed 8-bit
image); it is not post-processed.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from pulmo.errors import InputError
from pulmo.findings import Findings
from pulmo.io import Image2D, Volume
from pulmo.pipeline.progress import report_stage
from pulmo.tasks.lesion_seg import DEFAULT_WEIGHTS, LesionSegmenter
from pulmo.tasks.nodule import DEFAULT_WEIGHTS as NODULE_WEIGHTS
from pulmo.tasks.nodule import NoduleDetector
from pulmo.tasks.nodule_seg import DEFAULT_WEIGHTS as NODULE_SEG_WEIGHTS
from pulmo.tasks.nodule_seg import DETECTOR_MASK_METHOD, MASK_METHOD, NoduleSegmenter, refine_nodule_masks
from pulmo.transforms import window_hu
from pulmo.transforms.ct import lung_coverage, lung_mask_ct, lung_mask_slice
from pulmo.transforms.ct_postprocess import postprocess_infection
from pulmo.weights import cached_loader, model_entry

logger = logging.getLogger(__name__)

LUNG_METHOD = {"task": "ct-lungs", "name": "hu-threshold-components", "architecture": "HU < -320 + 3D components",
               "sha256": None}
INFECTION_SCOPE = "trained on COVID-19 pneumonia (COVID-SemiSeg); other diseases not validated"


lesion_segmenter = cached_loader("lesion-seg", DEFAULT_WEIGHTS, LesionSegmenter,
                                 doc="The infection model (bundled, or ``--weights lesion-seg=FILE``), loaded once.")
nodule_detector = cached_loader("nodule", NODULE_WEIGHTS, NoduleDetector, optional=True,
                                doc="The nodule model, loaded once per process; None when none is bundled.")


#: Replace the detector's nodule masks by the ``nodule-seg`` refinement in the pipeline. Off: on the two whole
#: scans with reference outlines here the detector's mask head is closer to the reference (Dice 0.922 vs 0.900 on
#: LIDC-IDRI-0001's 4-reader consensus, 0.792 vs 0.704 on pyradiomics lung1's label, 5 mm slices;
#: ``benchmarks/nodule_mask_compare.py``), so the bundled ``nodule-seg`` serves crops (``evaluate nodule-seg``,
#: :class:`~pulmo.tasks.nodule_seg.NoduleSegmenter`) and the refinement is opt-in (``PULMO_REFINE_NODULES=1``).
REFINE_NODULE_MASKS = os.environ.get("PULMO_REFINE_NODULES", "") == "1"


_nodule_segmenter = cached_loader("nodule-seg", NODULE_SEG_WEIGHTS, NoduleSegmenter, optional=True)


def nodule_segmenter(weights: str | None = None) -> NoduleSegmenter | None:
    """The nodule mask refiner (``nodule-seg``), loaded once per process; None when no such weights are bundled
    or :data:`REFINE_NODULE_MASKS` is off (the detector's masks are kept)."""
    if not REFINE_NODULE_MASKS:
        logger.info("nodule masks from the detector's mask head (PULMO_REFINE_NODULES=1 refines them with %s)",
                    weights or NODULE_SEG_WEIGHTS)
        return None
    return _nodule_segmenter(weights)


nodule_segmenter.cache_clear = _nodule_segmenter.cache_clear  # type: ignore[attr-defined]


def _class_volumes(labels: np.ndarray, seg: LesionSegmenter, unit: float) -> dict[str, float]:
    if len(seg.labels) < 3:
        return {}
    return {f"{name}_ml" if unit != 1.0 else f"{name}_px": round(float((labels == i).sum()) * unit, 2)
            for i, name in enumerate(seg.labels) if i > 0}


def analyze_ct_volume(volume: Volume) -> tuple[Findings, dict[str, np.ndarray]]:
    """Run the CT pipeline on a volume.

    The infection labels are post-processed (:func:`pulmo.transforms.ct_postprocess.postprocess_infection`);
    ``findings.infection["postprocessing"]`` records the rules, their thresholds and the volume each removed,
    and ``findings.infection["scope"]`` what the model was validated on.

    Returns:
        ``(findings, masks)``: ``masks["lungs"]`` bool, ``masks["infection"]`` uint8 labels (post-processed)
        and, when a nodule model is bundled, ``masks["nodules"]`` int16 (1.. = nodule number), all
        ``(Z, Y, X)`` in the input grid. When ``nodule-seg`` weights are bundled too, each nodule's mask,
        ``diameter_mm`` and ``volume_mm3`` come from them (:func:`pulmo.tasks.nodule_seg.refine_nodule_masks`)
        and ``findings.models`` lists them; every nodule's ``mask_method`` says which model outlined it.

    Raises:
        InputError: not HU, or no lungs found.
    """
    report_stage("ct", "lungs")
    lungs = lung_mask_ct(volume)
    report_stage("ct", "infection")
    seg = lesion_segmenter()
    raw = seg.predict_volume(volume, lungs, on_progress=lambda f: report_stage("ct", "infection", f))
    infection, postprocessing = postprocess_infection(raw, volume.hu, lungs, volume.spacing)
    del raw
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    lung_ml = float(lungs.sum()) * voxel_ml
    inf_ml = float((infection > 0).sum()) * voxel_ml
    per_slice = (infection > 0).sum(axis=(1, 2))
    src = volume.source
    findings = Findings(
        input={"path": src.get("path"), "format": src.get("format"),
               "volume_size": {"slices": volume.shape[0], "rows": volume.shape[1], "columns": volume.shape[2]},
               "spacing_mm": [round(float(s), 6) for s in volume.spacing],
               "origin_mm": [round(float(o), 3) for o in volume.origin], "series_uid": src.get("series_uid"),
               "study_date": src.get("study_date"), "series_description": src.get("series_description"),
               "excluded_series": src.get("excluded_series")},
        modality="ct",
        lungs={"mask": "lung_mask.nii.gz", "volume_ml": round(lung_ml, 1), "method": LUNG_METHOD["architecture"],
               "coverage": lung_coverage(lungs, volume.spacing)},
        infection={"mask": "infection_mask.nii.gz", "labels": seg.labels, "volume_ml": round(inf_ml, 2),
                   "percent_of_lung": round(100.0 * inf_ml / lung_ml, 2) if lung_ml else None,
                   "n_slices_with_infection": int((per_slice > 0).sum()),
                   "key_slice": int(per_slice.argmax()) if per_slice.any() else None,
                   **_class_volumes(infection, seg, voxel_ml),
                   "scope": INFECTION_SCOPE, "postprocessing": postprocessing},
        models=[LUNG_METHOD, model_entry(seg.card, "lesion-seg", backend=seg.backend)],
    )
    masks = {"lungs": lungs, "infection": infection}
    report_stage("ct", "nodules")
    det = nodule_detector()
    if det is not None:
        findings.nodules, masks["nodules"] = det.findings(volume, lungs)
        findings.nodule_mask = "nodule_mask.nii.gz"
        if det.second_stage is None:
            findings.models.append(model_entry(det.card, "nodule", probability_threshold=det.threshold))
        else:
            findings.models.append(model_entry(det.card, "nodule", role="candidates (first stage)"))
            findings.models.append(model_entry(det.second_stage.card, "nodule-fpr",
                                               probability_threshold=det.threshold))
        refiner = nodule_segmenter() if findings.nodules else None
        if refiner is not None:
            masks["nodules"], findings.nodules = refine_nodule_masks(volume.hu, volume.spacing, findings.nodules,
                                                                     masks["nodules"], refiner)
            if any(n["mask_method"] == MASK_METHOD for n in findings.nodules):
                findings.models.append(model_entry(refiner.card, "nodule-seg", threshold=refiner.threshold))
        else:
            for n in findings.nodules:
                n["mask_method"] = DETECTOR_MASK_METHOD
    return findings, masks


def analyze_ct_slice(image: Image2D) -> tuple[Findings, dict[str, np.ndarray]]:
    """Run the CT pipeline on one axial slice (HU from DICOM, or an 8-bit windowed image).

    Returns ``(findings, masks)`` with 2D masks ``(H, W)``; lungs are found only when the slice is in HU.
    """
    report_stage("ct", "infection")
    seg = lesion_segmenter()
    hu_input = image.source.get("format") == "DICOM"
    lungs = None
    if hu_input:
        slice01 = window_hu(image.pixels)
        try:
            lungs = lung_mask_slice(image)
        except InputError as exc:  # the input gate refuses such a slice; a direct caller gets no lung mask
            logger.warning("no lung mask for the slice: %s", exc)
    else:
        lo, hi = (0.0, 65535.0) if image.source.get("bit_depth") == 16 else (0.0, 255.0)
        slice01 = np.clip((image.pixels - lo) / (hi - lo), 0, 1)
    labels = seg.predict([slice01.astype(np.float32)])[0]
    if lungs is not None:
        labels[~lungs] = 0
    area_px = int((labels > 0).sum())
    px_cm2 = image.spacing[0] * image.spacing[1] / 100.0 if image.spacing else None
    lung_px = int(lungs.sum()) if lungs is not None else None
    findings = Findings(
        input={"path": image.source.get("path"), "format": image.source.get("format"),
               "image_size": {"height": image.shape[0], "width": image.shape[1]},
               "spacing_mm": list(image.spacing) if image.spacing else None,
               "intensity": "HU, lung window" if hu_input else "already windowed (no HU)"},
        modality="ct",
        lungs=({"mask": "lung_mask.png", "area_px": lung_px, "method": LUNG_METHOD["architecture"]}
               if lungs is not None else None),
        infection={"mask": "infection_mask.png", "labels": seg.labels, "area_px": area_px,
                   "area_cm2": round(area_px * px_cm2, 2) if px_cm2 else None,
                   "percent_of_lung": round(100.0 * area_px / lung_px, 2) if lung_px else None,
                   **_class_volumes(labels, seg, 1.0)},
        models=([LUNG_METHOD] if lungs is not None else []) + [model_entry(seg.card, "lesion-seg", backend=seg.backend)],
    )
    masks = {"infection": labels}
    if lungs is not None:
        masks["lungs"] = lungs
    return findings, masks
