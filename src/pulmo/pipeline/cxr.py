"""The chest X-ray pipeline: lung segmentation (later: classification, detection) -> Findings + files."""

from __future__ import annotations

import functools
import logging

import numpy as np
from scipy import ndimage

from pulmo.io import Image2D
from pulmo.pipeline.findings import Findings
from pulmo.tasks.lung_seg import DEFAULT_WEIGHTS, LungSegmenter

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def lung_segmenter(weights: str = DEFAULT_WEIGHTS) -> LungSegmenter:
    """The bundled lung model, loaded once per process."""
    return LungSegmenter(weights)


def analyze_cxr(image: Image2D) -> tuple[Findings, dict[str, np.ndarray]]:
    """Run the CXR pipeline on one image.

    Returns:
        ``(findings, masks)`` where ``masks["lungs"]`` is the bool lung mask ``(H, W)`` at the original size.
    """
    seg = lung_segmenter()
    mask = seg.predict(image)
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
        models=[{"task": "lung-seg", "name": seg.card.get("name"), "architecture": seg.card.get("architecture"),
                 "sha256": seg.card.get("sha256")}],
    )
    return findings, {"lungs": mask}
