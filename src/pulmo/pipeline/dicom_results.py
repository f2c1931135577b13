"""DICOM results of an analysis of a DICOM input: ``seg.dcm`` (DICOM SEG of every mask) and ``sr.dcm`` (TID 1500
measurement report referencing it), written beside the other outputs.

The objects are built by :mod:`pulmo.io.dicom_seg` and :mod:`pulmo.io.dicom_sr` (highdicom); this module maps
pulmo's masks and findings onto them: which masks become which segments, with which SNOMED CT codes and which
model (name, weights sha256 from its card, as listed in ``findings["models"]``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pulmo.io import Image2D, Volume
from pulmo.io import dicom_codes as C
from pulmo.io.dicom_seg import Algorithm, Segment, build_segmentation, read_source_datasets
from pulmo.io.dicom_sr import build_measurement_report

logger = logging.getLogger(__name__)

SEG_FILE, SR_FILE = "seg.dcm", "sr.dcm"
_INFECTION_CLASSES = {"ground_glass": (C.GROUND_GLASS_OPACITY, "Ground-glass opacity"),
                      "consolidation": (C.CONSOLIDATION, "Consolidation")}


def is_dicom_input(image: Image2D | Volume) -> bool:
    """True when the image was read from DICOM (a file or a series), so SEG and SR can reference it."""
    return str(image.source.get("format", "")).startswith("DICOM")


def source_files(image: Image2D | Volume) -> list[str]:
    """The DICOM files of the analysed image, in the order of the masks' first axis (a series: sorted along
    the slice normal, as read; one image: its file)."""
    if isinstance(image, Volume):
        return list(image.source.get("files") or [])
    return [image.source["path"]] if image.source.get("path") else []


def _algorithm(findings: dict[str, Any], task: str, version: str) -> Algorithm:
    entry = next((m for m in findings.get("models") or [] if m.get("task") == task), None) or {}
    return Algorithm(name=str(entry.get("name") or task), version=version, sha256=entry.get("sha256"),
                     architecture=entry.get("architecture"), task=task,
                     family="ai" if entry.get("sha256") else "morphological")


def segments_of(findings: dict[str, Any], masks: dict[str, np.ndarray], version: str) -> list[Segment]:
    """The SEG segments of an analysis, in order: lungs, infection (one segment, or one per class of a three-class
    model), then each nodule (``masks["nodules"] == k`` for nodule ``k``, most probable first).

    Args:
        findings: the findings dict (``findings.json`` content).
        masks: the pipeline's masks in the source grid (``lungs`` bool, ``infection`` uint8 labels,
            ``nodules`` int labels), ``(Z, Y, X)`` or ``(H, W)``.
        version: the pulmo version.
    """
    out: list[Segment] = []
    ct = findings.get("modality") == "ct"
    if masks.get("lungs") is not None:
        out.append(Segment(label="Lungs" if ct else "Lung fields (visible)", mask=masks["lungs"] > 0,
                           category=C.ANATOMICAL_STRUCTURE, property_type=C.LUNG, tracking_id="Lungs", role="lungs",
                           algorithm=_algorithm(findings, "ct-lungs" if ct else "lung-seg", version)))
    infection = masks.get("infection")
    if ct and infection is not None:
        algorithm = _algorithm(findings, "lesion-seg", version)
        labels = [lb for lb in (findings.get("infection") or {}).get("labels", []) if lb != "background"]
        if len(labels) <= 1:
            out.append(Segment(label="Infection (ground-glass opacity and consolidation)", mask=infection > 0,
                               category=C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, property_type=C.LESION,
                               tracking_id="Infection", role="infection", algorithm=algorithm, anatomic_region=C.LUNG))
        else:
            for value, name in enumerate(labels, start=1):
                code, text = _INFECTION_CLASSES.get(name, (C.LESION, name.replace("_", " ")))
                out.append(Segment(label=f"Infection: {text}", mask=infection == value,
                                   category=C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, property_type=code,
                                   tracking_id=f"Infection: {text}", role="infection", index=value, algorithm=algorithm,
                                   anatomic_region=C.LUNG))
    nodule_labels = masks.get("nodules")
    if ct and nodule_labels is not None:
        for k, nodule in enumerate(findings.get("nodules") or [], start=1):
            refined = str(nodule.get("mask_method", "")).startswith("nodule-seg")
            algorithm = _algorithm(findings, "nodule-seg" if refined else "nodule", version)
            out.append(Segment(label=f"Nodule {k}", mask=nodule_labels == k, category=C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                               property_type=C.NODULE, tracking_id=f"Nodule {k}", role="nodule", index=k,
                               algorithm=algorithm, anatomic_region=C.LUNG))
    return out


def write_dicom_results(image: Image2D | Volume, findings: dict[str, Any], masks: dict[str, np.ndarray],
                        out_dir: str | Path) -> dict[str, str]:
    """Write ``seg.dcm`` and ``sr.dcm`` for an analysis of a DICOM input.

    Both get new Series and SOP Instance UIDs at every run, the patient and study attributes of the source
    (nothing else of it: no private tags) and pulmo's algorithm identification.

    Args:
        image: the analysed image (its ``source`` names the DICOM files).
        findings: the findings dict as written to ``findings.json``.
        masks: the pipeline's masks (see :func:`segments_of`).
        out_dir: the output folder.

    Returns:
        ``{"dicom_seg": "seg.dcm", "dicom_sr": "sr.dcm"}`` for ``findings["files"]``.

    Raises:
        InputError: the input is not DICOM, or SEG / SR cannot be built on its headers (the message says why).
    """
    from pulmo.errors import InputError
    from pulmo.version import __version__

    files = source_files(image)
    if not is_dicom_input(image) or not files:
        raise InputError(f"{image.source.get('path')}: DICOM SEG and SR are written for DICOM inputs only")
    sources = read_source_datasets(files)
    segments = segments_of(findings, masks, __version__)
    seg = build_segmentation(sources, segments, __version__)
    sr = build_measurement_report(sources, seg, segments, findings, __version__)
    out = Path(out_dir)
    seg.save_as(out / SEG_FILE, enforce_file_format=True)
    sr.save_as(out / SR_FILE, enforce_file_format=True)
    logger.info("DICOM SEG (%d segments, %d frames) and TID 1500 SR written", len(segments), int(seg.NumberOfFrames))
    return {"dicom_seg": SEG_FILE, "dicom_sr": SR_FILE}
