"""The chest X-ray pipeline: lung segmentation -> classification with heatmaps inside the lungs -> Findings."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import ndimage

from pulmo.findings import Findings
from pulmo.inference.cxr_classify import DEFAULT_WEIGHTS as CLASSIFY_WEIGHTS
from pulmo.inference.cxr_classify import CxrClassifier
from pulmo.inference.cxr_detect import DEFAULT_WEIGHTS as DETECT_WEIGHTS
from pulmo.inference.cxr_detect import Detector
from pulmo.inference.lung_seg import DEFAULT_WEIGHTS, LungSegmenter
from pulmo.io import Image2D
from pulmo.pipeline.progress import report_stage
from pulmo.weights import cached_loader, model_entry

logger = logging.getLogger(__name__)


lung_segmenter = cached_loader("lung-seg", DEFAULT_WEIGHTS, LungSegmenter,
                               doc="The lung model (bundled, or ``--weights lung-seg=FILE``), loaded once per process.")
classifier = cached_loader("cxr-classify", CLASSIFY_WEIGHTS, CxrClassifier, optional=True,
                           doc="The chest X-ray classifier, loaded once per process; None when none is bundled.")
detector = cached_loader("cxr-detect", DETECT_WEIGHTS, Detector, optional=True,
                         doc="The lesion detector (RetinaNet), loaded once per process; None when none is bundled.")


def detect(image: Image2D) -> tuple[list[dict[str, Any]] | None, dict | None]:
    """Lesion boxes above the card's threshold (``None`` when no detector is bundled) and the model entry."""
    det = detector()
    if det is None:
        return None, None
    entry = model_entry(det.card, "cxr-detect", score_threshold=det.threshold, backend=det.backend)
    return det.predict(image), entry


def classify(image: Image2D, lungs: np.ndarray) -> tuple[dict[str, Any] | None, dict[str, np.ndarray], dict | None]:
    """Classification with its in-scope decision and Grad-CAM / Grad-CAM++ of the top class (normalised over
    the whole image).

    Returns ``(classification findings or None, heatmaps {"heatmap/<method>": (H, W)}, model entry)``.
    """
    clf = classifier()
    if clf is None:
        return None, {}, None
    pred = clf.predict(image, lungs)
    heat = clf.heatmaps(pred["input"], lungs, clf.labels.index(pred["predicted"]), image.shape, pred["crop_box"])
    names = {"gradcam": "heatmap_gradcam.png", "gradcam++": "heatmap_gradcampp.png"}
    ece = (clf.card.get("calibration") or {}).get("test_ece")
    result = {"probabilities": {k: round(v, 4) for k, v in pred["probabilities"].items()},
              "predicted": pred["predicted"],
              "in_scope": pred["in_scope"],
              "out_of_scope_score": None if pred["out_of_scope_score"] is None else round(pred["out_of_scope_score"], 4),
              "out_of_scope_threshold": clf.scope_threshold,
              "statement": (f"{pred['predicted'].replace('_', ' ')}" if pred["in_scope"] is not False else
                            "finding outside the classifier's classes (normal, bacterial pneumonia, viral pneumonia, "
                            "COVID-19): no diagnosis among them is given"),
              "calibrated": True, "temperature": round(clf.temperature, 4), "calibration_ece": ece,
              "lung_masked_input": bool(clf.pre.lung_mask),
              "input_crop": clf.pre.crop,  # the card's input.crop, default "lungs" (as the recipe reads it)
              "heatmaps": {m: names[m] for m in heat},
              "heatmap_normalisation": "divided by the map's maximum over the whole image",
              "heatmap_energy_in_lungs": {m: round(e, 4) for m, (_, e) in heat.items()}}
    entry = model_entry(clf.card, "cxr-classify", backend=clf.backend)
    return result, {f"heatmap/{m}": h for m, (h, _) in heat.items()}, entry


def analyze_cxr(image: Image2D) -> tuple[Findings, dict[str, np.ndarray]]:
    """Run the CXR pipeline on one image.

    Returns:
        ``(findings, masks)`` where ``masks["lungs"]`` is the bool lung mask ``(H, W)`` at the original size.
    """
    seg = lung_segmenter()
    report_stage("cxr", "lungs")
    mask = seg.predict(image)
    report_stage("cxr", "classify")
    classification, heatmaps, clf_entry = classify(image, mask)
    report_stage("cxr", "detect")
    detections, det_entry = detect(image)
    area_px = int(mask.sum())
    area_cm2 = None
    if image.spacing is not None:
        area_cm2 = round(area_px * image.spacing[0] * image.spacing[1] / 100.0, 2)
    _, n_components = ndimage.label(mask)
    src = image.source
    findings = Findings(
        input={"path": src.get("path"), "format": src.get("format"),
               "image_size": {"height": image.shape[0], "width": image.shape[1]},
               "spacing_mm": list(image.spacing) if image.spacing else None,
               "photometric": src.get("photometric"), "bit_depth": src.get("bit_depth")},
        modality="cxr",
        lungs={"mask": "lung_mask.png", "area_px": area_px, "area_cm2": area_cm2, "n_components": int(n_components),
               "convention": "visible lung fields"},
        classification=classification,
        detections=detections,
        models=[model_entry(seg.card, "lung-seg", backend=seg.backend)] + [e for e in (clf_entry, det_entry) if e],
    )
    return findings, {"lungs": mask, **heatmaps}
